"""Mixture-of-experts routing and token-to-expert alignment, the two steps before the grouped
GEMMs of fused_moe.py.

Routing: softmax over each token's router logits, its top-k experts, their probabilities
renormalised to sum to 1 when asked (Mixtral; Qwen's norm_topk_prob), as in Shazeer et al. 2017
("Outrageously Large Neural Networks") and Mixtral's paper (Jiang et al. 2024).

Alignment: the T x top_k (token, expert) pairs, numbered p = t * top_k + k, are grouped by
expert and each expert's group is padded to a multiple of the GEMM's BLOCK_M, so that every
M-block of the grouped GEMM reads one expert's weights. Outputs, all int32 on the pairs' device:

- sorted_ids [max_padded]: pair numbers, grouped by expert; padding holds T * top_k;
- expert_ids [max_padded / BLOCK_M]: the (local) expert of each M-block;
- num_padded [1]: the used length of sorted_ids (blocks past it are skipped).

The same grouping without padding (the compact layout: each pair's row in it and each expert's
end) serves a grouped GEMM with group offsets and a top-k combine that gathers by row
(moe_combine.py). max_padded depends only on (T, top_k, experts, BLOCK_M), never on the
routing, so nothing syncs with the host and a decode step stays capturable in a CUDA graph.
Only experts in [expert_start, expert_start + num_experts) are aligned (the local ones, for a
later expert-parallel split); pairs routed elsewhere are left out.

The alignment is a counting sort in three launches: a histogram per chunk of pairs (one-hot
rows summed, no atomics), a scan of each expert's column over the chunks (one program an
expert), and a placement per chunk that adds each pair's rank among the same expert's pairs
before it in its chunk (every program scans the 128-odd expert counts itself, so no launch
runs alone on one multiprocessor, and picks each pair's group start by tl.gather; the
blocks' experts and padding slots are written by the programs owning those blocks). In
registers the placement holds one [chunk, chunk] compare and small tiles: 128 registers a
thread at 128 pairs, 128 experts, 8 warps in Triton 3.6's sm_90 compile (the one-hot
[chunk, experts] gathers and [experts, BLOCK_M] padding tile it replaced took 255, one
program a multiprocessor). Within a group the pairs keep their order, so the layout is the
one a stable sort by expert gives (moe_align_ref), on the GPU too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from aiollm.kernels import pdl
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait


SCAN_BLOCK = 256  # chunks a scan step covers (one BLOCK_C whatever the count: one variant)


def max_padded_pairs(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded length: each expert pads by < block_m, and no block holds
    fewer than one pair."""
    return min(num_pairs + num_experts * (block_m - 1), num_pairs * block_m)


# -- routing ------------------------------------------------------------------------------------

