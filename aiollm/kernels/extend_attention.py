"""Extend (prefill) attention: causal, variable length, no padding, over prefix + new tokens.

Query i of request b sits at position p = prefix_lens[b] + i and attends to the request's keys
0 .. p, all gathered from the KV pool through req_to_token (the new tokens' K/V are stored
before this runs); with a sliding window of W tokens only to the keys in (p - W, p], the W
newest including its own, as transformers' sliding_window_causal_mask_function masks them
(masking_utils: kv_idx > q_idx - sliding_window, and causal). The same kernel serves a plain
prefill (prefix 0), a chunk of a chunked prefill and a prefix-cache hit.

One program owns BLOCK_M queries of one (request, query head) and runs an online softmax
(flash attention) over key blocks. Keys below prefix + m0 + 1 are visible to every query of the
tile, so that stretch runs without masks; only the last few blocks, on the diagonal, are masked.
The grid puts the query-block index slowest and walks it backwards, so the long programs (late
queries see the most keys) start first and the short ones fill the tail. With a window
(SLIDING, a compile-time branch: the unwindowed kernel is unchanged) a tile starts at the block
of its first query's oldest key, skipping the blocks before it; the blocks its last query's
window cuts run masked, those every query of the tile sees whole run without masks.
With attention logit soft-capping (Gemma 2) each score is capped before the mask, as
decode_attention_kernel.py caps it (CAP_IN, CAP_OUT: compile-time constants of softcap_args,
0.0 for none: the uncapped kernel is unchanged).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from aiollm.kernels.autotune import Config, bucket, get_config, time_config
from aiollm.kernels.decode_attention_configs import WIDE_ROW_BYTES
from aiollm.kernels.decode_attention_kernel import _softcap

LOG2E = 1.4426950408889634

# the shape classes of the tuned configs: the longest new-token run in the batch
LENGTH_CLASSES = (64, 256, 1024, 4096)

# LAZY (skip the rescale of acc while the running max barely moves) is a tuning choice, not a
# default: on an H100 it won 6% for 8-warp 128x128 tiles but lost 3% for the best (4-warp) ones.
DEFAULT_CONFIG: Config = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "LAZY": 0}
CPU_CONFIG: Config = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "LAZY": 1}
# the default for K/V rows past WIDE_ROW_BYTES (head_dim 256 in float32), as decode attention's
# (decode_attention_configs.py says why)
WIDE_ROW_CONFIG: Config = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1,
                           "LAZY": 0}
CANDIDATES: list[Config] = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "LAZY": lazy}
    for bm, bn, w, s in (
        (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3),
        (128, 128, 8, 2), (128, 128, 8, 3), (256, 64, 8, 3),
    )
    for lazy in (0, 1)
]


def softcap_args(sm_scale: float, softcap: float | None) -> tuple[float, float, float]:
    """(sm_scale_log2, CAP_IN, CAP_OUT) for an attention kernel's launch: without a cap
    (None or 0) sm_scale x log2(e) and no cap; with one, 1 and the constants of the capped
    score in the exp2 domain, cap x log2(e) x tanh(q.k x sm_scale / cap) (_softcap).
    ValueError for a cap that is not a positive finite number."""
    if not softcap:
        return sm_scale * LOG2E, 0.0, 0.0
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"attention softcap must be a positive number, got {softcap}")
    return 1.0, sm_scale / softcap, softcap * LOG2E


def capped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The references' soft-capping: cap x tanh(scores / cap) (scores already scaled), as
    transformers' Gemma2 eager attention computes it; scores as they are without a cap."""
    return softcap * torch.tanh(scores / softcap) if softcap else scores


