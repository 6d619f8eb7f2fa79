"""The grouped GEMM kernel of the fused mixture-of-experts MLP (fused_moe.py): one Triton
kernel over the expert-aligned (token, expert) pairs of moe_align.py, launched twice per layer
(fused_moe_gemm.py; its configs in fused_moe_gemm_configs.py).

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
together share B tiles in L2 at prefill sizes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait


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
