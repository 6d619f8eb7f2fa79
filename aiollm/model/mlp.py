"""The dense gated MLP of the decoder, down(act(gate(x)) * up(x)), and its activation kernels.

config.hidden_act (transformers' ACT2FN name, as hf_config.py reads it) picks the activation:
SiLU gives SwiGLU (Llama, Mistral, Qwen), GELU's tanh approximation GeGLU (Gemma; Shazeer 2020,
"GLU Variants Improve Transformer"). Each has two kernels: act(gate) * up over the fused
gate/up projection's output [T, 2I] (kernels/activation.py), and the one-token step's GEMV
with the norm before it and the activation folded in (kernels/gemv.py). Gate and up are one
matmul, `gate_up_proj` [2I, H]; the loaders fill its halves from gate_proj and up_proj.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from aiollm.kernels import gelu_tanh_and_mul, silu_and_mul
from aiollm.kernels.gemv import gemv_norm_gelu_tanh, gemv_norm_silu, gemv_residual
from aiollm.model.linear import Linear
from aiollm.model.parallel import RowParallelLinear

if TYPE_CHECKING:
    from aiollm.model.norm import RMSNorm

# hidden_act -> (act(gate) * up of [T, 2I], the same after a one-token step's gate/up GEMV)
GATED_ACTIVATIONS = {"silu": (silu_and_mul, gemv_norm_silu),
                     "gelu_pytorch_tanh": (gelu_tanh_and_mul, gemv_norm_gelu_tanh)}


class MLP(nn.Module):
    """down(act(gate(x)) * up(x)) of x [T, H] in the model dtype, act hidden_act's (one of
    GATED_ACTIVATIONS: SwiGLU, or Gemma's GeGLU). KeyError for another hidden_act (ModelConfig
    refuses those first)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size)
        self.act_and_mul, self.gemv_norm_act = GATED_ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))

    def forward_small(self, residual: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """residual + mlp(norm(residual)) for at most llama.FUSED_MAX_TOKENS tokens, in two
        fused GEMVs (norm + gate/up + activation-and-mul; down + residual add); float32 stream
        out."""
        act = self.gemv_norm_act(residual, norm.weight, norm.eps, self.gate_up_proj.weight)
        return gemv_residual(act, self.down_proj.weight, None, residual)
