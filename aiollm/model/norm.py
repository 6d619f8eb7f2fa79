"""RMSNorm: the decoder's norm module over the rms_norm kernel (with the residual add fused).

Gemma's (1 + w) norms are this module too: the loader stores 1 + w in `weight`, in float32
(ModelConfig.rms_norm_unit_offset).
"""

from __future__ import annotations

import torch
from torch import nn

from aiollm.kernels import rms_norm


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension (`size` features, epsilon `eps`), as
    kernels.rms_norm computes it: with `residual` the sum x + residual is normed and
    (normed, sum) returned, the sum written into `residual_out` when given."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                residual_out: torch.Tensor | None = None):
        return rms_norm(x, self.weight, self.eps, residual, residual_out)
