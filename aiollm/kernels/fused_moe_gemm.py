"""The launches of the fused MoE grouped GEMM (its kernel: fused_moe_gemm_kernel.py): _gemm,
one launch over the expert-aligned pairs of moe_align.py with a config from
fused_moe_gemm_configs.py (weight tiles by tensor descriptor where it asks), and _gate_up, the
gate/up GEMM with SiLU-and-mul fused in its epilogue or after it. fused_moe.py runs them per
layer.
"""

from __future__ import annotations

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from aiollm.kernels import pdl
from aiollm.kernels.activation import silu_and_mul_triton
from aiollm.kernels.autotune import Config
from aiollm.kernels.fused_moe_gemm_kernel import MERGE_ROWS, _moe_gemm_kernel


def _gemm(a, b, c, aligned, topk_weights, a_row_div: int, fuse_silu: int, mul_weight: bool,
          cfg: Config, row_map: torch.Tensor | None = None, map_a: bool = False) -> None:
    """One grouped GEMM launch: c[pair] = b[expert] @ a[pair // a_row_div] over the aligned
    pairs; row_map (the pairs' compact rows) replaces c's row (map_a False) or a's."""
    sorted_ids, expert_ids, num_padded = aligned[:3]
    n = c.shape[1]
    k = a.shape[1]
    if a.element_size() > 2:
        # configs are tuned (and the defaults sized) for 2-byte inputs, and the keys carry no
        # dtype: a float32 model takes half the K tile, so the pipeline's shared memory stays
        # what was tuned (a bf16 gate/up config asked for 240 KiB in float32, past the 227 KiB
        # an H100/H200 block may use); its products are exact (no TF32), as in attention
        cfg = {**cfg, "BLOCK_K": max(16, cfg["BLOCK_K"] * 2 // a.element_size())}
    grid = (expert_ids.numel() * triton.cdiv(n, cfg["BLOCK_N"]),)
    tma = bool(cfg.get("TMA", 0))
    merge = bool(cfg.get("MERGE", 0))
    if merge and (cfg.get("SWAP_AB", 0) or fuse_silu == 1 or not (tma or fuse_silu == 2)
                  or cfg["BLOCK_M"] <= MERGE_ROWS):
        raise ValueError("MERGE needs weight tiles by descriptor (TMA or FUSED 2), BLOCK_M "
                         f"over {MERGE_ROWS}, and neither SWAP_AB nor gate/up FUSED 1: {cfg}")
    if fuse_silu == 2:  # [2, BLOCK_N, BLOCK_K] boxes of b viewed as [experts * 2, n, k]
        b_desc = TensorDescriptor.from_tensor(b.view(-1, n, k),
                                              [2, cfg["BLOCK_N"], cfg["BLOCK_K"]])
    elif tma:
        b_desc = TensorDescriptor.from_tensor(b.view(-1, k), [cfg["BLOCK_N"], cfg["BLOCK_K"]])
    else:
        b_desc = None
    _moe_gemm_kernel[grid](
        a, b, b_desc, c, sorted_ids, expert_ids, num_padded, topk_weights, row_map,
        n, k, a.shape[0] * a_row_div, expert_ids.numel(),
        a.stride(0), b.stride(0), b.stride(1), c.stride(0), n if fuse_silu else 0,
        A_ROW_DIV=a_row_div, FUSE_SILU=int(fuse_silu), MUL_WEIGHT=mul_weight,
        ROW_MAP=0 if row_map is None else 2 if map_a else 1, EVEN_K=k % cfg["BLOCK_K"] == 0,
        SWAP_AB=bool(cfg.get("SWAP_AB", 0)),
        USE_TMA=tma, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg.get("GROUP_M", 8), SPLIT=cfg.get("SPLIT", 0), MERGE=MERGE_ROWS if merge else 0,
        PRECISION="ieee" if a.dtype == torch.float32 else "tf32", num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **pdl.launch_kwargs(a.device),
    )


def _gate_up(x, w13, aligned, topk_weights, top_k: int, cfg: Config,
             compact: bool = False) -> torch.Tensor:
    """-> act [T * top_k, I]: silu(gate) * up of each pair, fused in the GEMM's epilogue, or,
    with cfg["FUSED"] == 0, one plain GEMM over all 2I rows followed by silu_and_mul (one
    accumulator per tile instead of two, for the cost of a [pairs, 2I] round trip). FUSED 1
    keeps two accumulators (gate, up) of BLOCK_N columns; FUSED 2 one of 2 * BLOCK_N, fed by
    one TMA box holding both (weight tiles by descriptor whatever cfg["TMA"]). Row p is
    pair p's, or with `compact` the pair's row in the alignment's compact layout."""
    pairs, two_i = top_k * x.shape[0], w13.shape[1]
    rows = aligned.positions if compact else None
    fused = cfg.get("FUSED", 1)
    if fused:
        act = torch.empty((pairs, two_i // 2), dtype=x.dtype, device=x.device)
        _gemm(x, w13, act, aligned, topk_weights, top_k, fused, False, cfg, rows)
        return act
    gate_up = torch.empty((pairs, two_i), dtype=x.dtype, device=x.device)
    _gemm(x, w13, gate_up, aligned, topk_weights, top_k, False, False, cfg, rows)
    return silu_and_mul_triton(gate_up)
