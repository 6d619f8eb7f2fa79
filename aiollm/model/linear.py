"""Linear: the plain projection layer of the decoder (and of a column-parallel rank's part).

It is nn.Linear without the initialisation: the loader always overwrites the parameters, and
nn.Linear's random init costs time on a device (and a second of imports on the meta device).
Under tensor parallelism the model builds it at the rank's own out_features (its rows of
q/k/v or gate/up); parallel.RowParallelLinear is the row-split counterpart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x W^T (+ b): x [T, in_features] -> [T, out_features] in the parameters' dtype, with
    weight [out_features, in_features] and bias [out_features] left uninitialised."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def linear_into(x: torch.Tensor, linear: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """linear(x) written into `out` [T, out_features] (a static buffer of the prefill graphs),
    through the same GEMM (with its bias, addmm) as F.linear; returns out."""
    w, b = linear.weight, linear.bias
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)
