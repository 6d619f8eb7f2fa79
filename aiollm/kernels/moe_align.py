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

max_padded depends only on (T, top_k, experts, BLOCK_M), never on the routing, so nothing syncs
with the host and a decode step stays capturable in a CUDA graph. Only experts in
[expert_start, expert_start + num_experts) are aligned (the local ones, for a later expert-
parallel split); pairs routed elsewhere are left out. Within an expert's group the order of the
pairs is not fixed on the GPU (atomics); every output row is computed on its own, so the
results do not depend on it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def max_padded_pairs(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded length: each expert pads by < block_m, and no block holds
    fewer than one pair."""
    return min(num_pairs + num_experts * (block_m - 1), num_pairs * block_m)


# -- routing ------------------------------------------------------------------------------------

@triton.jit
def _route_kernel(Logits, Weights, Ids, E, stride_l, TOP_K: tl.constexpr,
                  RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    x = tl.load(Logits + t * stride_l + e, mask=e < E, other=-float("inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, 0))
    p = p / tl.sum(p, 0)
    p = tl.where(e < E, p, -1.0)
    kk = tl.arange(0, BLOCK_K)
    w = tl.zeros([BLOCK_K], dtype=tl.float32)
    ids = tl.zeros([BLOCK_K], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(p, 0)
        arg = tl.min(tl.where(p == best, e, BLOCK_E), 0)  # the lowest index among ties
        w = tl.where(kk == j, best, w)
        ids = tl.where(kk == j, arg, ids)
        p = tl.where(e == arg, -2.0, p)
    if RENORMALIZE:
        w = w / tl.sum(w, 0)
    tl.store(Weights + t * TOP_K + kk, w, mask=kk < TOP_K)
    tl.store(Ids + t * TOP_K + kk, ids, mask=kk < TOP_K)


def moe_route_triton(logits: torch.Tensor, top_k: int, renormalize: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] (any float dtype) -> (weights [T, top_k] float32, ids [T, top_k] int32)."""
    assert logits.dim() == 2 and logits.stride(1) == 1
    T, E = logits.shape
    weights = torch.empty((T, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=logits.device)
    if T:
        _route_kernel[(T,)](logits, weights, ids, E, logits.stride(0), TOP_K=top_k,
                            RENORMALIZE=renormalize, BLOCK_E=triton.next_power_of_2(E),
                            BLOCK_K=triton.next_power_of_2(top_k), num_warps=4)
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

@triton.jit
def _count_kernel(TopkIds, Counts, Ranks, num_pairs, expert_start, num_experts,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < num_pairs
    local = tl.load(TopkIds + offs, mask=inb, other=-1) - expert_start
    ok = inb & (local >= 0) & (local < num_experts)
    # the counter's old value is the pair's rank within its expert's group
    rank = tl.atomic_add(Counts + local, 1, mask=ok)
    tl.store(Ranks + offs, rank, mask=ok)


@triton.jit
def _offsets_kernel(Counts, Starts, ExpertIds, NumPadded, num_experts, num_blocks,
                    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    counts = tl.load(Counts + e, mask=e < num_experts, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    tl.store(Starts + e, ends - padded, mask=e < num_experts)
    tl.store(NumPadded, tl.sum(padded, 0))
    # block b belongs to the expert whose [start, end) holds b * BLOCK_M: the number of experts
    # ending at or before it (num_experts for the unused blocks past the end)
    ends = tl.where(e < num_experts, ends, 1 << 30)
    for b0 in range(0, num_blocks, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        owner = tl.sum((ends[None, :] <= b[:, None] * BLOCK_M).to(tl.int32), 1)
        tl.store(ExpertIds + b, tl.minimum(owner, num_experts), mask=b < num_blocks)


@triton.jit
def _scatter_kernel(TopkIds, Ranks, Starts, SortedIds, num_pairs, expert_start, num_experts,
                    BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < num_pairs
    local = tl.load(TopkIds + offs, mask=inb, other=-1) - expert_start
    ok = inb & (local >= 0) & (local < num_experts)
    rank = tl.load(Ranks + offs, mask=ok, other=0)
    start = tl.load(Starts + local, mask=ok, other=0)
    tl.store(SortedIds + start + rank, offs, mask=ok)


def moe_align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                     expert_start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """topk_ids [T, top_k] int32 -> (sorted_ids, expert_ids, num_padded); see the module doc."""
    dev = topk_ids.device
    n = topk_ids.numel()
    padded = max_padded_pairs(n, num_experts, block_m)
    blocks = triton.cdiv(padded, block_m)
    sorted_ids = torch.full((padded,), n, dtype=torch.int32, device=dev)
    expert_ids = torch.empty((blocks,), dtype=torch.int32, device=dev)
    num_padded = torch.empty((1,), dtype=torch.int32, device=dev)
    counts = torch.zeros((num_experts,), dtype=torch.int32, device=dev)
    ranks = torch.empty((n,), dtype=torch.int32, device=dev)
    starts = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    flat = topk_ids.reshape(-1)
    grid = (triton.cdiv(max(n, 1), 1024),)
    _count_kernel[grid](flat, counts, ranks, n, expert_start, num_experts, BLOCK=1024)
    _offsets_kernel[(1,)](counts, starts, expert_ids, num_padded, num_experts, blocks,
                          BLOCK_M=block_m, BLOCK_E=triton.next_power_of_2(num_experts),
                          BLOCK_B=64, num_warps=4)
    _scatter_kernel[grid](flat, ranks, starts, sorted_ids, n, expert_start, num_experts,
                          BLOCK=1024)
    return sorted_ids, expert_ids, num_padded


def moe_align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                  expert_start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same layout with a stable sort: within an expert, pairs in increasing order."""
    dev = topk_ids.device
    n = topk_ids.numel()
    padded = max_padded_pairs(n, num_experts, block_m)
    blocks = triton.cdiv(padded, block_m)
    local = topk_ids.reshape(-1).long() - expert_start
    ok = (local >= 0) & (local < num_experts)
    counts = torch.bincount(local[ok], minlength=num_experts)
    sizes = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(sizes, 0) - sizes
    order = torch.argsort(torch.where(ok, local, num_experts), stable=True)[: int(ok.sum())]
    group_start = torch.cumsum(counts, 0) - counts
    e = local[order]
    pos = starts[e] + torch.arange(order.numel(), device=dev) - group_start[e]
    sorted_ids = torch.full((padded,), n, dtype=torch.int32, device=dev)
    sorted_ids[pos] = order.to(torch.int32)
    ends = torch.cumsum(sizes, 0)
    b = torch.arange(blocks, device=dev) * block_m
    expert_ids = (ends[None, :] <= b[:, None]).sum(1).clamp(max=num_experts).to(torch.int32)
    num_padded = sizes.sum().reshape(1).to(torch.int32)
    return sorted_ids, expert_ids, num_padded
