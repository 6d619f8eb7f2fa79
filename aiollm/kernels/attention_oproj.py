"""Decode attention fused with o_proj and its residual add, for a decode batch of one request.

At batch 1 the attention kernel and the o_proj GEMV are both latency, not bytes (H200,
Llama-3.2-1B shape, context 192: attention ~3.9 µs a layer for ~0.1 µs of K/V, o_proj ~4 µs
for 2 µs of weights; bench/README.md, "Decode"): each is a dependent launch whose work
after its wait is a few memory round trips. One launch does both here, so a layer loses a
kernel boundary (a wait, a ramp, a tail).

Grid (HKV, n_blocks), n_blocks = cdiv(H, BLOCK_N). Program (h, j) computes the attention
output of the GROUP query heads of KV head h over the request's whole context (online
softmax over BLOCK_KV-token blocks gathered through req_to_token, Milakov & Gimelshein 2018;
the newest token's K/V folded in last, as decode_attention_kernel.py does), then multiplies
it by the tile W_o[rows of block j, columns of head group h] (W_o [H, HQ*D]) in float32: a
partial [BLOCK_N] of the rows' o_proj output. o_proj is thus a split-K GEMV, its K = HQ*D
split by KV head group as flash-decoding splits attention's context, the splits reduced below.
Everything but q and the newest token's K/V (which the kernel before, qkv + rotary + KV
store, writes) is loaded before the dependent-launch wait (pdl.py): the request's length
and slots, the first K/V block, the newest slot and the first W_o tile.

No program waits for another's attention, so each program computes its own head's: each
head's attention runs n_blocks times, its K/V read once from memory and n_blocks - 1 times
from L2. At the 1B shape (8 KV heads of 64 dims, bf16) and a 192-token context that is 48 KiB
of K/V a program: at BLOCK_N 64 (32 row blocks, 256 programs) 12 MiB of L2 reads a layer
next to 8 MiB of W_o read from memory, at BLOCK_N 128 6 MiB. At the 8B shape (128 dims,
H 4,096) it is 96 KiB a program, 12 MiB a layer at BLOCK_N 256 (128 programs) against
32 MiB of W_o. The cost grows with the context, so the model takes this kernel only up to
MAX_SEQ_LEN (a graph's longest context; not measured where the two paths cross). An engine
whose longest context is longer captures batch 1 a second time for contexts up to
MAX_SEQ_LEN (engine/cuda_graph.py, SHORT_CONTEXT), so its short-context steps take this
kernel too.

With a sliding window of W tokens (SLIDING, a compile-time branch) a program reads only the
positions [seq_len - W, seq_len), the window decode_attention_ref keeps. With attention
logit soft-capping (CAP_IN, CAP_OUT: compile-time constants, 0.0 for none) each score is
capped as decode_attention_kernel.py caps it.

Reduction, deterministic (no float atomics): each program writes its partial to a float32
scratch [HKV, H], then counts itself in on its row block's int32 counter (a barrier, then
an acq_rel atomic, as decode_attention's split merge); the last of the HKV programs of row
block j sums the partials in the order h = 0..HKV-1 (read past L1, .cg), adds the residual
rows and writes them, so the result does not depend on which program finished last. The
counters are one persistent tensor (allocated before a CUDA graph is captured; the graph
holds its address), each reset by the program that counted last.

The attention output is not rounded to the model dtype before o_proj (the unfused path
rounds it), so bf16 results differ from that path's by its rounding, closer to float32.
Compiled for sm_90 (Triton 3.9, ptxas) a program takes 230-255 registers, as
decode_attention's kernel does, so one or two programs fit an SM; candidates(head_dim)
leaves out the configs that spilled. On an H200 the GPU test passed and the 1B shape's
batch-1 step got faster, the 8B's slower (bench/README.md, "Decode").
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from aiollm.kernels import autotune, pdl
from aiollm.kernels.autotune import Config, bucket, get_config, time_config
from aiollm.kernels.decode_attention import arrival_counters, decode_attention_ref
from aiollm.kernels.decode_attention_kernel import _attend_context, _load_kv, _softcap
from aiollm.kernels.extend_attention import softcap_args
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait

# The model takes this kernel for a decode batch of one request (attention.Attention.forward_small):
# None (the default) where the GPU's config table holds a config for the shape, which is
# committed only where the fused kernel made the decode step faster than the unfused path
# (bench/decode_step.py; on the H200 the 1B shape's, not the 8B's, where it lost); True
# always (tests, benchmarks), also on the CPU (its reference); False never.
ENABLED: bool | None = None
# ... whose step is sized for contexts of at most this many tokens (the batch-1 graph of
# contexts up to it, engine/cuda_graph.py): past some length every program's serial pass
# over the context costs more than the split kernel's. Where they cross is not measured.
MAX_SEQ_LEN = 512
TILE_ELEMENTS = 32  # W_o elements a thread holds in a tile (_tile_rows), unless a config's TILE
MAX_BLOCKS = 1 << 12  # row blocks of one launch: the counters
# The shape classes of the tuned configs: the longest context
LENGTH_CLASSES = (256, 512)
# BLOCK_N: rows of o_proj a program; BLOCK_KV: context tokens a block (a block covering the
# whole context is loaded before the wait). A program's W_o rows are read in tiles of at
# most TILE_ELEMENTS elements a thread (_tile_rows), the next tile in flight while one is
# multiplied. The default spills no register at the 1B and 8B shapes (ptxas, sm_90).
DEFAULT_CONFIG: Config = {"BLOCK_N": 128, "BLOCK_KV": 64, "num_warps": 8, "num_stages": 1}
CPU_CONFIG: Config = {"BLOCK_N": 16, "BLOCK_KV": 16, "num_warps": 1, "num_stages": 1}
CANDIDATES: list[Config] = [
    {"BLOCK_N": bn, "BLOCK_KV": bkv, "num_warps": w, "num_stages": 1}
    for bn in (16, 32, 64, 128, 256) for bkv in (32, 64, 128, 256) for w in (4, 8)
] + [  # 16 warps: a larger K/V block or W_o tile (TILE elements a thread) loaded before the wait
    {"BLOCK_N": bn, "BLOCK_KV": bkv, "num_warps": 16, "num_stages": 1, "TILE": tile}
    for bn in (64, 128, 256) for bkv in (128, 256, 512) for tile in (32, 64)
]


@triton.jit
def _top_half(x, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Rows [0, ROWS / 2) of x [ROWS, COLS]."""
    x = tl.permute(tl.reshape(x, (2, ROWS // 2, COLS)), (1, 2, 0))
    top, _ = tl.split(x)
    return top


@triton.jit(do_not_specialize=["window"])
def _attention_oproj_kernel(
    Q, KCache, VCache, ReqToToken, ReqRows, SeqLens, Wo, ResIn, Out, Partial, Counters,
    H, sm_scale_log2, window,
    stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t, stride_wn, stride_ph,
    GROUP: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_N: tl.constexpr,
    TILE_N: tl.constexpr, BLOCK_KV: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
    SLIDING: tl.constexpr = False, CAP_IN: tl.constexpr = 0.0, CAP_OUT: tl.constexpr = 0.0,
):
    h = tl.program_id(0)
    j = tl.program_id(1)
    # Loaded before the wait: what earlier kernels wrote (the request's length and slots, the
    # older tokens' K/V) and the weights (pdl.py; decode_attention.py says why).
    seq_len = tl.load(SeqLens)
    row = tl.load(ReqRows).to(tl.int64)
    newest = seq_len - 1
    r2t_row = ReqToToken + row * stride_r2t
    g = tl.arange(0, BLOCK_H)
    heads = h * GROUP + g
    hmask = g < GROUP
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    k_base = KCache + h * stride_kh
    v_base = VCache + h * stride_vh
    if SLIDING:  # the window's positions [lo, seq_len)
        lo = tl.maximum(seq_len - window, 0)
    else:
        lo = 0
    offs_n = lo + tl.arange(0, BLOCK_KV)
    nmask = offs_n < newest
    k, v = _load_kv(r2t_row, k_base, v_base, offs_n, nmask, d, dmask, stride_ks, stride_vs,
                    BLOCK_D == HEAD_DIM)
    slot_new = tl.load(r2t_row + newest).to(tl.int64)
    # W_o [rows, (h GROUP + g) HEAD_DIM + d] as [TILE_N, GROUP_P2, BLOCK_D] tiles
    gw = tl.arange(0, GROUP_P2)
    n = tl.arange(0, TILE_N)
    row0 = j * BLOCK_N
    col_mask = (gw < GROUP)[None, :, None] & dmask[None, None, :]
    w_ptrs = (Wo + (row0 + n).to(tl.int64)[:, None, None] * stride_wn
              + ((h * GROUP + gw) * HEAD_DIM)[None, :, None] + d[None, None, :])
    w = tl.load(w_ptrs, mask=((row0 + n) < H)[:, None, None] & col_mask, other=0.0)
    if PDL:  # q and the newest K/V come from the kernel before; the next may start its loads
        gdc_wait()
        gdc_launch_dependents()
    q = tl.load(Q + heads[:, None] * stride_qh + d[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)
    k_new = tl.load(k_base + slot_new * stride_ks + d, mask=dmask, other=0.0)
    v_new = tl.load(v_base + slot_new * stride_vs + d, mask=dmask, other=0.0)

    m_i, l_i, acc = _attend_context(q, k, v, nmask, r2t_row, k_base, v_base, lo, newest, d,
                                    dmask, stride_ks, stride_vs, sm_scale_log2, BLOCK_H,
                                    BLOCK_D, BLOCK_KV, BLOCK_D == HEAD_DIM, PRECISION,
                                    CAP_IN, CAP_OUT)
    # the newest token: one score per query head, in float32; it always has weight > 0
    s = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1)
    if CAP_OUT != 0.0:
        s = _softcap(s, CAP_IN, CAP_OUT)
    s = s * sm_scale_log2
    m_new = tl.maximum(m_i, s)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new)
    l_i = l_i * alpha + p
    acc = acc * alpha[:, None] + p[:, None] * v_new.to(tl.float32)[None, :]
    o = acc / l_i[:, None]  # [BLOCK_H, BLOCK_D]; rows >= GROUP are not used
    # its first GROUP_P2 rows (a tl.dot tile has at least 16), halving it as often as needed
    if BLOCK_H // 2 >= GROUP_P2:
        o = _top_half(o, BLOCK_H, BLOCK_D)
    if BLOCK_H // 4 >= GROUP_P2:
        o = _top_half(o, BLOCK_H // 2, BLOCK_D)
    if BLOCK_H // 8 >= GROUP_P2:
        o = _top_half(o, BLOCK_H // 4, BLOCK_D)
    if BLOCK_H // 16 >= GROUP_P2:
        o = _top_half(o, BLOCK_H // 8, BLOCK_D)
    o_g = o  # [GROUP_P2, BLOCK_D]

    # partial[h, rows] = W_o[rows, columns of h] . o_g, tile by tile, the next in flight
    for t in tl.static_range(0, BLOCK_N, TILE_N):
        rows = row0 + t + n
        if t + TILE_N < BLOCK_N:
            w_next = tl.load(w_ptrs + (t + TILE_N) * stride_wn,
                             mask=((rows + TILE_N) < H)[:, None, None] & col_mask, other=0.0)
        y = tl.sum(tl.sum(w.to(tl.float32) * o_g[None, :, :], 2), 1)
        tl.store(Partial + h * stride_ph + rows, y, mask=rows < H)
        if t + TILE_N < BLOCK_N:
            w = w_next

    # Every thread's partial is written before this program counts itself in (barrier, then
    # a release); the program that counts last (acquire) sums the row block's partials.
    tl.debug_barrier()
    counter = Counters + j
    done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
    if done == HKV - 1:
        tl.atomic_xchg(counter, 0)  # ready for the next launch
        block = row0 + tl.arange(0, BLOCK_N)
        bmask = block < H
        total = tl.load(Partial + block, mask=bmask, other=0.0, cache_modifier=".cg")
        for hh in tl.static_range(1, HKV):  # in head order: the sum is the same every time
            total += tl.load(Partial + hh * stride_ph + block, mask=bmask, other=0.0,
                             cache_modifier=".cg")
        res = tl.load(ResIn + block, mask=bmask, other=0.0).to(tl.float32)
        tl.store(Out + block, res + total, mask=bmask)


def candidates(head_dim: int) -> list[Config]:
    """The CANDIDATES whose K/V block holds at most 64 elements a thread (32 from head dim 128
    on): compiled for sm_90 at the 1B and 8B shapes (Triton 3.9, ptxas), the others spilled
    registers (all used about 230-255 of them, as decode_attention's kernel does)."""
    per_thread = 64 if head_dim <= 64 else 32
    return [c for c in CANDIDATES
            if c["BLOCK_KV"] * triton.next_power_of_2(head_dim) <= per_thread * 32 * c["num_warps"]]


def config_key(num_heads: int, num_kv_heads: int, head_dim: int, hidden: int,
               dtype: torch.dtype, max_seq_len: int) -> str:
    """The shape-class key of the kernel's configs in autotune's tables."""
    return (f"hq{num_heads}-hkv{num_kv_heads}-d{head_dim}-h{hidden}-"
            f"{str(dtype).removeprefix('torch.')}-n{bucket(max_seq_len, LENGTH_CLASSES)}")


def _tile_rows(cfg: Config, group_p2: int, block_d: int) -> int:
    """Rows of a W_o tile: at most TILE_ELEMENTS of its elements a thread, at most the
    program's rows."""
    per_row = group_p2 * block_d
    budget = cfg.get("TILE", TILE_ELEMENTS) * 32 * cfg["num_warps"]
    rows = 1 << max(0, (budget // per_row).bit_length() - 1) if budget >= per_row else 1
    return min(cfg["BLOCK_N"], rows)


_counters: dict[torch.device, torch.Tensor] = {}


def _block_counters(device: torch.device) -> torch.Tensor:
    """The row blocks' arrival counters on `device` (the last program of a block resets it)."""
    return arrival_counters(_counters, device, MAX_BLOCKS, "attention_oproj")


def _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, w_o, res_in,
            out, cfg: Config, window: int | None = None, softcap: float | None = None) -> None:
    _, HQ, D = q.shape
    HKV = k_cache.shape[1]
    H = w_o.shape[0]
    group = HQ // HKV
    group_p2, block_d = triton.next_power_of_2(group), triton.next_power_of_2(D)
    block_n = cfg["BLOCK_N"]
    n_blocks = triton.cdiv(H, block_n)
    assert n_blocks <= MAX_BLOCKS, f"{n_blocks} row blocks, more than {MAX_BLOCKS} counters"
    partial = torch.empty((HKV, H), dtype=torch.float32, device=q.device)
    scale, cap_in, cap_out = softcap_args(sm_scale, softcap)
    _attention_oproj_kernel[(HKV, n_blocks)](
        q, k_cache, v_cache, req_to_token, req_rows, seq_lens, w_o, res_in, out, partial,
        _block_counters(q.device), H, scale, window or 0,
        q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), req_to_token.stride(0), w_o.stride(0), partial.stride(0),
        GROUP=group, HKV=HKV, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_H=max(16, group_p2),
        GROUP_P2=group_p2, BLOCK_N=block_n, TILE_N=_tile_rows(cfg, group_p2, block_d),
        BLOCK_KV=cfg["BLOCK_KV"], PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        SLIDING=bool(window), CAP_IN=cap_in, CAP_OUT=cap_out, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **pdl.launch_kwargs(q.device))


def _check(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, w_o, residual) -> None:
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    assert B == 1, f"attention_oproj takes one request, got {B}"
    assert k_cache.shape[2] == D and v_cache.shape == k_cache.shape and HQ % HKV == 0
    assert req_rows.shape == (1,) and seq_lens.shape == (1,)
    assert w_o.dim() == 2 and w_o.shape[1] == HQ * D and w_o.stride(1) == 1
    assert residual.shape == (1, w_o.shape[0]) and residual.stride(1) == 1
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert req_to_token.stride(1) == 1 and req_to_token.dtype == torch.int32


def attention_oproj_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    w_o: torch.Tensor, residual: torch.Tensor, *, config: Config | None = None,
    window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """residual + o_proj(decode attention of q) for one request, in float32.

    q [1, HQ, D] (the request's new token, its K/V already stored at its last position);
    k_cache, v_cache [S, HKV, D]; req_to_token [R, L] int32; req_rows, seq_lens [1] int32
    (the request's row and its length, the new token included); sm_scale the softmax scale;
    max_seq_len the longest length a launch is sized for (the shape class of its config);
    w_o [H, HQ*D] (o_proj's weight, no bias); residual [1, H] of any float dtype. Returns
    [1, H] float32, written into residual itself when it is float32 (the residual stream).
    `config` overrides the tuned one; `window` the sliding window in tokens (None or 0:
    none; decode_attention_ref); `softcap` the attention logit soft-cap (None or 0: none).
    AssertionError when the shapes or strides do not fit.
    """
    _check(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, w_o, residual)
    out = residual if residual.dtype == torch.float32 else torch.empty(
        residual.shape, dtype=torch.float32, device=residual.device)
    if config is None and not q.is_cuda:
        config = CPU_CONFIG
    if config is None:
        _, HQ, D = q.shape
        key = config_key(HQ, k_cache.shape[1], D, w_o.shape[0], q.dtype, max_seq_len)

        def bench(cfg: Config) -> float:
            # timed runs write a scratch output: out is usually the residual stream itself
            scratch = torch.empty_like(out)
            return time_config(lambda: _launch(q, k_cache, v_cache, req_to_token, req_rows,
                                               seq_lens, sm_scale, w_o, residual, scratch, cfg,
                                               window, softcap))

        config = get_config("attention_oproj", key, q.device, DEFAULT_CONFIG, candidates(D),
                            bench, classes={"n": LENGTH_CLASSES})
    _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, w_o, residual,
            out, config, window, softcap)
    return out


def attention_oproj_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    w_o: torch.Tensor, residual: torch.Tensor, *, window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """decode_attention_ref (with its `window` and `softcap`), then o_proj, then the residual
    add, all in float32 (the attention output is not rounded to q's dtype); in place when
    residual is float32."""
    o = decode_attention_ref(q.float(), k_cache, v_cache, req_to_token, req_rows, seq_lens,
                             sm_scale, max_seq_len, window=window, softcap=softcap)
    y = residual.float() + F.linear(o.reshape(q.shape[0], -1), w_o.float())
    if residual.dtype == torch.float32:
        return residual.copy_(y)
    return y


def attention_oproj(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale,
                    max_seq_len, w_o, residual, window=None, softcap=None):
    """Triton on CUDA tensors, the reference otherwise (attention_oproj_triton's contract)."""
    fn = attention_oproj_triton if q.is_cuda else attention_oproj_ref
    return fn(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
              w_o, residual, window=window, softcap=softcap)


def takes(q: torch.Tensor, k_cache: torch.Tensor, w_o: torch.Tensor, max_seq_len: int) -> bool:
    """Whether a decode step with queries q [B, HQ, D], this layer's k_cache [S, HKV, D] and
    o_proj weight w_o [H, HQ*D], sized for contexts up to max_seq_len tokens, takes the fused
    kernel: one request (B == 1) and takes_shape."""
    return q.shape[0] == 1 and takes_shape(q.shape[1], k_cache.shape[1], q.shape[2],
                                           w_o.shape[0], q.dtype, q.device, max_seq_len)


def takes_shape(num_heads: int, num_kv_heads: int, head_dim: int, hidden: int,
                dtype: torch.dtype, device: torch.device, max_seq_len: int) -> bool:
    """Whether a one-request decode step of this attention shape on `device`, sized for
    contexts up to max_seq_len tokens, takes the fused kernel: max_seq_len at most
    MAX_SEQ_LEN, and ENABLED (None: a config committed for the shape on the device's GPU,
    autotune.committed)."""
    if ENABLED is False or max_seq_len > MAX_SEQ_LEN:
        return False
    if ENABLED:
        return True
    key = config_key(num_heads, num_kv_heads, head_dim, hidden, dtype, max_seq_len)
    return _committed(key, device)


@functools.cache
def _committed(key: str, device: torch.device) -> bool:
    return autotune.committed("attention_oproj", key, device, {"n": LENGTH_CLASSES}) is not None
