"""WeightFiller: copies checkpoint tensors, named as in transformers, into our fused parameters.

Both loaders (safetensors directories and GGUF files) translate their tensors to transformers'
names; this is the one place that knows how those names land in llama.py's modules: q/k/v
become row ranges of qkv_proj, gate/up row ranges of gate_up_proj, everything else maps one to
one. The copy casts to the run dtype and moves to the model's device in one step, and the
filler checks that every parameter was written exactly once.
"""

from __future__ import annotations

import re

import torch

from aiollm.model.llama import LlamaForCausalLM

# Tensors some checkpoints carry that we recompute (old Llama checkpoints saved the rotary
# inverse frequencies as buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# One expert's projection: Qwen names (gate/up/down_proj), Mixtral's (w1/w3/w2).
_EXPERT = re.compile(r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$")
# All experts of a layer in one [E, out, in] tensor per projection (GGUF's *_exps).
_STACKED = re.compile(
    r"layers\.(\d+)\.mlp\.experts\.(gate_proj|up_proj|down_proj)(?:\.weight)?$")
_EXPERT_PROJ = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": None, "w2": None}


class WeightFiller:
    def __init__(self, model: LlamaForCausalLM):
        cfg = model.config
        self.params = dict(model.named_parameters())
        self.tied = cfg.tie_word_embeddings
        q, kv, i = cfg.q_size, cfg.kv_size, cfg.intermediate_size
        # checkpoint module name -> (our module name, first row, rows)
        self.shards = {
            "q_proj": ("qkv_proj", 0, q),
            "k_proj": ("qkv_proj", q, kv),
            "v_proj": ("qkv_proj", q + kv, kv),
            "gate_proj": ("gate_up_proj", 0, i),  # rows: half of the parameter's, see fill
            "up_proj": ("gate_up_proj", i, i),
        }
        self.filled: dict[str, int] = {}  # elements written per parameter
        # experts each sparse layer holds: (first global expert id, count)
        self.expert_ranges = {
            str(n): layer.mlp.expert_range for n, layer in enumerate(model.layers)
            if hasattr(layer.mlp, "expert_range")
        }

    def fill(self, hf_name: str, tensor: torch.Tensor) -> None:
        name = hf_name.removeprefix("model.")
        if name.endswith(_IGNORED_SUFFIXES) or (self.tied and name == "lm_head.weight"):
            return
        name = name.replace(".block_sparse_moe.", ".mlp.")  # Mixtral's name of the MoE block
        if (m := _EXPERT.search(name) or _STACKED.search(name)) is not None:
            return self._fill_experts(hf_name, m, tensor)
        parts = name.split(".")
        module = parts[-2] if len(parts) >= 2 else ""
        shard = self.shards.get(module)
        if shard is not None:
            parts[-2] = shard[0]
            name = ".".join(parts)
        param = self.params.get(name)
        if param is None:
            raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
        if shard is None:
            dst = param.data
        elif shard[0] == "gate_up_proj":  # the MLP's, or a shared expert's of its own width
            half = param.shape[0] // 2
            dst = param.data.narrow(0, half * (module == "up_proj"), half)
        else:
            dst = param.data.narrow(0, shard[1], shard[2])
        self._copy(hf_name, name, dst, tensor)

    def _copy(self, hf_name: str, name: str, dst: torch.Tensor, tensor: torch.Tensor) -> None:
        if dst.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(dst.shape)}"
            )
        dst.copy_(tensor)
        self.filled[name] = self.filled.get(name, 0) + dst.numel()

    def _fill_experts(self, hf_name: str, m: re.Match, tensor: torch.Tensor) -> None:
        """One expert's projection (3 groups matched) or one projection of all experts
        (2 groups) into the layer's stacked gate_up_proj / down_proj."""
        layer, proj = m.group(1), m.group(m.lastindex)
        experts = self.expert_ranges.get(layer)
        if experts is None or proj not in _EXPERT_PROJ:
            raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
        half = _EXPERT_PROJ[proj]
        name = f"layers.{layer}.mlp.experts.{'down_proj' if half is None else 'gate_up_proj'}"
        param = self.params[name].data
        if m.lastindex == 3:  # one expert
            e = int(m.group(2))
            if e not in experts:
                return  # held by another expert-parallel rank
            dst = param[e - experts.start]
        else:
            dst, tensor = param, tensor[experts.start:experts.stop]
        if half is not None:
            rows = dst.shape[-2] // 2
            dst = dst.narrow(-2, half * rows, rows)
        self._copy(hf_name, name, dst, tensor)

    def check_complete(self) -> None:
        wrong = [n for n, p in self.params.items() if self.filled.get(n, 0) != p.numel()]
        if wrong:
            more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
            raise ValueError(
                f"checkpoint is missing (or repeats) weights: {', '.join(wrong[:5])}{more}"
            )
