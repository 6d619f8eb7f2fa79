"""Matrix-vector products for decode steps of 1-4 tokens, fused with what surrounds them.

At a handful of rows a linear layer is a read of its weight and nothing else: y = x W^T with
x [M, K] (M <= 4), W [N, K]. cuBLAS runs the 2k-wide layers' GEMVs at 20-60% of the copy
bandwidth (H200, timed alone by bench/gemv.py), and a decoder layer adds small kernels
between them (RMSNorm, rotary and the KV store, SiLU-and-mul), each costing a launch and a
ramp that take as long as reading a few megabytes. One kernel here reads a [BLOCK_N, K] slice
of W per program (many small programs, so that the whole GPU keeps loads in flight; the next
[BLOCK_N, BLOCK_K] tile is loaded while the current one is multiplied; elementwise products
and row sums in float32, no MMA: a 16-row MMA tile would waste 12-15 of its rows). Its first
tile is loaded before it waits for the kernel before it (programmatic dependent launch,
pdl.py). It folds the neighbours in:

- prologue NORM: x is the residual stream (any dtype); the program multiplies it by the norm
  weight g, accumulates sum(x^2) over the same pass over K, and scales its sums by
  rsqrt(mean(x^2) + eps) at the end: RMSNorm (Zhang & Sennrich 2019) folded into the
  product, since rmsnorm(x) W^T = rsqrt(mean(x^2) + eps) * (x * g) W^T;
- epilogue RESIDUAL: res_out = res_in + y in float32 (the residual stream; res_out may be
  res_in) for o_proj and down_proj;
- epilogue SILU: W is gate/up fused [2I, K]; a program computes gate rows n and up rows
  I + n together and writes silu(gate) * up [M, I] (SwiGLU, Shazeer 2020); epilogue GELU
  the same with GELU's tanh approximation (GeGLU, Gemma's; activation.py);
- epilogue ROPE: W is q/k/v fused; a program computes rows j and j + D/2 of a head together,
  rotates q and k by their positions (rotate_half layout, as rotary.py) and writes q [M, Hq,
  D], k and v into their KV cache slots (as rotary_store_kv).

Sums are in float32 without rounding the normalised x or the gate/up outputs to the model
dtype first, so the result is closer to the float32 reference than the unfused path's.
Configs (BLOCK_N, BLOCK_K, warps, stages) per shape class come from autotune.py. The model
takes these kernels at one token only (llama.FUSED_MAX_TOKENS says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from aiollm.kernels import pdl
from aiollm.kernels.activation import gelu_tanh, gelu_tanh_and_mul_ref, silu_and_mul_ref
from aiollm.kernels.autotune import Config, get_config, time_config
from aiollm.kernels.norm import rms_norm_ref
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait

MAX_ROWS = 4  # decode batches up to this many tokens take these kernels

PLAIN, RESIDUAL, SILU, ROPE, GELU = 0, 1, 2, 3, 4
_KIND = {PLAIN: "plain", RESIDUAL: "residual", SILU: "silu", ROPE: "rope", GELU: "gelu"}

# (BLOCK_N, BLOCK_K, num_warps, num_stages); a pair kernel (SILU, ROPE, GELU) reads 2 x BLOCK_N
CANDIDATES = [(1, 1024, 4, 1), (1, 2048, 4, 1), (2, 512, 4, 1), (2, 1024, 4, 1),
              (2, 1024, 8, 1), (2, 2048, 8, 1), (4, 256, 4, 1), (4, 512, 4, 1),
              (4, 1024, 4, 1), (4, 1024, 8, 1), (4, 2048, 8, 1), (8, 128, 4, 1),
              (8, 256, 4, 1), (8, 256, 8, 1), (8, 512, 4, 1), (8, 512, 8, 1),
              (16, 128, 8, 1), (16, 256, 4, 1), (16, 512, 8, 1), (32, 128, 4, 1)]
DEFAULT = (4, 512, 4, 1)  # fits both row classes


@triton.jit
def _gemv_kernel(
    X, W, Bias, NormW, Out, ResIn, KCache, VCache, Loc, Positions, CosSin,
    M, R, K, pair_group, eps,
    stride_xm, stride_wn, stride_om, stride_rm,
    stride_kcs, stride_kch, stride_vcs, stride_vch, stride_cs,
    HQ, HKV,
    EPI: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    PAIR: tl.constexpr = EPI >= 2
    # one row: [BLOCK_N, BLOCK_K] partial sums reduced over K once, after the loop; more
    # rows: reduced every step, so that the partial sums stay within the registers
    SUM_EACH: tl.constexpr = BLOCK_M > 1
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # output rows (pairs) of W
    r_ok = r < R
    if PAIR:  # rows a and a + pair_group: gate/up (group I) or the halves of a head (D/2)
        a = (r // pair_group) * (2 * pair_group) + r % pair_group
    else:
        a = r
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    kk = tl.arange(0, BLOCK_K)
    w_ptrs = W + a.to(tl.int64)[None, :, None] * stride_wn + kk[None, None, :]
    x_ptrs = X + m[:, None, None] * stride_xm + kk[None, None, :]
    w_mask = r_ok[None, :, None]
    x_mask = m_ok[:, None, None]
    # The first weight tile is loaded before waiting for the previous kernel (programmatic
    # dependent launch): weights never depend on it, so their read overlaps its tail.
    if EVEN_K:
        wa = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if PAIR:
            wb = tl.load(w_ptrs + pair_group * stride_wn, mask=w_mask, other=0.0)
    else:
        wa = tl.load(w_ptrs, mask=w_mask & (kk < K)[None, None, :], other=0.0)
        if PAIR:
            wb = tl.load(w_ptrs + pair_group * stride_wn, mask=w_mask & (kk < K)[None, None, :],
                         other=0.0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    if SUM_EACH:
        acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PAIR:
            acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc_a = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
        if PAIR:
            acc_b = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    if NORM:
        sq = tl.zeros((BLOCK_M, 1, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=x_mask, other=0.0).to(tl.float32)
            if NORM:
                g = tl.load(NormW + k0 + kk[None, None, :]).to(tl.float32)
        else:
            k_ok = (kk < K - k0)[None, None, :]
            x = tl.load(x_ptrs, mask=x_mask & k_ok, other=0.0).to(tl.float32)
            if NORM:
                g = tl.load(NormW + k0 + kk[None, None, :], mask=k_ok, other=0.0).to(tl.float32)
        # the next tile is in flight while this one is multiplied
        next_ok = w_mask & (kk < K - k0 - BLOCK_K)[None, None, :]
        w_ptrs += BLOCK_K
        wa_next = tl.load(w_ptrs, mask=next_ok, other=0.0)
        if PAIR:
            wb_next = tl.load(w_ptrs + pair_group * stride_wn, mask=next_ok, other=0.0)
        if NORM:
            sq += x * x
            x = x * g
        if SUM_EACH:
            acc_a += tl.sum(wa.to(tl.float32) * x, 2)
            if PAIR:
                acc_b += tl.sum(wb.to(tl.float32) * x, 2)
        else:
            acc_a += wa.to(tl.float32) * x
            if PAIR:
                acc_b += wb.to(tl.float32) * x
        wa = wa_next
        if PAIR:
            wb = wb_next
        x_ptrs += BLOCK_K
    if SUM_EACH:
        ya = acc_a
        if PAIR:
            yb = acc_b
    else:
        ya = tl.sum(acc_a, 2)  # [BLOCK_M, BLOCK_N]
        if PAIR:
            yb = tl.sum(acc_b, 2)
    if NORM:
        rstd = tl.rsqrt(tl.sum(sq, 2) / K + eps)  # [BLOCK_M, 1]
        ya = ya * rstd
        if PAIR:
            yb = yb * rstd
    if HAS_BIAS:
        ya += tl.load(Bias + a, mask=r_ok, other=0.0).to(tl.float32)[None, :]
        if PAIR:
            yb += tl.load(Bias + a + pair_group, mask=r_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & r_ok[None, :]
    rows = m.to(tl.int64)[:, None]
    if EPI == 0:
        tl.store(Out + rows * stride_om + r[None, :], ya.to(Out.dtype.element_ty), mask=mask)
    elif EPI == 1:
        res = tl.load(ResIn + rows * stride_rm + r[None, :], mask=mask, other=0.0)
        tl.store(Out + rows * stride_om + r[None, :], res.to(tl.float32) + ya, mask=mask)
    elif EPI == 2:
        act = ya * tl.sigmoid(ya) * yb
        tl.store(Out + rows * stride_om + r[None, :], act.to(Out.dtype.element_ty), mask=mask)
    elif EPI == 4:
        act = gelu_tanh(ya) * yb
        tl.store(Out + rows * stride_om + r[None, :], act.to(Out.dtype.element_ty), mask=mask)
    else:
        head = (r // pair_group)[None, :]
        j = (r % pair_group)[None, :]
        pos = tl.load(Positions + m, mask=m_ok, other=0).to(tl.int64)[:, None]
        cos = tl.load(CosSin + pos * stride_cs + j, mask=mask, other=1.0)
        sin = tl.load(CosSin + pos * stride_cs + pair_group + j, mask=mask, other=0.0)
        is_v = head >= HQ + HKV
        o1 = tl.where(is_v, ya, ya * cos - yb * sin)
        o2 = tl.where(is_v, yb, yb * cos + ya * sin)
        # q into Out [M, HQ, D] (row stride stride_om); k and v into their cache slots
        qm = mask & (head < HQ)
        q_ptr = Out + rows * stride_om + head * (2 * pair_group) + j
        tl.store(q_ptr, o1.to(Out.dtype.element_ty), mask=qm)
        tl.store(q_ptr + pair_group, o2.to(Out.dtype.element_ty), mask=qm)
        slot = tl.load(Loc + m, mask=m_ok, other=0).to(tl.int64)[:, None]
        km = mask & (head >= HQ) & ~is_v
        k_ptr = KCache + slot * stride_kcs + (head - HQ) * stride_kch + j
        tl.store(k_ptr, o1.to(KCache.dtype.element_ty), mask=km)
        tl.store(k_ptr + pair_group, o2.to(KCache.dtype.element_ty), mask=km)
        vm = mask & is_v
        v_ptr = VCache + slot * stride_vcs + (head - HQ - HKV) * stride_vch + j
        tl.store(v_ptr, o1.to(VCache.dtype.element_ty), mask=vm)
        tl.store(v_ptr + pair_group, o2.to(VCache.dtype.element_ty), mask=vm)


def _as_config(c: tuple[int, int, int, int]) -> Config:
    return {"BLOCK_N": c[0], "BLOCK_K": c[1], "num_warps": c[2], "num_stages": c[3]}


def _block_m(M: int) -> int:
    return 1 if M == 1 else MAX_ROWS


def _candidates(block_m: int, K: int) -> list[Config]:
    """Candidates that fit the registers: at one row, [BLOCK_N, BLOCK_K] float32 partial sums
    of at most 32 per thread and accumulator (a pair kernel holds two); at more rows, products
    of at most 64 per thread and step. No K block longer than K's next power of 2."""
    out = []
    for c in CANDIDATES:
        n, k, warps, _ = c
        fits = n * k <= 32 * 32 * warps if block_m == 1 else block_m * n * k <= 64 * 32 * warps
        if fits and k <= max(128, triton.next_power_of_2(K)):
            out.append(_as_config(c))
    return out


