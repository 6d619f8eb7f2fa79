"""CheckpointErrors: why a checkpoint does not fit the model, as WeightFiller's errors say it.

Each message names the checkpoint's tensor by the checkpoint's own name (GGUF's, or a fused
tensor's: WeightFiller's source_name) and the field to check: config.json's (num_hidden_layers,
head_dim, num_experts or its spelling, mlp_only_layers...) for a safetensors directory, whose
config.json may be another model's, or the GGUF file's metadata (block_count, expert_count,
general.architecture), which comes with its tensors. A tensor with no parameter to land in is
told why where the config explains it: a layer past the model's, a sparse tensor under a dense
model type, a layer the config makes dense (or the file's router makes sparse).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aiollm.model.config import MOE_ARCHITECTURES, MoeConfig

# a tensor of a dense MLP or of a sparse one (router, experts, shared expert)
_LAYER_MLP = re.compile(
    r"layers\.(\d+)\.mlp\.(?:gate_up_proj|gate_proj|up_proj|down_proj|gate|experts|shared_)")
# a tensor only a sparse MLP has (router, experts, shared expert)
_SPARSE_MLP = re.compile(r"layers\.\d+\.mlp\.(?:gate\.|experts\.|shared_expert)")


@dataclass(frozen=True, slots=True)
class CheckpointErrors:
    """The errors of one checkpoint's filling. source_name: transformers' name of a tensor ->
    the checkpoint's own (None: the same); gguf: the checkpoint is a GGUF file; moe,
    architecture: the model config's; num_experts: the model's expert count (0: dense);
    layer_kinds: per layer, "experts" or "a dense MLP"."""

    source_name: Callable[[str], str] | None
    gguf: bool
    moe: MoeConfig | None
    architecture: str
    num_experts: int
    layer_kinds: list[str]

    def src(self, hf_name: str) -> str:
        """The checkpoint's own name of the tensor transformers calls `hf_name`."""
        return hf_name if self.source_name is None else self.source_name(hf_name)

    def advice(self) -> str:
        """What a message ends with: for a directory, to use its own config.json."""
        # a GGUF file's metadata and tensors come together; a directory's config.json
        # may be another model's (another size of it), whose fields are named
        return "" if self.gguf else ": use the config.json saved with these weights"

    def expert_count(self) -> str:
        """Where the model's expert count comes from, and its value, for messages."""
        where = "the file's expert_count" if self.gguf else \
            f"config.json's {self.moe.experts_field}"
        return f"{where} is {self.num_experts}"

    def shape_error(self, hf_name: str, tensor: torch.Tensor, want) -> ValueError:
        """The ValueError for checkpoint tensor `hf_name` of `tensor`'s shape where the model
        expects `want`, naming the checkpoint's name and the config.json fields that size it
        (weights_layout's refusal of a fused tensor it cannot split too)."""
        advice = "" if self.gguf else (
            f" (config.json's {self.sized_by(hf_name)}){self.advice()}")
        return ValueError(f"checkpoint tensor {self.src(hf_name)!r} has shape "
                          f"{tuple(tensor.shape)}, the model expects {tuple(want)}{advice}")

    def sized_by(self, hf_name: str) -> str:
        """The config.json fields that give the tensor `hf_name` its shape."""
        parts = hf_name.split(".")
        module = parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]
        if module in ("q_norm", "k_norm"):
            return "head_dim"
        if module.endswith("norm"):
            return "hidden_size"
        width = {"q_proj": "num_attention_heads, head_dim", "o_proj": "num_attention_heads, "
                 "head_dim", "k_proj": "num_key_value_heads, head_dim",
                 "qkv_proj": "num_attention_heads, num_key_value_heads, head_dim",  # Phi-3
                 "v_proj": "num_key_value_heads, head_dim", "embed_tokens": "vocab_size",
                 "lm_head": "vocab_size"}.get(module)
        experts = self.moe.experts_field if self.moe is not None else "num_experts"
        if module == "shared_expert_gate":  # one output: its sigmoid scale
            return "hidden_size"
        if width is None and module == "gate":  # the router
            width = experts
        elif width is None and "shared_expert" in hf_name:
            width = "shared_expert_intermediate_size"
        elif width is None and ".experts" in hf_name and self.architecture not in (
                "mixtral", "granitemoe"):
            width = "moe_intermediate_size"
        # all experts in one tensor [E, out, in]: the expert count is a field too
        stacked = f"{experts}, " if module in ("gate_up_proj", "down_proj") and (
            ".experts." in hf_name) and parts[-1] != "weight" else ""
        return f"{stacked}{width or 'intermediate_size'}, hidden_size"

    def no_place(self, hf_name: str, name: str) -> ValueError:
        """The error for a tensor the model has no parameter for; for a layer past the
        model's, with the field that counts them; for an MLP tensor of a
        MoE model, with which kind of MLP (dense or experts) the config gives its layer: a
        config whose mlp_only_layers / decoder_sparse_step disagree with the checkpoint (a
        GGUF file has neither: its layers with a router are the sparse ones)."""
        m = _LAYER_MLP.search(name)
        why = ""
        past = re.match(r"layers\.(\d+)\.", name)
        if past is not None and int(past.group(1)) >= len(self.layer_kinds):
            why = f": it has {len(self.layer_kinds)} layers (" + (
                "the file's block_count)" if self.gguf else "config.json's "
                "num_hidden_layers): use the config.json saved with these weights")
        elif (self.moe is None and self.architecture in MOE_ARCHITECTURES and not self.gguf
              and m is not None):
            # a Qwen MoE config.json whose every layer is dense (hf_moe_config.moe_from_hf)
            why = (f": layer {m.group(1)} has a dense MLP by the config, as every layer has "
                   "(its mlp_only_layers, decoder_sparse_step and num_experts leave no layer "
                   "sparse): use the config.json saved with these weights")
        elif self.moe is None and _SPARSE_MLP.search(name):
            # a mixture-of-experts checkpoint under a dense model type (a qwen3_moe one
            # relabelled qwen3): the field that made the model dense is the one to check
            why = (f": {self.architecture} models have no experts (of the supported model "
                   f"types {', '.join(MOE_ARCHITECTURES[:-1])} and {MOE_ARCHITECTURES[-1]} "
                   "have them): check " + (
                       "config.json's model_type" if not self.gguf
                       else "the file's llama.expert_count (llama.cpp's Mixtral files are "
                       "llama with an expert count)" if self.architecture == "llama"
                       else "the file's general.architecture"))
        elif m is not None and self.moe is not None and int(m.group(1)) < len(self.layer_kinds):
            layer = int(m.group(1))
            if self.gguf:
                router = self.src(f"model.layers.{layer}.mlp.gate.weight")
                has = "it has no" if self.layer_kinds[layer] == "a dense MLP" else "it has the"
                why = f": layer {layer} has {self.layer_kinds[layer]} by the file ({has} " \
                      f"router {router})"
            else:
                why = f": layer {layer} has {self.layer_kinds[layer]} by the config"
                if self.architecture not in ("mixtral", "granitemoe"):
                    why += (f" (mlp_only_layers {list(self.moe.dense_layers)}, "
                            f"decoder_sparse_step {self.moe.sparse_step})")
        return ValueError(f"checkpoint tensor {self.src(hf_name)!r} has no place in the "
                          f"model{why}")
