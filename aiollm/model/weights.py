"""WeightFiller: copies checkpoint tensors, named as in transformers, into our fused parameters.

Both loaders (safetensors directories and GGUF files) translate their tensors to transformers'
names; this is the one place that knows how those names land in llama.py's modules: q/k/v
become row ranges of qkv_proj, gate/up row ranges of gate_up_proj, everything else maps one to
one. The copy casts to the run dtype and moves to the model's device in one step, and the
filler checks that every parameter was written exactly once.
"""

from __future__ import annotations

import torch

from aiollm.model.llama import LlamaForCausalLM

# Tensors some checkpoints carry that we recompute (old Llama checkpoints saved the rotary
# inverse frequencies as buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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
            "gate_proj": ("gate_up_proj", 0, i),
            "up_proj": ("gate_up_proj", i, i),
        }
        self.filled: dict[str, int] = {}  # elements written per parameter

    def fill(self, hf_name: str, tensor: torch.Tensor) -> None:
        name = hf_name.removeprefix("model.")
        if name.endswith(_IGNORED_SUFFIXES) or (self.tied and name == "lm_head.weight"):
            return
        parts = name.split(".")
        shard = self.shards.get(parts[-2]) if len(parts) >= 2 else None
        if shard is not None:
            parts[-2] = shard[0]
            name = ".".join(parts)
        param = self.params.get(name)
        if param is None:
            raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
        dst = param.data if shard is None else param.data.narrow(0, shard[1], shard[2])
        if dst.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(dst.shape)}"
            )
        dst.copy_(tensor)
        self.filled[name] = self.filled.get(name, 0) + dst.numel()

    def check_complete(self) -> None:
        wrong = [n for n, p in self.params.items() if self.filled.get(n, 0) != p.numel()]
        if wrong:
            more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
            raise ValueError(
                f"checkpoint is missing (or repeats) weights: {', '.join(wrong[:5])}{more}"
            )
