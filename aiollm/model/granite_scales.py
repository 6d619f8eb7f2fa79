"""Granite's residual_multiplier and logits_scaling, folded into the weights as they load.

transformers' Granite (models/granite, models/granitemoe) is Llama with four scalars. Two of
them scale the output of a linear map and are folded into that map's weights here, as the
loaders copy them in, so every path that reads the weights honours them at no cost: prefill,
decode, the one-token fused GEMVs (kernels/gemv.py, kernels/attention_oproj.py and
fused_moe_gemv.py add o_proj's and down_proj's output to the residual stream inside the
kernel, with no scale argument to ride), the CUDA-graph captured steps, prompt logprobs and
tensor parallelism (a row-parallel shard scaled is the shard of the scaled weight):

- residual_multiplier scales each attention and MLP output before the residual add:
  o_proj's weight and bias, and the MLP's down_proj (each expert's, and a shared expert's,
  whose sum is the MoE output).
- logits_scaling divides the logits. Granite ties the LM head to the embedding, which the
  embedding_multiplier does not scale, so the LM head cannot take it; the final norm's
  weight can (logits = (w * x_hat) E^T / s = ((w / s) * x_hat) E^T), and that norm feeds
  nothing but the LM head (and the prompt logprobs computed from its logits). The dense
  Granite 3 models' logits_scaling is a power of two (8, 16), which divides a bfloat16
  weight exactly; GraniteMoe's (6.0 for granite-3.x 1b-a400m and 3b-a800m) is not, so there
  the scaled weight is rounded once more (next paragraph).

Folding is exact up to rounding: in float32 the logits differ from transformers' at the
1e-7 level; in bfloat16 the scaled weight is rounded once where transformers rounds the
unscaled product and then the scaled one. The other two scalars are applied where they
act (llama.py): attention_multiplier is the attention kernels' softmax scale, and
embedding_multiplier multiplies the embedded tokens (the tied embedding is the LM head too,
so it cannot be folded into that weight).
"""

from __future__ import annotations

import torch

from aiollm.model.config import ModelConfig


def weight_scale(config: ModelConfig, name: str) -> float:
    """The factor parameter `name` (llama.py's name, e.g. "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.experts.down_proj", "norm.weight") is multiplied by as it loads: 1.0 for
    every parameter of a model without Granite's scalars."""
    if name == "norm.weight":
        return 1.0 / config.logits_scaling
    if name.endswith(("self_attn.o_proj.weight", "self_attn.o_proj.bias", "down_proj.weight",
                      "experts.down_proj")):
        return config.residual_multiplier
    return 1.0


def scaled(config: ModelConfig, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, the checkpoint's value (or part of it) for parameter `name`, multiplied by
    weight_scale in float32 (one rounding to the run dtype when it is copied in)."""
    scale = weight_scale(config, name)
    return tensor if scale == 1.0 else tensor.float() * scale


def fold_into(model: torch.nn.Module, config: ModelConfig) -> None:
    """Multiply the parameters of `model`, already filled with a checkpoint's values (random
    ones: loader._init_dummy), by their weight_scale, in place."""
    for name, p in model.named_parameters():
        if weight_scale(config, name) != 1.0:
            p.data.copy_(scaled(config, name, p.data))