def _launch(epi: int, x, w, bias, norm_w, eps, out, res_in, rope, R: int, pair_group: int,
            cfg: Config) -> None:
    M, K = x.shape
    kc, vc, loc, pos, cs, hq, hkv = rope if rope is not None else (out,) * 5 + (0, 0)
    grid = (triton.cdiv(R, cfg["BLOCK_N"]),)
    _gemv_kernel[grid](
        x, w, bias if bias is not None else w, norm_w if norm_w is not None else w, out,
        res_in if res_in is not None else out, kc, vc, loc, pos, cs,
        M, R, K, pair_group, eps,
        x.stride(0), w.stride(0), out.stride(0), res_in.stride(0) if res_in is not None else 0,
        kc.stride(0) if rope else 0, kc.stride(1) if rope else 0,
        vc.stride(0) if rope else 0, vc.stride(1) if rope else 0, cs.stride(0) if rope else 0,
        hq, hkv,
        EPI=epi, NORM=norm_w is not None, HAS_BIAS=bias is not None,
        EVEN_K=K % cfg["BLOCK_K"] == 0, BLOCK_M=_block_m(M), BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **pdl.launch_kwargs(x.device))


def _run(epi: int, x, w, bias, norm_w, eps, out, res_in=None, rope=None, pair_group=1) -> None:
    M, K = x.shape
    N = w.shape[0]
    assert 1 <= M <= MAX_ROWS, f"gemv takes 1-{MAX_ROWS} rows, got {M}"
    assert w.dim() == 2 and w.shape[1] == K and w.stride(1) == 1 and x.stride(1) == 1
    assert norm_w is None or (norm_w.shape == (K,) and norm_w.is_contiguous())
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    R = N // 2 if epi >= SILU else N  # a pair kernel's programs own row pairs
    bm = _block_m(M)
    key = f"{_KIND[epi]}{'-norm' if norm_w is not None else ''}-n{N}-k{K}-m{bm}-" \
          f"{str(w.dtype).removeprefix('torch.')}"

    def bench(c: Config) -> float:
        # Tuning runs each candidate many times on these tensors: the residual kernel's timed
        # runs write a scratch output, since `out` is usually `res_in` (the stream, added into
        # in place) and every run would add y to it once more. The other kernels' repeated
        # writes are the same values (the rope kernel's KV slots included).
        dst = torch.empty_like(out) if epi == RESIDUAL else out
        return time_config(lambda: _launch(epi, x, w, bias, norm_w, eps, dst, res_in, rope, R,
                                           pair_group, c))

    cfg = get_config("gemv", key, x.device, _as_config(DEFAULT), _candidates(bm, K), bench)
    _launch(epi, x, w, bias, norm_w, eps, out, res_in, rope, R, pair_group, cfg)


