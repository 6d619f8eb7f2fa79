"""Fused mixture-of-experts MLP through PyTorch's grouped GEMM: no padding of expert groups.

`torch._grouped_mm(a [M, K], b [E, K, N], offs [E] int32)` multiplies rows
[offs[e-1], offs[e]) of a by b[e] in one launch (CUTLASS's grouped GEMM on sm90 in bf16, a
loop elsewhere). The pairs in moe_align.py's compact layout (grouped by expert, no padding)
are exactly such row groups, so nothing is computed for padding, which the Triton grouped
GEMMs of fused_moe.py pay for at prefill sizes (each expert's group rounded up to BLOCK_M).
The price is memory traffic that fused_moe.py's kernels avoid: the token rows gathered into
the grouped order, the [pairs, 2I] gate/up product and its silu_and_mul, and the weights
applied in the combine (moe_combine.py) instead of the GEMM's epilogue.

Three uses, chosen by the autotuner per token-count class (fused_moe.py's `fused_moe_path`):
both GEMMs here (`fused_moe_grouped_mm`), only the down GEMM (`grouped_mm_down`) after
fused_moe.py's gate/up kernel has written its rows in the compact order, or only the gate/up
GEMM (`grouped_mm_gate_up`) before fused_moe.py's down kernel reads its rows from there.
"""

from __future__ import annotations

import torch

from aiollm.kernels.activation import silu_and_mul_triton
from aiollm.kernels.moe_align import moe_align_triton
from aiollm.kernels.moe_combine import moe_combine_triton


_usable: dict[tuple[str, int | None, torch.dtype], bool] = {}


def grouped_mm_usable(device_type: str, device_index: int | None, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm exists here and equals a loop of matmuls on a tiny problem
    (an empty group included) on this device and dtype; checked once per process, outside
    CUDA graph captures (False while one runs and nothing was checked yet)."""
    key = (device_type, device_index, dtype)
    if key not in _usable:
        if device_type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False
        _usable[key] = _check(device_type, device_index, dtype)
    return _usable[key]


def _check(device_type: str, device_index: int | None, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    dev = torch.device(device_type, device_index)
    try:
        gen = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(24, 32, device=dev, generator=gen).to(dtype)
        w = torch.randn(3, 16, 32, device=dev, generator=gen).to(dtype)
        ends = torch.tensor([8, 8, 24], dtype=torch.int32, device=dev)
        got = torch._grouped_mm(a, w.transpose(1, 2), offs=ends).float()
        want = torch.cat([a[:8].float() @ w[0].float().T, a[8:].float() @ w[2].float().T])
        return bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def usable_for(x: torch.Tensor) -> bool:
    return grouped_mm_usable(x.device.type, x.device.index, x.dtype)


def grouped_mm(a: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """a [M, K] in groups ending at ends [E] int32; w [E, N, K] (nn.Linear's order) -> [M, N]:
    row r of group e is w[e] @ a[r]. Rows past ends[-1] are left unwritten."""
    return torch._grouped_mm(a, w.transpose(1, 2), offs=ends)


def fused_moe_grouped_mm(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                         topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                         expert_start: int = 0) -> torch.Tensor:
    """fused_moe.py's fused_moe_triton contract (x [T, H]; w13 [E, 2I, H]; w2 [E, H, I];
    topk_weights [T, k] float32; topk_ids [T, k] int32, experts outside [expert_start,
    expert_start + E) contribute 0) -> [T, H], with both GEMMs by torch._grouped_mm."""
    aligned = moe_align_triton(topk_ids, w13.shape[0], 0, expert_start, tokens=True)
    act = grouped_mm_gate_up(x, w13, aligned)
    return grouped_mm_down(act, w2, aligned, topk_weights, topk_ids, expert_start)


def grouped_mm_gate_up(x: torch.Tensor, w13: torch.Tensor, aligned) -> torch.Tensor:
    """x [T, H] -> act [pairs, I] in the compact order of `aligned` (moe_align.py, aligned
    with tokens=True): the token rows gathered, the gate/up GEMM by torch._grouped_mm, then
    silu_and_mul."""
    rows = x.index_select(0, aligned.tokens)  # [pairs, H] in the grouped order
    return silu_and_mul_triton(grouped_mm(rows, w13, aligned.ends))


def grouped_mm_down(act: torch.Tensor, w2: torch.Tensor, aligned, topk_weights: torch.Tensor,
                    topk_ids: torch.Tensor, expert_start: int) -> torch.Tensor:
    """act [pairs, I] in the compact order of `aligned` (moe_align.py) -> [T, H]: the down
    GEMM by torch._grouped_mm, then the weighted combine."""
    y = grouped_mm(act, w2, aligned.ends)
    return moe_combine_triton(y, topk_ids, expert_start, w2.shape[0], topk_weights,
                              aligned.positions)
