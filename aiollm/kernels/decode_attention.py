"""Decode attention: one new query token per request over its K/V in the token-level pool.

K/V are gathered through req_to_token, so a request's tokens may sit in any slots. One program
handles one (request, KV head, split): the GROUP query heads that share the KV head form the
rows of one tile, so each K/V vector is loaded once per group (GQA), not once per query head.

Three variants, picked by the split rule (decode_splits.py) from batch size and length:
- direct (1 split): enough (request, KV head) programs to fill the GPU; write o at once.
- split-K ("flash decoding"): few requests with long contexts would leave most SMs idle, so the
  context is cut into splits that run in parallel, each writing a partial output and its
  log-sum-exp. The last split of a (request, KV head) to finish merges them, in the same
  launch: each split counts itself in on an atomic counter after writing its partial (a
  second reduce launch would add its own launch and ramp to every layer of a batch-1 step,
  where the whole attention reads well under a megabyte). Only the splits a request's
  length reaches take part: a CUDA graph's launch is sized for the longest context, so a
  short one leaves most splits empty, and the merge reads the used ones in one pass (online
  rescaling, as within a split), most often in a single round of loads: at batch 1 the
  merge's dependent loads, not bytes, are the kernel's cost.
- long-only splits (a batch large enough for one split): a context over twice the batch's mean
  length is still split (up to `long_splits`), so one long conversation among short ones is
  not read by a single program per KV head while the rest of the GPU idles; the other
  contexts run whole and write their output directly, their empty splits return at once.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from aiollm.kernels import pdl
from aiollm.kernels.autotune import Config, bucket, get_config, time_config, untuned
from aiollm.kernels.decode_splits import MAX_SPLITS, long_splits, num_kv_splits
from aiollm.kernels.extend_attention import attention_out
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait

LOG2E = 1.4426950408889634
# the merging program reads up to this many partial-output elements (float32) at a time:
# MERGE_CHUNK = MERGE_ELEMENTS / (query heads of the group x head dim) splits, at most 16
MERGE_ELEMENTS = 4096
MAX_COUNTERS = 1 << 16  # (request, KV head) pairs of one split launch
# Split outputs merge in the split launch itself (else in a second, reduce launch)
MERGE_IN_KERNEL = True

# the shape classes of the tuned configs: batch size and longest context
BATCH_CLASSES = (1, 4, 16, 64, 256)
LENGTH_CLASSES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
# Default when nothing is tuned; CPU_CONFIG uses small blocks so the interpreter runs quickly
# and short test sequences still span several blocks.
DEFAULT_CONFIG: Config = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "split_tokens": 64}
CPU_CONFIG: Config = {"BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "split_tokens": 32}
CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "num_warps": w, "num_stages": s, "split_tokens": st}
    for bn, w, s in ((32, 2, 2), (32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 4, 2),
                     (128, 8, 2))
    # 32: one block a split at batch 1 (each split's K/V load precedes the dependent-launch
    # wait; bench/README.md, "Decode")
    for st in (32, 64, 256, 1024)
]


@triton.jit
def _load_kv(r2t_row, k_base, v_base, offs_n, nmask, d, dmask, stride_ks, stride_vs,
             FULL_D: tl.constexpr):
    """K and V [BLOCK_N, BLOCK_D] of a request's positions offs_n (masked: zeros)."""
    slots = tl.load(r2t_row + offs_n, mask=nmask, other=0).to(tl.int64)
    if FULL_D:
        kv_mask = nmask[:, None]
    else:
        kv_mask = nmask[:, None] & dmask[None, :]
    k = tl.load(k_base + slots[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + slots[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION: tl.constexpr):
    """One block of keys into the running max m_i, sum l_i and output acc (online softmax).
    A block with no valid key (a split without older tokens) leaves them as they are."""
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    qk = tl.where(nmask[None, :], qk, float("-inf"))
    # The softmax scale is applied inside max and exp2 so that it fuses into one FMA.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * sm_scale_log2)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(qk * sm_scale_log2 - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attend_context(q, k, v, nmask, r2t_row, k_base, v_base, start, end, d, dmask,
                    stride_ks, stride_vs, sm_scale_log2, BLOCK_H: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, FULL_D: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Online softmax of q [BLOCK_H, BLOCK_D] over positions [start, end) of a request:
    the first block k, v (its mask nmask), already loaded by the caller (before its
    dependent-launch wait), then the rest BLOCK_N at a time. Returns (m_i, l_i, acc)."""
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    m_i, l_i, acc = _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION)
    for start_n in range(start + BLOCK_N, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        k, v = _load_kv(r2t_row, k_base, v_base, offs_n, nmask, d, dmask, stride_ks,
                        stride_vs, FULL_D)
        m_i, l_i, acc = _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION)
    return m_i, l_i, acc


# The split count and the strides that follow from it are runtime values: specialising on
# them (Triton compiles a variant for 1, for multiples of 16 and for the rest) would compile
# one more variant per split count a batch size or context class picks.
@triton.jit(do_not_specialize=["stride_lb", "stride_lh", "num_splits"])
def _decode_kernel(
    Q, KCache, VCache, ReqToToken, ReqRows, SeqLens, Out, Lse, Merged, Counters,
    sm_scale_log2,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh, stride_mb, stride_mh,
    num_splits,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, MERGE: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr, GROUP_P2: tl.constexpr, MERGE_CHUNK: tl.constexpr,
    LONG_ONLY: tl.constexpr = False,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # Only q and the newest token's K/V come from the kernel before (the qkv projection);
    # the request's length, its slots and the older tokens' K/V were written by earlier
    # kernels, which had completed before the kernel before could let this one start
    # (pdl.py), so they are loaded first: the first block's reads overlap the qkv kernel's
    # tail instead of following it.
    seq_len = tl.load(SeqLens + b)
    row = tl.load(ReqRows + b).to(tl.int64)
    # Each request splits its own length, so a launch sized for a long max_seq_len (as a
    # CUDA graph must be) still spreads a short context over all its splits. Splits cover
    # whole blocks so that only a split's last block needs masking.
    split_len = tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N), 1) * BLOCK_N
    if LONG_ONLY:
        # split only contexts longer than twice the batch's mean, into pieces of at least
        # that length: the others run whole, as in the one-split kernel
        split_len = tl.maximum(split_len, _long_split_len(SeqLens, tl.num_programs(0), BLOCK_N))
    used_splits = tl.cdiv(seq_len, split_len)  # the rest are empty
    if LONG_ONLY:
        if split >= used_splits:
            return
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    newest = seq_len - 1
    end_old = tl.minimum(end, newest)  # [start, end_old): tokens of earlier steps

    g = tl.arange(0, BLOCK_H)
    heads = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    hmask = g < GROUP
    dmask = d < HEAD_DIM
    k_base = KCache + kvh * stride_kh
    v_base = VCache + kvh * stride_vh
    offs_n = start + tl.arange(0, BLOCK_N)
    nmask = offs_n < end_old
    k, v = _load_kv(ReqToToken + row * stride_r2t, k_base, v_base, offs_n, nmask, d, dmask,
                    stride_ks, stride_vs, BLOCK_D == HEAD_DIM)
    slot_new = tl.load(ReqToToken + row * stride_r2t + newest).to(tl.int64)
    if PDL:  # q comes from the kernel before (pdl.py); the next may start its own loads
        gdc_wait()
        gdc_launch_dependents()
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)
    # every split reads the newest token (a few hundred bytes); the one holding it counts it
    k_new = tl.load(k_base + slot_new * stride_ks + d, mask=dmask, other=0.0)
    v_new = tl.load(v_base + slot_new * stride_vs + d, mask=dmask, other=0.0)

    m_i, l_i, acc = _attend_context(
        q, k, v, nmask, ReqToToken + row * stride_r2t, k_base, v_base, start, end_old, d,
        dmask, stride_ks, stride_vs, sm_scale_log2, BLOCK_H, BLOCK_D, BLOCK_N,
        BLOCK_D == HEAD_DIM, PRECISION)
    # the newest token: one score per query head, in float32
    s = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * sm_scale_log2
    s = tl.where((newest >= start) & (newest < end), s, float("-inf"))
    m_new = tl.maximum(m_i, s)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use)
    l_i = l_i * alpha + p
    acc = acc * alpha[:, None] + p[:, None] * v_new.to(tl.float32)[None, :]
    m_i = m_new

    out_mask = hmask[:, None] & dmask[None, :]
    out_ptrs = Out + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + d[None, :]
    if LONG_ONLY and used_splits == 1:  # a context run whole: no partial, no merge
        tl.store(Merged + b * stride_mb + heads[:, None] * stride_mh + d[None, :],
                 (acc / l_i[:, None]).to(Merged.dtype.element_ty), mask=out_mask)
    elif SPLIT:
        # A split past the end of a shorter request is empty: weight 0 in the reduce.
        nonempty = l_i > 0
        acc = acc / tl.where(nonempty, l_i, 1.0)[:, None]
        tl.store(out_ptrs, acc, mask=out_mask)
        lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
        tl.store(Lse + b * stride_lb + heads * stride_lh + split, lse, mask=hmask)
        if MERGE:
            # Only the used splits count in. Every thread's partial is written before this
            # program counts itself in (barrier, then a release); the program that counts
            # last (acquire) merges.
            if split < used_splits:
                tl.debug_barrier()
                counter = Counters + b * tl.num_programs(1) + kvh
                done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if done == used_splits - 1:
                    tl.atomic_xchg(counter, 0)  # ready for the next launch
                    _merge_splits(Out, Lse, Merged, b, kvh, d, dmask, used_splits,
                                  stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                                  stride_mb, stride_mh, GROUP, GROUP_P2, BLOCK_D, MERGE_CHUNK)
    else:
        tl.store(out_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=out_mask)


@triton.jit
def _long_split_len(SeqLens, batch, BLOCK_N: tl.constexpr):
    """Twice the mean of the batch's `batch` context lengths, rounded up to whole blocks:
    the shortest split of a long-only launch (every program reads the lengths, under a
    kilobyte for a serving batch)."""
    offs = tl.arange(0, 256)
    total = tl.zeros([256], tl.int64)
    for b0 in range(0, batch, 256):
        total += tl.load(SeqLens + b0 + offs, mask=b0 + offs < batch, other=0).to(tl.int64)
    twice_mean = tl.cdiv(2 * tl.sum(total), batch)
    return (tl.maximum(tl.cdiv(twice_mean, BLOCK_N), 1) * BLOCK_N).to(tl.int32)


@triton.jit
def _merge_splits(Partial, Lse, Out, b, kvh, d, dmask, num_splits,
                  stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
                  GROUP: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_D: tl.constexpr,
                  CHUNK: tl.constexpr):
    """Out[b, the GROUP query heads of KV head kvh] = the first num_splits partial outputs
    weighted by their softmax mass (exp2 of their log-sum-exp), in one pass of CHUNK splits
    at a time with the running maximum rescaled as it grows (the online softmax of Milakov &
    Gimelshein 2018, over splits). Partials written by other programs are read past L1
    (.cg)."""
    g = tl.arange(0, GROUP_P2)
    heads = kvh * GROUP + g
    hmask = g < GROUP
    s = tl.arange(0, CHUNK)
    lse_ptrs = Lse + b * stride_lb + heads[:, None] * stride_lh + s[None, :]
    part_ptrs = (Partial + b * stride_pb + heads[:, None, None] * stride_ph
                 + s[None, :, None] * stride_ps + d[None, None, :])
    m = tl.full([GROUP_P2], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, BLOCK_D], tl.float32)
    for s0 in range(0, num_splits, CHUNK):
        ok = hmask[:, None] & (s[None, :] < num_splits - s0)
        lse = tl.load(lse_ptrs + s0, mask=ok, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(part_ptrs + s0 * stride_ps, mask=ok[:, :, None] & dmask[None, None, :],
                       other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lse, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing yet: weights 0
        alpha = tl.exp2(m - m_use)
        w = tl.exp2(lse - m_use[:, None])  # [GROUP_P2, CHUNK]; empty splits weigh 0
        total = total * alpha + tl.sum(w, 1)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * part, 1)
        m = m_new
    o = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
             o.to(Out.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["num_splits", "stride_lb", "stride_lh"])
def _decode_reduce_kernel(
    Partial, Lse, Out, num_splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    smask = s < num_splits
    lse = tl.load(Lse + b * stride_lb + h * stride_lh + s, mask=smask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    w = w / tl.sum(w, 0)
    part = tl.load(Partial + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                   mask=smask[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
    o = tl.sum(w[:, None] * part, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + d, o.to(Out.dtype.element_ty), mask=d < HEAD_DIM)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(cache: dict[torch.device, torch.Tensor], device: torch.device, size: int,
                     kernel: str) -> torch.Tensor:
    """int32 [size] counters on `device` that a kernel's programs count themselves in on
    (the last one resets its counter, so they are zero between launches): allocated once per
    `cache` and device and kept, since captured CUDA graphs hold their address.
    AssertionError when first asked for during a capture."""
    c = cache.get(device)
    if c is None:
        assert not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()), \
            f"{kernel}'s counters must be allocated before a CUDA graph capture"
        c = cache[device] = torch.zeros(size, dtype=torch.int32, device=device)
    return c


def _merge_counters(device: torch.device) -> torch.Tensor:
    """The split launches' arrival counters on `device` (the merging program resets its own)."""
    return arrival_counters(_counters, device, MAX_COUNTERS, "decode attention")


def _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
            out, cfg: Config, num_splits: int | None, merge_in_kernel: bool = True,
            long_only: int | None = None) -> None:
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    group = HQ // HKV
    block_n = cfg["BLOCK_N"]
    if num_splits is None:
        num_sms = _num_sms(q.device) if q.is_cuda else 4
        num_splits = num_kv_splits(B, HKV, max_seq_len, num_sms, cfg["split_tokens"])
        if num_splits == 1 and long_only is None:
            long_only = long_splits(max_seq_len)
    # only in place of one split; it merges in its own launch (a reduce launch would read
    # the unused splits)
    if (num_splits == 1 and long_only is not None and long_only > 1 and merge_in_kernel
            and B * HKV <= MAX_COUNTERS):
        num_splits = long_only
    else:
        long_only = None
    group_p2, block_d = triton.next_power_of_2(group), triton.next_power_of_2(D)
    common = dict(
        GROUP=group, BLOCK_H=max(16, group_p2), HEAD_DIM=D, BLOCK_D=block_d, BLOCK_N=block_n,
        GROUP_P2=group_p2, MERGE_CHUNK=max(1, min(16, MERGE_ELEMENTS // (group_p2 * block_d))),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch_kwargs(q.device),
    )
    args = (q, k_cache, v_cache, req_to_token, req_rows, seq_lens)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
               v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0))
    scale = sm_scale * LOG2E
    if num_splits == 1:
        _decode_kernel[(B, HKV, 1)](
            *args, out, out, out, out, scale, *strides, out.stride(0), out.stride(1), 0, 0, 0,
            0, 0, 1, SPLIT=False, MERGE=False, **common)
        return
    partial = torch.empty((B, HQ, num_splits, D), dtype=torch.float32, device=q.device)
    lse = torch.empty((B, HQ, num_splits), dtype=torch.float32, device=q.device)
    merge = merge_in_kernel and B * HKV <= MAX_COUNTERS
    counters = _merge_counters(q.device) if merge else lse
    _decode_kernel[(B, HKV, num_splits)](
        *args, partial, lse, out, counters, scale, *strides,
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), num_splits, SPLIT=True, MERGE=merge,
        LONG_ONLY=bool(long_only), **common)
    if merge:
        return
    _decode_reduce_kernel[(B, HQ)](
        partial, lse, out, num_splits,
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D),
        # one block size for every split count up to MAX_SPLITS: one compiled variant
        BLOCK_S=max(MAX_SPLITS, triton.next_power_of_2(num_splits)), num_warps=4,
        **pdl.launch_kwargs(q.device))


