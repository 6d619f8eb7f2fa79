"""Mixture-of-experts combine: the sum over each token's top-k expert outputs.

    out[t] = sum_k s(t, k) * y[row(t, k)]

over the pairs (t, k) whose expert is held here (expert_start <= ids[t, k] < expert_start + E;
the others contribute 0, so their rows of y are never read and need no zeroing). Two layouts
of y, one kernel:

- by pair (row = t * top_k + k), the routing weight already applied (the grouped GEMM's
  epilogue multiplies it in): s = 1;
- by compact row (row = positions[t * top_k + k] from moe_align.py: rows grouped by expert
  with no padding, as `torch._grouped_mm` writes them): s = the routing weight, applied here.

One program per (token, BLOCK_H columns) reads the token's top-k rows in one [top_k, BLOCK_H]
load and sums in float32, so the pass runs near copy bandwidth (it reads T * top_k * H
elements and writes T * H); `torch.sum` over a [T, top_k, H] view reads strided rows instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aiollm.kernels import pdl
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _combine_kernel(Y, Out, TopkIds, Weights, Positions, H, expert_start, num_experts,
                    stride_y, stride_o, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr,
                    INDEXED: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # y comes from the kernel before (pdl.py)
        gdc_wait()
        gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    kk = tl.arange(0, BLOCK_K)
    pair = t * TOP_K + kk
    local = tl.load(TopkIds + pair, mask=kk < TOP_K, other=-1) - expert_start
    ok = (kk < TOP_K) & (local >= 0) & (local < num_experts)
    if INDEXED:
        rows = tl.load(Positions + pair, mask=ok, other=0).to(tl.int64)
    else:
        rows = pair
    y = tl.load(Y + rows[:, None] * stride_y + cols[None, :], mask=ok[:, None] & col_ok[None, :],
                other=0.0).to(tl.float32)
    if INDEXED:
        y = y * tl.load(Weights + pair, mask=ok, other=0.0)[:, None]
    tl.store(Out + t * stride_o + cols, tl.sum(y, 0).to(Out.dtype.element_ty), mask=col_ok)


def moe_combine_triton(y: torch.Tensor, topk_ids: torch.Tensor, expert_start: int,
                       num_experts: int, topk_weights: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
    """y [rows, H] (rows >= T * top_k by pair; any count in the compact layout); topk_ids
    [T, top_k] int32 global ids; with `positions` [T * top_k] int32 (compact layout) also
    `topk_weights` [T, top_k] float32, applied here -> [T, H] in y's dtype."""
    T, top_k = topk_ids.shape
    H = y.shape[1]
    assert y.stride(1) == 1 and topk_ids.is_contiguous()
    indexed = positions is not None
    assert not indexed or (topk_weights is not None and topk_weights.is_contiguous())
    out = torch.empty((T, H), dtype=y.dtype, device=y.device)
    if T == 0:
        return out
    block_h = min(1024, triton.next_power_of_2(H))
    _combine_kernel[(T, triton.cdiv(H, block_h))](
        y, out, topk_ids, topk_weights, positions, H, expert_start, num_experts,
        y.stride(0), out.stride(0), TOP_K=top_k, BLOCK_K=triton.next_power_of_2(top_k),
        INDEXED=indexed, BLOCK_H=block_h, num_warps=4, **pdl.launch_kwargs(y.device))
    return out


def moe_combine_ref(y: torch.Tensor, topk_ids: torch.Tensor, expert_start: int,
                    num_experts: int, topk_weights: torch.Tensor | None = None,
                    positions: torch.Tensor | None = None) -> torch.Tensor:
    """The same sum with gathers and a float32 reduction."""
    T, top_k = topk_ids.shape
    local = topk_ids.long() - expert_start
    ok = (local >= 0) & (local < num_experts)
    if positions is None:
        rows = y[: T * top_k].view(T, top_k, -1).float()
        scale = ok.float()
    else:
        rows = y[positions.long().clamp(min=0)].view(T, top_k, -1).float()
        scale = torch.where(ok, topk_weights.float(), 0.0)
    return torch.where(ok[..., None], rows * scale[..., None], 0.0).sum(1).to(y.dtype)