# ---- the fused operations: Triton wrapper and PyTorch reference of each ----------------------

def gemv_norm_triton(x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor,
                     bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
                     ) -> torch.Tensor:
    """rmsnorm(x) * norm_w @ w^T (+ bias): x [M, K] (M <= 4, any float dtype), w [N, K]
    -> [M, N] in out_dtype (default w's dtype)."""
    out = torch.empty((x.shape[0], w.shape[0]), dtype=out_dtype or w.dtype, device=x.device)
    _run(PLAIN, x, w, bias, norm_w, eps, out)
    return out


def gemv_norm_ref(x, norm_w, eps, w, bias=None, out_dtype=None):
    h = rms_norm_ref(x.float(), norm_w, eps).to(w.dtype)  # normalised in float32, then w's
    return F.linear(h, w, bias).to(out_dtype or w.dtype)


def gemv_plain_triton(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """x @ w^T (+ bias) with no prologue or epilogue: x [M, K] (M <= 4), w [N, K] -> [M, N]
    in w's dtype (Gemma 2/3's o_proj and down_proj, whose outputs are normed before the
    residual add: gemma_layers.py)."""
    out = torch.empty((x.shape[0], w.shape[0]), dtype=w.dtype, device=x.device)
    _run(PLAIN, x, w, bias, None, 0.0, out)
    return out


def gemv_plain_ref(x, w, bias=None):
    return F.linear(x.to(w.dtype), w, bias)


def gemv_residual_triton(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                         residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ w^T (+ bias) in float32: x [M, K], w [N, K], residual [M, N] -> [M, N]
    float32, written into residual itself when it is float32 (the residual stream)."""
    out = residual if residual.dtype == torch.float32 else torch.empty(
        residual.shape, dtype=torch.float32, device=x.device)
    assert residual.shape == (x.shape[0], w.shape[0]) and residual.stride(1) == 1
    _run(RESIDUAL, x, w, bias, None, 0.0, out, res_in=residual)
    return out


def gemv_residual_ref(x, w, bias, residual):
    y = residual.float() + F.linear(x, w, bias).float()
    if residual.dtype == torch.float32:
        residual.copy_(y)
        return residual
    return y


def gemv_norm_silu_triton(x: torch.Tensor, norm_w: torch.Tensor, eps: float,
                          w: torch.Tensor) -> torch.Tensor:
    """silu(g) * u of [g | u] = rmsnorm(x) * norm_w @ w^T: x [M, K], w [2I, K] (gate rows,
    then up rows) -> [M, I] in w's dtype."""
    out = torch.empty((x.shape[0], w.shape[0] // 2), dtype=w.dtype, device=x.device)
    _run(SILU, x, w, None, norm_w, eps, out, pair_group=w.shape[0] // 2)
    return out


def gemv_norm_silu_ref(x, norm_w, eps, w):
    return silu_and_mul_ref(gemv_norm_ref(x, norm_w, eps, w))


def gemv_norm_gelu_tanh_triton(x: torch.Tensor, norm_w: torch.Tensor, eps: float,
                               w: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(g) * u of [g | u] = rmsnorm(x) * norm_w @ w^T (GELU's tanh approximation,
    activation.py): x [M, K], w [2I, K] (gate rows, then up rows) -> [M, I] in w's dtype."""
    out = torch.empty((x.shape[0], w.shape[0] // 2), dtype=w.dtype, device=x.device)
    _run(GELU, x, w, None, norm_w, eps, out, pair_group=w.shape[0] // 2)
    return out


def gemv_norm_gelu_tanh_ref(x, norm_w, eps, w):
    """gemv_norm_gelu_tanh_triton's reference (the CPU path): the norm's output rounded to
    w's dtype before the matmul, as the unfused layers compute it."""
    return gelu_tanh_and_mul_ref(gemv_norm_ref(x, norm_w, eps, w))


def gemv_norm_rope_kv_triton(
    x: torch.Tensor, norm_w: torch.Tensor, eps: float, w: torch.Tensor,
    bias: torch.Tensor | None, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, out_cache_loc: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """The attention's input side of a layer: [q | k | v] = rmsnorm(x) * norm_w @ w^T (+ bias),
    q and k rotated by `positions` (cos_sin_cache [P, D] float32, as rotary.py), k and v
    stored at KV slots out_cache_loc [M] of k_cache / v_cache [S, Hkv, D]. x [M, K], w
    [(num_heads + 2 Hkv) D, K] -> q [M, num_heads, D] in w's dtype."""
    M = x.shape[0]
    hkv, D = k_cache.shape[1], k_cache.shape[2]
    assert w.shape[0] == (num_heads + 2 * hkv) * D and D % 2 == 0
    assert k_cache.stride(2) == 1 and v_cache.stride(2) == 1 and v_cache.shape == k_cache.shape
    assert positions.shape == (M,) and out_cache_loc.shape == (M,)
    assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.stride(1) == 1
    q = torch.empty((M, num_heads, D), dtype=w.dtype, device=x.device)
    rope = (k_cache, v_cache, out_cache_loc, positions, cos_sin_cache, num_heads, hkv)
    _run(ROPE, x, w, bias, norm_w, eps, q.view(M, num_heads * D), rope=rope,
         pair_group=D // 2)
    return q


def gemv_norm_rope_kv_ref(x, norm_w, eps, w, bias, positions, cos_sin_cache, k_cache, v_cache,
                          out_cache_loc, num_heads):
    from aiollm.kernels.kv_store import store_kv_ref
    from aiollm.kernels.rotary import apply_rotary_ref

    M = x.shape[0]
    hkv, D = k_cache.shape[1], k_cache.shape[2]
    qkv = gemv_norm_ref(x, norm_w, eps, w, bias)
    q = qkv[:, : num_heads * D].reshape(M, num_heads, D)
    k = qkv[:, num_heads * D : (num_heads + hkv) * D].reshape(M, hkv, D)
    v = qkv[:, (num_heads + hkv) * D :].reshape(M, hkv, D)
    apply_rotary_ref(q, k, positions, cos_sin_cache)
    store_kv_ref(k_cache, v_cache, k, v, out_cache_loc)
    return q


# ---- dispatch: Triton on CUDA tensors, the reference otherwise -------------------------------

def gemv_norm(x, norm_w, eps, w, bias=None, out_dtype=None):
    fn = gemv_norm_triton if x.is_cuda else gemv_norm_ref
    return fn(x, norm_w, eps, w, bias, out_dtype)


def gemv_plain(x, w, bias=None):
    return (gemv_plain_triton if x.is_cuda else gemv_plain_ref)(x, w, bias)


def gemv_residual(x, w, bias, residual):
    return (gemv_residual_triton if x.is_cuda else gemv_residual_ref)(x, w, bias, residual)


def gemv_norm_silu(x, norm_w, eps, w):
    return (gemv_norm_silu_triton if x.is_cuda else gemv_norm_silu_ref)(x, norm_w, eps, w)


def gemv_norm_gelu_tanh(x, norm_w, eps, w):
    """Gemma's one-token gate/up step: the kernel on a GPU, its reference elsewhere."""
    fn = gemv_norm_gelu_tanh_triton if x.is_cuda else gemv_norm_gelu_tanh_ref
    return fn(x, norm_w, eps, w)


def gemv_norm_rope_kv(x, norm_w, eps, w, bias, positions, cos_sin_cache, k_cache, v_cache,
                      out_cache_loc, num_heads):
    fn = gemv_norm_rope_kv_triton if x.is_cuda else gemv_norm_rope_kv_ref
    return fn(x, norm_w, eps, w, bias, positions, cos_sin_cache, k_cache, v_cache,
              out_cache_loc, num_heads)