def _config(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
            device: torch.device, max_seq_len: int, bench) -> Config:
    """The tuned config of this shape class (autotune.get_config; `bench` times a candidate)."""
    key = (f"hq{num_q_heads}-hkv{num_kv_heads}-d{head_dim}-{str(dtype).removeprefix('torch.')}"
           f"-b{bucket(batch, BATCH_CLASSES)}-n{bucket(max_seq_len, LENGTH_CLASSES)}")
    return get_config("decode_attention", key, device, DEFAULT_CONFIG, CANDIDATES, bench,
                      classes={"b": BATCH_CLASSES, "n": LENGTH_CLASSES})


def launch_variant(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                   dtype: torch.dtype, device: torch.device, max_seq_len: int) -> tuple:
    """What picks the compiled kernel of a launch of `batch` requests whose longest context is
    `max_seq_len` tokens: its config's compile-time fields, whether the contexts are split (the
    split count itself is a runtime value), whether the splits merge in the same launch and
    whether only long contexts are split (long_splits).
    Within one shape class (one config) the split count falls with the batch and grows with
    the context (num_kv_splits), so a class can launch both the split and the unsplit kernel;
    the warm-up (aiollm/engine/warm_up.py) compiles every variant a class can reach. Looks the
    config up without tuning (autotune.untuned)."""
    with untuned():
        cfg = _config(batch, num_q_heads, num_kv_heads, head_dim, dtype, device, max_seq_len,
                      None)
    if device.type != "cuda":
        cfg = CPU_CONFIG  # as decode_attention_triton launches there
    num_sms = _num_sms(device) if device.type == "cuda" else 4
    split = num_kv_splits(batch, num_kv_heads, max_seq_len, num_sms, cfg["split_tokens"]) > 1
    fits = MERGE_IN_KERNEL and batch * num_kv_heads <= MAX_COUNTERS
    long_only = not split and long_splits(max_seq_len) > 1 and fits
    merge = (split or long_only) and fits
    return (tuple(sorted((k, v) for k, v in cfg.items() if k != "split_tokens")),
            split or long_only, merge, long_only)


def decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    *, config: Config | None = None, num_splits: int | None = None,
    merge_in_kernel: bool | None = None, out: torch.Tensor | None = None,
    long_only: int | None = None,
) -> torch.Tensor:
    """`config` and `num_splits` override the tuned config and the split rule,
    `merge_in_kernel` (default MERGE_IN_KERNEL) where split outputs merge, and `long_only`
    the splits a launch of one split (by the rule or num_splits=1) offers to long contexts
    (long_splits) (tests, bench)."""
    if merge_in_kernel is None:
        merge_in_kernel = MERGE_IN_KERNEL
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    assert k_cache.shape[2] == D and v_cache.shape == k_cache.shape and HQ % HKV == 0
    assert req_rows.shape == (B,) and seq_lens.shape == (B,)
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert req_to_token.stride(1) == 1 and req_to_token.dtype == torch.int32
    out = attention_out(q, out)
    if B == 0:
        return out
    if config is None and not q.is_cuda:
        config = CPU_CONFIG
    if config is None:
        def bench(cfg: Config) -> float:
            scratch = torch.empty_like(q)
            return time_config(lambda: _launch(q, k_cache, v_cache, req_to_token, req_rows,
                                               seq_lens, sm_scale, max_seq_len, scratch, cfg,
                                               num_splits, merge_in_kernel, long_only))

        config = _config(B, HQ, HKV, D, q.dtype, q.device, max_seq_len, bench)
    _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
            out, config, num_splits, merge_in_kernel, long_only)
    return out


def decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    *, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Padded to the longest context in the batch and masked; computed in fp32."""
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    L = int(seq_lens.max()) if B else 0
    pos = torch.arange(L, device=q.device)
    valid = pos[None, :] < seq_lens[:, None].long()                       # [B, L]
    slots = req_to_token[req_rows.long()][:, :L].long()
    slots = torch.where(valid, slots, torch.zeros_like(slots))
    k = k_cache[slots].float().permute(0, 2, 1, 3)                         # [B, HKV, L, D]
    v = v_cache[slots].float().permute(0, 2, 1, 3)
    qg = q.float().view(B, HKV, HQ // HKV, D)
    scores = (qg @ k.transpose(-1, -2)) * sm_scale                         # [B, HKV, G, L]
    scores = scores.masked_fill(~valid[:, None, None, :], -math.inf)
    o = torch.softmax(scores, dim=-1) @ v                                  # [B, HKV, G, D]
    return attention_out(q, out).copy_(o.reshape(B, HQ, D))