@triton.jit
def route_rows(x, E, TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, ROWS: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """Routing of ROWS tokens in registers: x [ROWS, BLOCK_E] float32 logits (lanes >= E ignored,
    any finite value) -> (weights [ROWS, BLOCK_K] float32, ids [ROWS, BLOCK_K] int32), lanes >=
    TOP_K zero. Softmax, top_k (the lowest index among ties), renormalised if asked. Shared by
    the routing kernel and the one-token decode kernels (fused_moe_gemv.py), so both pick
    the same experts. A row with a NaN logit gets NaN weights on experts 0..TOP_K-1, so the
    layer's output is NaN there, as in the reference (torch.topk), and the engine fails that
    request for non-finite logits; no expert would match the NaN softmax, and an expert id
    past E was left out by the alignment, giving a finite wrong row."""
    e = tl.arange(0, BLOCK_E)
    x = tl.where(e[None, :] < E, x, -float("inf"))
    p = tl.exp(x - tl.max(x, 1)[:, None])
    p = p / tl.sum(p, 1)[:, None]
    p = tl.where(e[None, :] < E, p, -1.0)
    kk = tl.arange(0, BLOCK_K)
    w = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    ids = tl.zeros([ROWS, BLOCK_K], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(p, 1)
        # the lowest index among ties
        arg = tl.min(tl.where(p == best[:, None], e[None, :], BLOCK_E), 1)
        w = tl.where(kk[None, :] == j, best[:, None], w)
        ids = tl.where(kk[None, :] == j, arg[:, None], ids)
        p = tl.where(e[None, :] == arg[:, None], -2.0, p)
    if RENORMALIZE:
        w = w / tl.sum(w, 1)[:, None]
    # a NaN row: no lane equals its NaN best (an id of BLOCK_E, or on a GPU, whose max skips
    # NaN lanes, the lanes already taken again)
    nan_row = (tl.max((x != x).to(tl.int32), 1) > 0)[:, None] & (kk[None, :] < TOP_K)
    w = tl.where(nan_row, float("nan"), w)
    ids = tl.where(nan_row, kk[None, :], ids)
    return w, ids


# The kernels below take token and pair counts unspecialised: Triton would compile a variant
# for a count of 1, for multiples of 16 and for the rest (~1 s each for the placement), and a
# server meets new counts mid-serving (on an H200, eager steps of 3,076-3,094 tokens of
# Qwen3-30B-A3B compiled the placement kernel four times).
@triton.jit(do_not_specialize=["T"])
def _route_kernel(Logits, Weights, Ids, T, E, stride_l, TOP_K: tl.constexpr,
                  RENORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # BLOCK_T tokens a program, one row each: the reductions stay along a row
    if PDL:  # the logits come from the kernel before (pdl.py)
        gdc_wait()
        gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    e = tl.arange(0, BLOCK_E)
    x = tl.load(Logits + t[:, None] * stride_l + e[None, :],
                mask=t_ok[:, None] & (e[None, :] < E), other=0.0).to(tl.float32)
    w, ids = route_rows(x, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)
    kk = tl.arange(0, BLOCK_K)
    out = t[:, None] * TOP_K + kk[None, :]
    ok = t_ok[:, None] & (kk[None, :] < TOP_K)
    tl.store(Weights + out, w, mask=ok)
    tl.store(Ids + out, ids, mask=ok)


def moe_route_triton(logits: torch.Tensor, top_k: int, renormalize: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] (any float dtype) -> (weights [T, top_k] float32, ids [T, top_k] int32)."""
    assert logits.dim() == 2 and logits.stride(1) == 1
    T, E = logits.shape
    weights = torch.empty((T, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=logits.device)
    if T:
        block_t = 1 if T < 64 else 16
        _route_kernel[(triton.cdiv(T, block_t),)](
            logits, weights, ids, T, E, logits.stride(0), TOP_K=top_k, RENORMALIZE=renormalize,
            BLOCK_T=block_t, BLOCK_E=triton.next_power_of_2(E),
            BLOCK_K=triton.next_power_of_2(top_k), num_warps=4,
            **pdl.launch_kwargs(logits.device))
    return weights, ids


def moe_route_ref(logits: torch.Tensor, top_k: int, renormalize: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' routing: softmax in float32, top-k, optional renormalisation."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


# -- alignment ----------------------------------------------------------------------------------

class MoeAlignment(NamedTuple):
    """The pairs grouped by expert (see the module doc); int32 tensors on the pairs' device.

    Padded layout, for the grouped GEMMs (None when aligned with block_m 0):
    sorted_ids [max_padded], expert_ids [max_padded / block_m], num_padded [1].
    Compact layout (no padding), for a grouped GEMM with group offsets:
    positions [n]: each pair's row in the compact order (-1 for a pair routed elsewhere);
    ends [E]: where each expert's rows end (cumulative counts, `torch._grouped_mm`'s offs);
    tokens [n] (only when asked): the token of the pair at each compact row (0 past the
    local pairs).
    """

    sorted_ids: torch.Tensor | None
    expert_ids: torch.Tensor | None
    num_padded: torch.Tensor | None
    positions: torch.Tensor
    ends: torch.Tensor
    tokens: torch.Tensor | None


@triton.jit
def _chunk_pairs(TopkIds, chunk, num_pairs, expert_start, num_experts, CHUNK: tl.constexpr):
    """The chunk's pair numbers, which are in range, which go to a local expert, and their
    local experts (-1 - expert_start past the pairs)."""
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    inb = offs < num_pairs
    local = tl.load(TopkIds + offs, mask=inb, other=-1) - expert_start
    ok = inb & (local >= 0) & (local < num_experts)
    return offs, inb, ok, local


@triton.jit(do_not_specialize=["num_pairs"])
def _hist_kernel(TopkIds, Hist, num_pairs, expert_start, num_experts,
                 CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, PDL: tl.constexpr):
    """Hist[c, e]: pairs of chunk c on local expert e (no atomics: one program a chunk)."""
    c = tl.program_id(0)
    if PDL:  # the ids come from the kernel before (pdl.py)
        gdc_wait()
        gdc_launch_dependents()
    _, _, ok, local = _chunk_pairs(TopkIds, c, num_pairs, expert_start, num_experts, CHUNK)
    e = tl.arange(0, BLOCK_E)
    hot = ((local[:, None] == e[None, :]) & ok[:, None]).to(tl.int32)  # [CHUNK, BLOCK_E]
    tl.store(Hist + c * BLOCK_E + e, tl.sum(hot, 0))


@triton.jit(do_not_specialize=["num_chunks"])
def _scan_kernel(Hist, Base, Counts, num_chunks, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
                 PDL: tl.constexpr):
    """One program an expert: the exclusive scan of its histogram column over the chunks (each
    chunk's first rank within the expert's group) and its pair count."""
    e = tl.program_id(0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    count = 0
    for c0 in range(0, num_chunks, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        h = tl.load(Hist + c * BLOCK_E + e, mask=c < num_chunks, other=0)
        tl.store(Base + c * BLOCK_E + e, tl.cumsum(h, 0) - h + count, mask=c < num_chunks)
        count += tl.sum(h, 0)
    tl.store(Counts + e, count)


@triton.jit(do_not_specialize=["num_pairs", "num_chunks", "num_blocks"])
def _place_kernel(TopkIds, Base, Counts, Ends, SortedIds, ExpertIds, NumPadded, Positions,
                  Tokens, num_pairs, expert_start, num_experts, top_k, num_chunks, num_blocks,
                  PADDED: tl.constexpr, TOKENS: tl.constexpr, BLOCK_M: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
                  PDL: tl.constexpr):
    """Each pair's place: its chunk's base plus the pairs of the same expert before it in the
    chunk, from the group starts that every program derives from the counts (a scan over
    the experts), each picked at the pair's expert by tl.gather (no [CHUNK, BLOCK_E] one-hot
    tile). Each program also writes its share of the experts' ends and, per block it owns,
    the block's expert and the block's padding slots."""
    c = tl.program_id(0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    e_all = tl.arange(0, BLOCK_E)
    e_ok = e_all < num_experts
    counts = tl.load(Counts + e_all, mask=e_ok, other=0)
    # the chunk's first rank in each group (the scan writes the columns of local experts)
    base = tl.load(Base + c * BLOCK_E + e_all, mask=e_ok, other=0)
    ends = tl.cumsum(counts, 0)
    offs, inb, ok, local = _chunk_pairs(TopkIds, c, num_pairs, expert_start, num_experts,
                                        CHUNK)
    e = tl.where(ok, local, 0)
    # rank in the expert's group: the chunk's base plus the pairs of the same expert earlier
    # in the chunk
    i = tl.arange(0, CHUNK)
    earlier = (local[:, None] == local[None, :]) & (i[None, :] < i[:, None])
    rank = tl.gather(base, e, 0) + tl.sum(earlier.to(tl.int32), 1)
    pos = tl.gather(ends - counts, e, 0) + rank
    tl.store(Positions + offs, tl.where(ok, pos, -1), mask=inb)
    if TOKENS:
        tl.store(Tokens + pos, offs // top_k, mask=ok)
    # this program's share of the per-expert and per-block outputs
    tl.store(Ends + e_all, ends, mask=(e_all % num_chunks == c) & e_ok)
    if PADDED:
        padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        pends = tl.cumsum(padded, 0)
        tl.store(SortedIds + tl.gather(pends - padded, e, 0) + rank, offs, mask=ok)
        if c == 0:
            tl.store(NumPadded, tl.sum(padded, 0))
        # block b belongs to the expert whose [start, end) holds b * BLOCK_M: the number of
        # experts ending at or before it (num_experts for the unused blocks past the end);
        # its slots from that expert's last pair on are padding
        fill = pends - padded + counts  # each expert's first padding slot
        pends = tl.where(e_ok, pends, 1 << 30)
        per = tl.cdiv(num_blocks, num_chunks)
        j = tl.arange(0, BLOCK_M)
        for b0 in range(c * per, tl.minimum((c + 1) * per, num_blocks), BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            b_ok = (b < num_blocks) & (b < (c + 1) * per)
            owner = tl.sum((pends[None, :] <= b[:, None] * BLOCK_M).to(tl.int32), 1)
            tl.store(ExpertIds + b, tl.minimum(owner, num_experts), mask=b_ok)
            used = b_ok & (owner < num_experts)
            slot = b[:, None] * BLOCK_M + j[None, :]
            first = tl.gather(fill, tl.minimum(owner, BLOCK_E - 1), 0)
            tl.store(SortedIds + slot, num_pairs + 0 * slot,
                     mask=used[:, None] & (slot >= first[:, None]))


def moe_align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                     expert_start: int = 0, tokens: bool = False,
                     chunk: int | None = None) -> MoeAlignment:
    """topk_ids [T, top_k] int32 -> MoeAlignment (see there and the module doc): the padded
    layout for block_m > 0, the compact one always, `tokens` when asked. Three launches: a
    one-hot count per chunk of pairs, a scan over the chunks per expert, a placement per
    chunk (no atomics, so the order within a group is the pairs' order, as in
    moe_align_ref). `chunk` (pairs per program, a power of 2) defaults to what keeps a
    chunk's one-hot tile (the histogram's) at 16k entries, at most 128: the placement's
    [chunk, chunk] compare spills at 256 (Triton 3.6, sm_90), as the 185 us of chunk 256
    against 38 us of 128 in a sweep at 128 experts, 4,096 tokens (H200) showed."""
    dev = topk_ids.device
    T, top_k = topk_ids.shape
    n = topk_ids.numel()
    block_e = triton.next_power_of_2(num_experts)
    chunk = chunk or max(16, min(128, 16384 // block_e))
    num_chunks = max(triton.cdiv(n, chunk), 1)
    i32 = dict(dtype=torch.int32, device=dev)
    hist = torch.empty((num_chunks, block_e), **i32)
    base = torch.empty_like(hist)
    counts = torch.empty((num_experts,), **i32)
    ends = torch.empty((num_experts,), **i32)
    positions = torch.empty((n,), **i32)
    toks = torch.zeros((n,), **i32) if tokens else None
    padded = block_m > 0
    if padded:
        max_padded = max_padded_pairs(n, num_experts, block_m)
        blocks = triton.cdiv(max_padded, block_m)
        sorted_ids = torch.empty((max_padded,), **i32)
        expert_ids = torch.empty((blocks,), **i32)
        num_padded = torch.empty((1,), **i32)
    else:
        blocks, sorted_ids, expert_ids, num_padded = 0, None, None, None
    flat = topk_ids.reshape(-1)
    warps = 8 if chunk * block_e >= 8192 else 4
    # PDL (pdl.py) only after a kernel: `tokens`' zeroing is a memset, not a kernel, and a
    # programmatic dependency on one is not documented
    launch = {"PDL": False} if tokens else pdl.launch_kwargs(dev)
    _hist_kernel[(num_chunks,)](flat, hist, n, expert_start, num_experts, CHUNK=chunk,
                                BLOCK_E=block_e, num_warps=warps, **launch)
    _scan_kernel[(num_experts,)](hist, base, counts, num_chunks, BLOCK_E=block_e,
                                 BLOCK_C=SCAN_BLOCK, num_warps=4, **launch)
    _place_kernel[(num_chunks,)](flat, base, counts, ends, sorted_ids, expert_ids, num_padded,
                                 positions, toks, n, expert_start, num_experts, top_k,
                                 num_chunks, blocks, PADDED=padded, TOKENS=tokens,
                                 BLOCK_M=max(block_m, 1), CHUNK=chunk, BLOCK_E=block_e,
                                 BLOCK_B=16, num_warps=warps, **launch)
    return MoeAlignment(sorted_ids, expert_ids, num_padded, positions, ends, toks)


def moe_align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                  expert_start: int = 0, tokens: bool = False) -> MoeAlignment:
    """The same layouts with a stable sort: within an expert, pairs in increasing order."""
    dev = topk_ids.device
    T, top_k = topk_ids.shape
    n = topk_ids.numel()
    local = topk_ids.reshape(-1).long() - expert_start
    ok = (local >= 0) & (local < num_experts)
    counts = torch.bincount(local[ok], minlength=num_experts)
    order = torch.argsort(torch.where(ok, local, num_experts), stable=True)[: int(ok.sum())]
    group_start = torch.cumsum(counts, 0) - counts
    e = local[order]
    rank = torch.arange(order.numel(), device=dev) - group_start[e]
    positions = torch.full((n,), -1, dtype=torch.int32, device=dev)
    positions[order] = (group_start[e] + rank).to(torch.int32)
    ends = torch.cumsum(counts, 0).to(torch.int32)
    toks = None
    if tokens:
        toks = torch.zeros((n,), dtype=torch.int32, device=dev)
        toks[: order.numel()] = (order // top_k).to(torch.int32)
    if block_m <= 0:
        return MoeAlignment(None, None, None, positions, ends, toks)
    padded = max_padded_pairs(n, num_experts, block_m)
    blocks = triton.cdiv(padded, block_m)
    sizes = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_ids = torch.full((padded,), n, dtype=torch.int32, device=dev)
    sorted_ids[starts[e] + rank] = order.to(torch.int32)
    ends_padded = torch.cumsum(sizes, 0)
    b = torch.arange(blocks, device=dev) * block_m
    expert_ids = (ends_padded[None, :] <= b[:, None]).sum(1).clamp(max=num_experts)
    num_padded = sizes.sum().reshape(1).to(torch.int32)
    return MoeAlignment(sorted_ids, expert_ids.to(torch.int32), num_padded, positions, ends,
                        toks)
