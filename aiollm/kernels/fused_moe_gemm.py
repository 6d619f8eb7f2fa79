"""The grouped GEMM of the fused mixture-of-experts MLP (fused_moe.py): one Triton kernel
over the expert-aligned (token, expert) pairs of moe_align.py, launched twice per layer.

Each program takes one M-block of the aligned pairs (one expert, gathered token rows) and one
N-block of that expert's weights (w13 [E, 2I, H] and w2 [E, H, I], nn.Linear's [out, in]):

- gate/up: A = x[pair // top_k], two accumulators (the gate rows and the matching up rows), and
  SiLU-and-mul in the epilogue, so the [pairs, 2I] gate/up product never reaches memory; or
  (FUSED 2) one accumulator twice as wide, fed by one TMA box of w13 viewed as
  [E * 2, I, H] that holds both the gate and the matching up rows, split in the epilogue;
  or (FUSED 0) one plain GEMM over all 2I rows, then silu_and_mul;
- down: A = the activations of the pair, the routing weight multiplied in the epilogue, one row
  per pair (moe_combine.py then sums each token's rows).

Variants, chosen per token-count class by the autotuner:
- SWAP_AB computes C^T = W A^T: the expert's weight rows fill the MMA's M dimension (64 or
  more, as Hopper's wgmma wants) and the few tokens of a block its N dimension. Without it a
  16-pair block is the M dimension and the compiler falls back to the older mma.sync;
- TMA loads the weight tiles with tensor descriptors (the bulk copy engine) instead of
  per-thread pointers, which frees the registers those pointers hold (the 128 x 2 x 128 gate/up
  tile drops from 255 to 170 registers in Triton 3.6's report). A rows stay gathered loads;
- SPLIT: an expert's group is padded to a multiple of BLOCK_M, so its last block may hold
  mostly padding (at 4,096 tokens of Qwen3-30B-A3B's routing, 128-row blocks add 25% rows);
  with SPLIT 1 (2) a block whose pairs fit in half (a quarter) of it runs a tile of that
  height, chosen at run time from the block's pair count;
- MERGE (not with SWAP_AB or FUSED 1, weight tiles by descriptor, BLOCK_M over 32): an
  expert's last block of at most 32 pairs after a full block of its own is computed by that
  block's program, as a second accumulator in the swapped order (the same weight tile is the
  MMA's M side, the 16 or 32 tail pairs its N side): a tile of its own computes 64 rows or
  more for them, and on an H200 the tails cost their MMAs (bench/README.md, MoE section).
  Same outputs bit for bit.

A row map (the pairs' rows in the alignment's compact layout) can replace the output's rows
(gate/up feeding torch._grouped_mm) or A's (down reading its rows). Program ids are swizzled
in groups of GROUP_M along M (the Triton matmul tutorial's scheme) so that programs running
together share B tiles in L2 at prefill sizes. Launch configs come from autotune.py, keyed
per (experts, N, K, top_k, token-count class); the gate/up GEMM's BLOCK_M fixes the
alignment, so the down GEMM is tuned per BLOCK_M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from aiollm.kernels import pdl
from aiollm.kernels.activation import silu_and_mul_triton
from aiollm.kernels.autotune import Config, bucket, get_config, time_config
from aiollm.kernels.moe_align import moe_align_triton
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait

TOKEN_CLASSES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _c(bn: int, bk: int, warps: int, stages: int, **flags: int) -> Config:
    return {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
            "num_stages": stages, **flags}


# Tuning candidates, without BLOCK_M. Flags: SWAP_AB (C^T = W A^T), TMA (weight tiles by tensor
# descriptor), FUSED 0 (gate/up as one plain GEMM, then silu_and_mul) or 2 (gate and up tiles
# in one TMA box and one MMA of 2 * BLOCK_N columns), SPLIT 1/2 (an expert's
# last block, if its pairs fit, as a tile of 1/2 or 1/4 the height: less padding computed),
# MERGE (an expert's last block of at most MERGE_ROWS pairs inside the previous block's tile);
# absent means 0, FUSED 1.
_SMALL = [_c(32, 128, 4, 4), _c(64, 128, 4, 4), _c(64, 64, 4, 4), _c(128, 64, 4, 3),
          _c(32, 256, 4, 3), _c(64, 256, 8, 3), _c(128, 128, 8, 3),
          _c(64, 128, 4, 4, SWAP_AB=1), _c(128, 64, 4, 4, SWAP_AB=1),
          _c(64, 128, 4, 4, SWAP_AB=1, TMA=1), _c(64, 256, 4, 3, SWAP_AB=1, TMA=1),
          _c(128, 128, 4, 3, SWAP_AB=1, TMA=1), _c(128, 64, 4, 4, SWAP_AB=1, TMA=1)]
# two accumulators of 128 x BLOCK_N: 4 warps spill at BLOCK_N 128, hence few 4-warp configs
_LARGE_UP = [_c(64, 64, 4, 4), _c(128, 64, 8, 3), _c(64, 128, 4, 3),
             _c(64, 64, 4, 4, TMA=1), _c(128, 64, 8, 3, TMA=1), _c(128, 64, 8, 4, TMA=1),
             _c(64, 128, 4, 3, TMA=1),
             _c(256, 64, 8, 3, TMA=1, FUSED=0), _c(256, 64, 8, 4, TMA=1, FUSED=0),
             _c(128, 128, 8, 2, TMA=1, FUSED=0), _c(128, 64, 8, 4, TMA=1, FUSED=0),
             _c(128, 64, 8, 4, TMA=1, SPLIT=1), _c(128, 64, 8, 4, TMA=1, SPLIT=2),
             _c(128, 64, 8, 3, TMA=1, SPLIT=1), _c(64, 64, 4, 4, TMA=1, SPLIT=1),
             _c(256, 64, 8, 3, TMA=1, FUSED=0, SPLIT=1), _c(256, 64, 8, 4, TMA=1, FUSED=0, SPLIT=1),
             _c(128, 64, 8, 3, TMA=1, FUSED=2, SPLIT=1), _c(128, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(128, 64, 8, 3, TMA=1, FUSED=2), _c(64, 64, 4, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(64, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(128, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1, MERGE=1)]
_LARGE_DOWN = [_c(128, 64, 8, 3), _c(128, 64, 4, 4), _c(256, 64, 8, 3), _c(64, 64, 4, 4),
               _c(128, 64, 8, 3, TMA=1), _c(128, 64, 8, 4, TMA=1), _c(128, 64, 4, 4, TMA=1),
               _c(256, 64, 8, 3, TMA=1), _c(256, 64, 8, 4, TMA=1), _c(128, 128, 8, 2, TMA=1),
               _c(256, 64, 8, 4, TMA=1, SPLIT=1), _c(256, 64, 8, 4, TMA=1, SPLIT=2),
               _c(128, 64, 8, 4, TMA=1, SPLIT=1), _c(256, 64, 8, 3, TMA=1, SPLIT=1),
               _c(256, 64, 8, 4, TMA=1, SPLIT=1, MERGE=1)]


@triton.jit
def _tile_rows(SortedIds, RowMap, start, num_pairs, A_ROW_DIV: tl.constexpr,
               ROW_MAP: tl.constexpr, ROWS: tl.constexpr):
    """The pairs in slots [start, start + ROWS), whether each is one (not padding), and the
    row of A each reads."""
    rows = tl.load(SortedIds + start + tl.arange(0, ROWS))
    row_ok = rows < num_pairs
    if ROW_MAP == 2:  # A's rows by the pair's row in the compact layout (moe_align.py)
        a_rows = tl.load(RowMap + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        a_rows = (rows // A_ROW_DIV).to(tl.int64)
    return rows, row_ok, a_rows


@triton.jit
def _tile_out(acc, acc_up, rows, row_ok, offs_n, n_ok, C, TopkWeights, RowMap, stride_cm,
              FUSE_SILU: tl.constexpr, MUL_WEIGHT: tl.constexpr, ROW_MAP: tl.constexpr,
              SWAP_AB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The epilogue of BLOCK_M pairs' rows: SiLU-and-mul, the routing weight, the store."""
    if FUSE_SILU == 2:  # split the gate and up halves of the tile's columns (rows, swapped)
        if SWAP_AB:
            pair = tl.permute(tl.reshape(acc, (2, BLOCK_N, BLOCK_M)), (1, 2, 0))
        else:
            pair = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1))
        gate, up = tl.split(pair)
        acc = gate * tl.sigmoid(gate) * up
    elif FUSE_SILU == 1:
        acc = acc * tl.sigmoid(acc) * acc_up
    # the output row of each pair: its own number, or with ROW_MAP 1 its row in the compact
    # layout, for a down GEMM by group offsets
    if ROW_MAP == 1:
        out_rows = tl.load(RowMap + rows, mask=row_ok, other=0)
    else:
        out_rows = rows
    if SWAP_AB:
        if MUL_WEIGHT:
            acc = acc * tl.load(TopkWeights + rows, mask=row_ok, other=0.0)[None, :]
        c_ptrs = C + out_rows[None, :].to(tl.int64) * stride_cm + offs_n[:, None]
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=row_ok[None, :] & n_ok[:, None])
    else:
        if MUL_WEIGHT:
            acc = acc * tl.load(TopkWeights + rows, mask=row_ok, other=0.0)[:, None]
        c_ptrs = C + out_rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_tile(
    A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
    N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
    A_ROW_DIV: tl.constexpr, FUSE_SILU: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    ROW_MAP: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, TAIL: tl.constexpr = 0,
):
    """One output tile: BLOCK_M aligned pairs from slot row0 (one expert's) x BLOCK_N; with
    TAIL > 0 (not SWAP_AB, FUSE_SILU 0 or 2, weight tiles by descriptor) also the TAIL
    slots after them, the same expert's, in the swapped order (C^T = W A^T: the weight tile
    is the MMA's M side, the TAIL pairs its N side, so a few pairs take few MMA columns) as
    a second accumulator on the same weight tiles."""
    rows, row_ok, a_rows = _tile_rows(SortedIds, RowMap, row0, num_pairs, A_ROW_DIV, ROW_MAP,
                                      BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    b_base = B + expert * stride_be
    if SWAP_AB:
        # C^T = W A^T: the expert's weight rows fill the MMA's M dimension and the few
        # tokens its N dimension, so a small token block wastes no MMA rows
        a_ptrs = A + a_rows[None, :] * stride_am + offs_k[:, None]  # [BLOCK_K, BLOCK_M]
        b_ptrs = b_base + offs_n[:, None].to(tl.int64) * stride_bn + offs_k[None, :]
        a_mask = row_ok[None, :]
        b_mask = n_ok[:, None]
        if FUSE_SILU == 2:
            acc = tl.zeros((2 * BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        a_ptrs = A + a_rows[:, None] * stride_am + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
        b_ptrs = b_base + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
        a_mask = row_ok[:, None]
        b_mask = n_ok[None, :]
        if FUSE_SILU == 2:
            acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FUSE_SILU == 1:
        acc_up = tl.zeros_like(acc)
    else:
        acc_up = acc  # unused
    if TAIL > 0:
        rows2, row2_ok, a2_rows = _tile_rows(SortedIds, RowMap, row0 + BLOCK_M, num_pairs,
                                             A_ROW_DIV, ROW_MAP, TAIL)
        a2_ptrs = A + a2_rows[:, None] * stride_am + offs_k[None, :]  # [TAIL, BLOCK_K]
        if FUSE_SILU == 2:
            acc2 = tl.zeros((2 * BLOCK_N, TAIL), dtype=tl.float32)
        else:
            acc2 = tl.zeros((BLOCK_N, TAIL), dtype=tl.float32)
    # with USE_TMA, B tiles come by the bulk tensor copy engine: BDesc views B as
    # [experts * rows, K] in [BLOCK_N, BLOCK_K] boxes, zero-filled past K; with FUSE_SILU 2
    # as [experts * 2, N, K] in [2, BLOCK_N, BLOCK_K] boxes: the gate rows and the matching
    # up rows in one tile, one MMA 2 * BLOCK_N wide
    b_row = (expert * (stride_be // stride_bn)).to(tl.int32) + pid_n * BLOCK_N
    for k0 in range(0, K, BLOCK_K):
        if TAIL > 0:
            if EVEN_K:
                a2 = tl.load(a2_ptrs, mask=row2_ok[:, None], other=0.0)
            else:
                a2 = tl.load(a2_ptrs, mask=row2_ok[:, None] & (offs_k[None, :] < K - k0),
                             other=0.0)
            a2_ptrs += BLOCK_K
        if EVEN_K:
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        elif SWAP_AB:
            a = tl.load(a_ptrs, mask=a_mask & (offs_k[:, None] < K - k0), other=0.0)
        else:
            a = tl.load(a_ptrs, mask=a_mask & (offs_k[None, :] < K - k0), other=0.0)
        if FUSE_SILU == 2:
            b = BDesc.load([2 * expert.to(tl.int32), pid_n * BLOCK_N, k0])  # [2, BN, BK]
            b = tl.reshape(b, (2 * BLOCK_N, BLOCK_K))
            b_nk = b
            if not SWAP_AB:
                b = b.T
        elif USE_TMA:
            b = BDesc.load([b_row, k0])  # [BLOCK_N, BLOCK_K]
            b_nk = b
            if not SWAP_AB:
                b = b.T
            if FUSE_SILU:
                b_up = BDesc.load([b_row + up_offset, k0])
                if not SWAP_AB:
                    b_up = b_up.T
        else:
            if EVEN_K:
                b_k = b_mask
            elif SWAP_AB:
                b_k = b_mask & (offs_k[None, :] < K - k0)
            else:
                b_k = b_mask & (offs_k[:, None] < K - k0)
            b = tl.load(b_ptrs, mask=b_k, other=0.0)
            if FUSE_SILU:
                b_up = tl.load(b_ptrs + up_offset * stride_bn, mask=b_k, other=0.0)
        if SWAP_AB:
            acc = tl.dot(b, a, acc, input_precision=PRECISION)
            if FUSE_SILU == 1:
                acc_up = tl.dot(b_up, a, acc_up, input_precision=PRECISION)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if FUSE_SILU == 1:
                acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
            if TAIL > 0:
                acc2 = tl.dot(b_nk, a2.T, acc2, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    _tile_out(acc, acc_up, rows, row_ok, offs_n, n_ok, C, TopkWeights, RowMap, stride_cm,
              FUSE_SILU, MUL_WEIGHT, ROW_MAP, SWAP_AB, BLOCK_M, BLOCK_N)
    if TAIL > 0:
        _tile_out(acc2, acc2, rows2, row2_ok, offs_n, n_ok, C, TopkWeights, RowMap, stride_cm,
                  FUSE_SILU, MUL_WEIGHT, ROW_MAP, True, TAIL, BLOCK_N)


# MERGE: an expert's last block of at most MERGE_ROWS pairs is computed by the program of
# the block before it, in the swapped order (_moe_tile's TAIL)
MERGE_ROWS = 32


@triton.jit(do_not_specialize=["num_pairs", "num_blocks_m"])
def _moe_gemm_kernel(
    A, B, BDesc, C, SortedIds, ExpertIds, NumPadded, TopkWeights, RowMap,
    N, K, num_pairs, num_blocks_m,
    stride_am, stride_be, stride_bn, stride_cm, up_offset,
    A_ROW_DIV: tl.constexpr, FUSE_SILU: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    ROW_MAP: tl.constexpr,
    EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT: tl.constexpr,
    MERGE: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    if PDL:  # the alignment and A come from the kernels before (pdl.py)
        gdc_wait()
        gdc_launch_dependents()
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = pid // in_group * GROUP_M
    group_size = tl.minimum(num_blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    num_padded = tl.load(NumPadded)
    if pid_m * BLOCK_M >= num_padded:
        return
    expert = tl.load(ExpertIds + pid_m).to(tl.int64)
    row0 = pid_m * BLOCK_M
    # only an expert's last block holds padding (at its end): with SPLIT, a block whose pairs
    # fit in half (or, SPLIT 2, a quarter) of it runs a tile of that height instead
    used = BLOCK_M
    if SPLIT > 0:
        used = tl.sum((tl.load(SortedIds + row0 + tl.arange(0, BLOCK_M)) < num_pairs)
                      .to(tl.int32), 0)
    # Triton 3.6 compiles the two branches below even when MERGE is off: their TAIL is 0 then
    tail_16 = False
    tail_32 = False
    if MERGE:
        # MERGE is 0 or MERGE_ROWS: an expert's last block of at most MERGE pairs after a
        # block of its own is computed by that block's program, as a swapped second
        # accumulator of MERGE / 2 or MERGE columns on the same weight tiles: a tile of its
        # own would compute 64 rows or more for them (the tails' MMAs, not their weight
        # loads, are what they cost). Padding sits at a block's end, so a block whose slot j
        # is padding holds at most j pairs.
        before = tl.load(ExpertIds + pid_m - 1, mask=pid_m > 0, other=-1)
        tail_only = tl.load(SortedIds + row0 + MERGE) >= num_pairs
        if tail_only & (before == expert):
            return
        has_next = (pid_m + 1) * BLOCK_M < num_padded
        after = tl.load(ExpertIds + pid_m + 1, mask=has_next, other=-1)
        same = has_next & (after == expert)
        next_slot = SortedIds + row0 + BLOCK_M
        tail_16 = same & (tl.load(next_slot + MERGE // 2, mask=same, other=0) >= num_pairs)
        tail_32 = same & (tl.load(next_slot + MERGE, mask=same, other=0) >= num_pairs)
    if tail_16:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, MERGE // 2)
    elif tail_32:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, MERGE)
    elif used > BLOCK_M // 2:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    elif SPLIT == 1:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M // 2, BLOCK_N, BLOCK_K, PRECISION)
    elif used > BLOCK_M // 4:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M // 2, BLOCK_N, BLOCK_K, PRECISION)
    else:
        _moe_tile(A, B, BDesc, C, SortedIds, TopkWeights, RowMap, expert, row0, pid_n,
                  N, K, num_pairs, stride_am, stride_be, stride_bn, stride_cm, up_offset,
                  A_ROW_DIV, FUSE_SILU, MUL_WEIGHT, ROW_MAP, EVEN_K, SWAP_AB, USE_TMA,
                  BLOCK_M // 4, BLOCK_N, BLOCK_K, PRECISION)


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


def _block_ms(tokens: int, top_k: int, experts: int) -> list[int]:
    """BLOCK_M worth trying: about the mean number of pairs per expert, at least 16."""
    per_expert = tokens * top_k / experts
    if per_expert <= 4:
        return [16]
    if per_expert <= 16:
        return [16, 32]
    if per_expert <= 64:
        return [32, 64]
    return [64, 128]


def _candidates(block_ms: list[int], up: bool) -> list[Config]:
    return [{"BLOCK_M": bm, **c} if up else c for bm in block_ms
            for c in (_SMALL if bm <= 32 else _LARGE_UP if up else _LARGE_DOWN)]


def moe_configs(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
                device: torch.device, bench_inputs=None) -> tuple[Config, Config]:
    """(gate/up config with BLOCK_M, down config) for this shape class; `bench_inputs` is
    (x, w13, w2, topk_weights, topk_ids, expert_start) to tune on when a key is missing."""
    cls = bucket(tokens, TOKEN_CLASSES)
    key = f"e{num_experts}-n{2 * inter}-k{hidden}-top{top_k}-t{cls}"
    bms = _block_ms(cls, top_k, num_experts)
    big = bms[0] > 32
    up_default = {"BLOCK_M": bms[0], "BLOCK_N": 64, "BLOCK_K": 64 if big else 128, "GROUP_M": 8,
                  "num_warps": 4, "num_stages": 4 if not big else 3}

    def run_up(cfg):
        x, w13, _, tw, ids, start = bench_inputs
        aligned = moe_align_triton(ids, num_experts, cfg["BLOCK_M"], start)
        return time_config(lambda: _gate_up(x, w13, aligned, tw, top_k, cfg))

    up = get_config("fused_moe_gate_up", key, device, up_default, _candidates(bms, True), run_up,
                    classes={"t": TOKEN_CLASSES})
    bm = up["BLOCK_M"]
    down_default = {k: v for k, v in up_default.items() if k != "BLOCK_M"}

    def run_down(cfg):
        x, _, w2, tw, ids, start = bench_inputs
        aligned = moe_align_triton(ids, num_experts, bm, start)
        act = torch.randn((ids.numel(), inter), dtype=x.dtype, device=x.device)
        y = torch.empty((ids.numel(), hidden), dtype=x.dtype, device=x.device)
        full = {"BLOCK_M": bm, **cfg}
        return time_config(lambda: _gemm(act, w2, y, aligned, tw, 1, False, True, full))

    down_key = f"e{num_experts}-n{hidden}-k{inter}-top{top_k}-t{cls}-m{bm}"
    down = get_config("fused_moe_down", down_key, device, down_default,
                      _candidates([bm], False), run_down,
                      classes={"t": TOKEN_CLASSES})
    return up, {"BLOCK_M": bm, **down}