@triton.jit
def _extend_step(
    q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d, sm_scale_log2,
    stride_ks, stride_vs,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, LAZY_RESCALE: tl.constexpr, PRECISION: tl.constexpr,
    SLIDING: tl.constexpr = False, window=0, CAP_IN: tl.constexpr = 0.0,
    CAP_OUT: tl.constexpr = 0.0,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    nmask = offs_n < kv_end
    if MASKED:
        slots = tl.load(r2t_row + offs_n, mask=nmask, other=0).to(tl.int64)
    else:
        slots = tl.load(r2t_row + offs_n).to(tl.int64)
    k_ptrs = k_base + slots[:, None] * stride_ks + d[None, :]
    v_ptrs = v_base + slots[:, None] * stride_vs + d[None, :]
    if BLOCK_D == HEAD_DIM:
        k = tl.load(k_ptrs)
    else:
        k = tl.load(k_ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if CAP_OUT != 0.0:  # before the mask, as transformers' Gemma2 caps the scores
        qk = _softcap(qk, CAP_IN, CAP_OUT)
    if MASKED:
        visible = (offs_n[None, :] <= q_pos[:, None]) & nmask[None, :]
        if SLIDING:
            visible = visible & (offs_n[None, :] > q_pos[:, None] - window)
        qk = tl.where(visible, qk, float("-inf"))
    # The softmax scale is applied inside max and exp2 so that it fuses into one FMA.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * sm_scale_log2)
    if SLIDING:
        # A window can hide a whole block from a query that has seen no key yet (m_i and
        # m_new -inf): its weights must stay 0, not exp2(-inf + inf) = nan. Never lazy: a
        # row's running max may start late.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha
        m_i = m_new
        p = tl.exp2(qk * sm_scale_log2 - m_use[:, None])
    elif LAZY_RESCALE:
        # Keep the running max (and skip the BLOCK_M x D multiply of acc) until some row's
        # max grows by more than 2^8: p then stays <= 256, harmless for fp32 sums and bf16 p.
        if tl.max(m_new - m_i, 0) > 8.0:
            alpha = tl.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
    else:
        alpha = tl.exp2(m_i - m_new)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha
        m_i = m_new
    if not SLIDING:
        p = tl.exp2(qk * sm_scale_log2 - m_i[:, None])
    l_i = l_i + tl.sum(p, 1)
    if BLOCK_D == HEAD_DIM:
        v = tl.load(v_ptrs)
    else:
        v = tl.load(v_ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["window"])
def _extend_kernel(
    Q, KCache, VCache, Out, ReqToToken, ReqRows, PrefixLens, ExtendLens, QStartLoc,
    sm_scale_log2,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh,
    stride_r2t, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LAZY_RESCALE: tl.constexpr,
    PRECISION: tl.constexpr, SLIDING: tl.constexpr = False, CAP_IN: tl.constexpr = 0.0,
    CAP_OUT: tl.constexpr = 0.0,
):
    h = tl.program_id(0)
    b = tl.program_id(1)
    m0 = (tl.num_programs(2) - 1 - tl.program_id(2)) * BLOCK_M
    ext = tl.load(ExtendLens + b)
    if m0 >= ext:
        return
    prefix = tl.load(PrefixLens + b)
    q_start = tl.load(QStartLoc + b).to(tl.int64)
    row = tl.load(ReqRows + b).to(tl.int64)
    kvh = h // GROUP

    offs_m = m0 + tl.arange(0, BLOCK_M)
    mmask = offs_m < ext
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    q_pos = prefix + offs_m

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = KCache + kvh * stride_kh
    v_base = VCache + kvh * stride_vh
    r2t_row = ReqToToken + row * stride_r2t
    kv_end = prefix + tl.minimum(m0 + BLOCK_M, ext)
    full_end = ((prefix + m0 + 1) // BLOCK_N) * BLOCK_N  # every query of the tile sees these
    if SLIDING:
        # from the block of the first query's oldest key; whole from the first block at or
        # after the last query's oldest key (that query is at prefix + m0 + BLOCK_M - 1)
        lo = (tl.maximum(prefix + m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
        full_start = tl.cdiv(tl.maximum(prefix + m0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        full_start = tl.minimum(full_start, full_end)
        for start_n in range(lo, full_start, BLOCK_N):
            acc, m_i, l_i = _extend_step(
                q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d,
                sm_scale_log2, stride_ks, stride_vs, HEAD_DIM, BLOCK_D, BLOCK_N, True,
                LAZY_RESCALE, PRECISION, True, window, CAP_IN, CAP_OUT)
        for start_n in range(full_start, full_end, BLOCK_N):
            acc, m_i, l_i = _extend_step(
                q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d,
                sm_scale_log2, stride_ks, stride_vs, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                LAZY_RESCALE, PRECISION, True, window, CAP_IN, CAP_OUT)
        for start_n in range(full_end, kv_end, BLOCK_N):
            acc, m_i, l_i = _extend_step(
                q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d,
                sm_scale_log2, stride_ks, stride_vs, HEAD_DIM, BLOCK_D, BLOCK_N, True,
                LAZY_RESCALE, PRECISION, True, window, CAP_IN, CAP_OUT)
    else:
        for start_n in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _extend_step(
                q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d,
                sm_scale_log2, stride_ks, stride_vs, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                LAZY_RESCALE, PRECISION, CAP_IN=CAP_IN, CAP_OUT=CAP_OUT)
        for start_n in range(full_end, kv_end, BLOCK_N):
            acc, m_i, l_i = _extend_step(
                q, acc, m_i, l_i, k_base, v_base, r2t_row, start_n, q_pos, kv_end, d,
                sm_scale_log2, stride_ks, stride_vs, HEAD_DIM, BLOCK_D, BLOCK_N, True,
                LAZY_RESCALE, PRECISION, CAP_IN=CAP_IN, CAP_OUT=CAP_OUT)

    o = acc / l_i[:, None]
    tl.store(Out + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + d[None, :],
             o.to(Out.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


def _launch(q, k_cache, v_cache, req_to_token, req_rows, prefix_lens, extend_lens, q_start_loc,
            sm_scale, max_extend_len, out, cfg: Config, window: int | None = None,
            softcap: float | None = None) -> None:
    T, HQ, D = q.shape
    HKV = k_cache.shape[1]
    B = req_rows.shape[0]
    grid = (HQ, B, triton.cdiv(max_extend_len, cfg["BLOCK_M"]))
    scale, cap_in, cap_out = softcap_args(sm_scale, softcap)
    _extend_kernel[grid](
        q, k_cache, v_cache, out, req_to_token, req_rows, prefix_lens, extend_lens, q_start_loc,
        scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        req_to_token.stride(0), window or 0,
        GROUP=HQ // HKV, HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], LAZY_RESCALE=bool(cfg.get("LAZY", 0)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SLIDING=bool(window),
        CAP_IN=cap_in, CAP_OUT=cap_out,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def extend_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
    q_start_loc: torch.Tensor, sm_scale: float, max_extend_len: int,
    *, config: Config | None = None, out: torch.Tensor | None = None,
    window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """`config` overrides the tuned launch config (tests, bench); `out` is where the rows go
    (attention_out); `window` the sliding window in tokens (None or 0: none); `softcap` the
    attention logit soft-cap (None or 0: none; extend_attention_ref)."""
    T, HQ, D = q.shape
    HKV = k_cache.shape[1]
    B = req_rows.shape[0]
    assert k_cache.shape[2] == D and v_cache.shape == k_cache.shape and HQ % HKV == 0
    assert prefix_lens.shape == extend_lens.shape == q_start_loc.shape == (B,)
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert req_to_token.stride(1) == 1 and req_to_token.dtype == torch.int32
    out = attention_out(q, out)
    if T == 0 or B == 0:
        return out
    if config is None and not q.is_cuda:
        config = CPU_CONFIG
    if config is None:
        key = (f"hq{HQ}-hkv{HKV}-d{D}-{str(q.dtype).removeprefix('torch.')}"
               f"-m{bucket(max_extend_len, LENGTH_CLASSES)}")
        # Query blocks much taller than the longest extend would be mostly padding.
        candidates = [c for c in CANDIDATES if c["BLOCK_M"] <= max(64, max_extend_len)]

        def bench(cfg: Config) -> float:
            scratch = torch.empty_like(q)
            return time_config(lambda: _launch(q, k_cache, v_cache, req_to_token, req_rows,
                                               prefix_lens, extend_lens, q_start_loc, sm_scale,
                                               max_extend_len, scratch, cfg, window,
                                               softcap))

        wide = triton.next_power_of_2(D) * q.element_size() > WIDE_ROW_BYTES
        config = get_config("extend_attention", key, q.device,
                            WIDE_ROW_CONFIG if wide else DEFAULT_CONFIG, candidates, bench,
                            classes={"m": LENGTH_CLASSES})
    _launch(q, k_cache, v_cache, req_to_token, req_rows, prefix_lens, extend_lens, q_start_loc,
            sm_scale, max_extend_len, out, config, window, softcap)
    return out


def extend_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
    q_start_loc: torch.Tensor, sm_scale: float, max_extend_len: int,
    q_chunk: int = 256, *, out: torch.Tensor | None = None, window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Per request, in fp32; queries in chunks so long prompts stay within memory, each
    chunk scored against the keys up to its last query only (the later ones are masked) and,
    with a `window` of W tokens, from its first query's oldest key (p - W, p] on. With a
    `softcap` each scaled score s becomes softcap x tanh(s / softcap) before the mask
    (capped(): transformers' Gemma2 eager_attention_forward)."""
    T, HQ, D = q.shape
    HKV = k_cache.shape[1]
    G = HQ // HKV
    out = attention_out(q, out)
    for row, prefix, ext, qs in zip(req_rows.tolist(), prefix_lens.tolist(),
                                    extend_lens.tolist(), q_start_loc.tolist()):
        slots = req_to_token[row, : prefix + ext].long()
        k = k_cache[slots].float().permute(1, 0, 2)                         # [HKV, N, D]
        v = v_cache[slots].float().permute(1, 0, 2)
        key_pos = torch.arange(prefix + ext, device=q.device)
        for c0 in range(0, ext, q_chunk):
            c1 = min(ext, c0 + q_chunk)
            n = prefix + c1  # keys a query of this chunk may see
            n0 = max(prefix + c0 - window + 1, 0) if window else 0  # ... from this one
            qc = q[qs + c0 : qs + c1].float().view(c1 - c0, HKV, G, D).permute(1, 2, 0, 3)
            scores = (qc @ k[:, None, n0:n].transpose(-1, -2)) * sm_scale   # [HKV, G, C, n]
            scores = capped(scores, softcap)
            q_pos = prefix + torch.arange(c0, c1, device=q.device)
            hidden = key_pos[None, n0:n] > q_pos[:, None]
            if window:
                hidden |= key_pos[None, n0:n] <= q_pos[:, None] - window
            scores = scores.masked_fill(hidden, -math.inf)
            o = torch.softmax(scores, dim=-1) @ v[:, None, n0:n]            # [HKV, G, C, D]
            out[qs + c0 : qs + c1] = o.permute(2, 0, 1, 3).reshape(c1 - c0, HQ, D).to(q.dtype)
    return out


def attention_out(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The attention kernels' output for queries q [T, Hq, D]: `out` when given (same shape,
    dtype and device, contiguous head dim: a static buffer or a part of another output), else
    new. Raises ValueError naming what it got, strides included."""
    if out is None:
        return torch.empty_like(q)
    if (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device
            or out.stride(2) != 1):
        raise ValueError(f"attention out must be {q.dtype} {tuple(q.shape)} on {q.device} with "
                         f"a contiguous head dim, got {out.dtype} {tuple(out.shape)} on "
                         f"{out.device} with strides {out.stride()}")
    return out
