"""The decode attention kernel: one new query token per request over its K/V in the
token-level pool (the launch, its config and the reference are in decode_attention.py).

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

With a sliding window of W tokens (SLIDING, a compile-time branch: the unwindowed kernel is
unchanged) the query at position seq_len - 1 attends to positions [seq_len - W, seq_len) only,
as transformers' sliding-window mask keeps them (decode_attention.py): every variant splits
that range instead of [0, seq_len), so the blocks before it are never read.

With attention logit soft-capping (Gemma 2: each score s = q.k x sm_scale becomes
cap x tanh(s / cap) before the mask and softmax, as transformers' Gemma2 eager attention
computes it) the launch passes CAP_IN = sm_scale / cap and CAP_OUT = cap x log2(e) as
compile-time constants (0.0: no cap, the kernel unchanged) and sm_scale_log2 = 1: the capped
score comes out in the exp2 domain the online softmax works in (_softcap).

The online-softmax pieces (_load_kv, _attend, _attend_context) are shared with the fused
attention + o_proj kernel (attention_oproj.py). _decode_reduce_kernel is the second, reduce
launch used where the splits do not merge in the split launch itself.
"""

from __future__ import annotations

import triton
import triton.language as tl

from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait


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
def _softcap(x, CAP_IN: tl.constexpr, CAP_OUT: tl.constexpr):
    """CAP_OUT x tanh(CAP_IN x x), elementwise in float32 (scores q.k -> capped scores in
    the exp2 domain); tanh from exp2, odd by construction and saturating at +-1 without
    overflow: (1 - e) / (1 + e) with e = exp(-2|y|), signed."""
    y = x * CAP_IN
    e = tl.exp2(-2.8853900817779268 * tl.abs(y))  # exp(-2|y|): 2 log2(e) = 2.885...
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0, -t, t) * CAP_OUT


@triton.jit
def _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION: tl.constexpr,
            CAP_IN: tl.constexpr = 0.0, CAP_OUT: tl.constexpr = 0.0):
    """One block of keys into the running max m_i, sum l_i and output acc (online softmax).
    A block with no valid key (a split without older tokens) leaves them as they are.
    CAP_OUT != 0: the scores soft-capped first (_softcap; sm_scale_log2 is then 1)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if CAP_OUT != 0.0:
        qk = _softcap(qk, CAP_IN, CAP_OUT)
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
                    PRECISION: tl.constexpr, CAP_IN: tl.constexpr = 0.0,
                    CAP_OUT: tl.constexpr = 0.0):
    """Online softmax of q [BLOCK_H, BLOCK_D] over positions [start, end) of a request:
    the first block k, v (its mask nmask), already loaded by the caller (before its
    dependent-launch wait), then the rest BLOCK_N at a time. Returns (m_i, l_i, acc)."""
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    m_i, l_i, acc = _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION,
                            CAP_IN, CAP_OUT)
    for start_n in range(start + BLOCK_N, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        k, v = _load_kv(r2t_row, k_base, v_base, offs_n, nmask, d, dmask, stride_ks,
                        stride_vs, FULL_D)
        m_i, l_i, acc = _attend(q, k, v, nmask, m_i, l_i, acc, sm_scale_log2, PRECISION,
                                CAP_IN, CAP_OUT)
    return m_i, l_i, acc


# The split count and the strides that follow from it are runtime values: specialising on
# them (Triton compiles a variant for 1, for multiples of 16 and for the rest) would compile
# one more variant per split count a batch size or context class picks.
@triton.jit(do_not_specialize=["stride_lb", "stride_lh", "num_splits", "window"])
def _decode_kernel(
    Q, KCache, VCache, ReqToToken, ReqRows, SeqLens, Out, Lse, Merged, Counters,
    sm_scale_log2,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh, stride_mb, stride_mh,
    num_splits, window,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, MERGE: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr, GROUP_P2: tl.constexpr, MERGE_CHUNK: tl.constexpr,
    LONG_ONLY: tl.constexpr = False, SLIDING: tl.constexpr = False,
    CAP_IN: tl.constexpr = 0.0, CAP_OUT: tl.constexpr = 0.0,
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
    if SLIDING:  # the positions [lo, seq_len) in the window
        lo = tl.maximum(seq_len - window, 0)
        ctx_len = seq_len - lo
    else:
        lo = 0
        ctx_len = seq_len
    split_len = tl.maximum(tl.cdiv(tl.cdiv(ctx_len, num_splits), BLOCK_N), 1) * BLOCK_N
    if LONG_ONLY:
        # split only contexts longer than twice the batch's mean, into pieces of at least
        # that length: the others run whole, as in the one-split kernel
        split_len = tl.maximum(split_len, _long_split_len(SeqLens, tl.num_programs(0), BLOCK_N))
    used_splits = tl.cdiv(ctx_len, split_len)  # the rest are empty
    if LONG_ONLY:
        if split >= used_splits:
            return
    start = lo + split * split_len
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
        BLOCK_D == HEAD_DIM, PRECISION, CAP_IN, CAP_OUT)
    # the newest token: one score per query head, in float32
    s = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1)
    if CAP_OUT != 0.0:
        s = _softcap(s, CAP_IN, CAP_OUT)
    s = s * sm_scale_log2
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
