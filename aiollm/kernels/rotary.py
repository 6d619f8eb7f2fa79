"""Rotary position embedding applied in place to q and k (neox / HF `rotate_half` layout).

cos_sin_cache[p] holds cos(p * inv_freq) in its first D/2 entries and sin in the last D/2;
the two halves of each head vector are the rotated pairs: (x1, x2) -> (x1 cos - x2 sin,
x2 cos + x1 sin).

rotary_store_kv_triton fuses the rotation with the KV store of the same layer: one kernel
per token instead of two (a decode step of a 32-layer model launches 32 fewer kernels), and
for models with per-head q/k RMSNorms (Qwen3) those norms too (two launches fewer a layer).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cos_sin(CosSin, Positions, t, stride_cs, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """cos and sin of token t's position, and the half-dimension index j with its mask."""
    pos = tl.load(Positions + t).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)
    jmask = j < HALF
    cos = tl.load(CosSin + pos * stride_cs + j, mask=jmask, other=0.0)
    sin = tl.load(CosSin + pos * stride_cs + HALF + j, mask=jmask, other=0.0)
    return cos, sin, j, jmask


@triton.jit
def _load_halves(ptrs, mask, NormW, eps, j, jmask, NORM: tl.constexpr, HALF: tl.constexpr):
    """The two halves [heads, BLOCK_HALF] of each head vector at ptrs, float32; with NORM each
    head RMS-normalised over its 2 * HALF entries and scaled by NormW [2 * HALF] first (the
    q/k norms of Qwen3, folded into the rotation: no rounding in between; not OLMo-2's,
    which normalise the whole projection, all heads at once)."""
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)
        g1 = tl.load(NormW + j, mask=jmask, other=0.0).to(tl.float32)
        g2 = tl.load(NormW + HALF + j, mask=jmask, other=0.0).to(tl.float32)
        x1 = x1 * rstd[:, None] * g1[None, :]
        x2 = x2 * rstd[:, None] * g2[None, :]
    return x1, x2


@triton.jit
def _rotate_heads(Ptr, stride_h, cos, sin, j, jmask, NUM_HEADS: tl.constexpr,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, NormW, eps, NORM: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    mask = (h < NUM_HEADS)[:, None] & jmask[None, :]
    ptrs = Ptr + h[:, None] * stride_h + j[None, :]
    x1, x2 = _load_halves(ptrs, mask, NormW, eps, j, jmask, NORM, HALF)
    tl.store(ptrs, (x1 * cos[None, :] - x2 * sin[None, :]).to(Ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(Ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _rotary_kernel(
    Q, K, Positions, CosSin,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cs,
    HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cos, sin, j, jmask = _cos_sin(CosSin, Positions, t, stride_cs, HALF, BLOCK_HALF)
    _rotate_heads(Q + t * stride_qt, stride_qh, cos, sin, j, jmask, HQ, HALF, BLOCK_HQ,
                  Q, 0.0, False)
    _rotate_heads(K + t * stride_kt, stride_kh, cos, sin, j, jmask, HKV, HALF, BLOCK_HKV,
                  K, 0.0, False)


@triton.jit
def _rotary_store_kernel(
    Q, K, V, Positions, CosSin, KCache, VCache, Loc, QNormW, KNormW, eps,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cs,
    stride_kcs, stride_kch, stride_vcs, stride_vch,
    HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
    NORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Loc + t).to(tl.int64)
    cos, sin, j, jmask = _cos_sin(CosSin, Positions, t, stride_cs, HALF, BLOCK_HALF)
    _rotate_heads(Q + t * stride_qt, stride_qh, cos, sin, j, jmask, HQ, HALF, BLOCK_HQ,
                  QNormW, eps, NORM)
    # k: rotated into its cache slot (and in place); v: copied to its slot
    h = tl.arange(0, BLOCK_HKV)
    mask = (h < HKV)[:, None] & jmask[None, :]
    src = K + t * stride_kt + h[:, None] * stride_kh + j[None, :]
    x1, x2 = _load_halves(src, mask, KNormW, eps, j, jmask, NORM, HALF)
    r1 = (x1 * cos[None, :] - x2 * sin[None, :]).to(KCache.dtype.element_ty)
    r2 = (x2 * cos[None, :] + x1 * sin[None, :]).to(KCache.dtype.element_ty)
    dst = KCache + slot * stride_kcs + h[:, None] * stride_kch + j[None, :]
    tl.store(dst, r1, mask=mask)
    tl.store(dst + HALF, r2, mask=mask)
    tl.store(src, r1, mask=mask)
    tl.store(src + HALF, r2, mask=mask)
    vsrc = V + t * stride_vt + h[:, None] * stride_vh + j[None, :]
    vdst = VCache + slot * stride_vcs + h[:, None] * stride_vch + j[None, :]
    tl.store(vdst, tl.load(vsrc, mask=mask), mask=mask)
    tl.store(vdst + HALF, tl.load(vsrc + HALF, mask=mask), mask=mask)


def rotary_store_kv_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    out_cache_loc: torch.Tensor, q_norm_w: torch.Tensor | None = None,
    k_norm_w: torch.Tensor | None = None, eps: float = 0.0,
) -> None:
    """apply_rotary(q, k) then store_kv(k, v) at out_cache_loc, in one kernel; with
    q_norm_w and k_norm_w [D] each q and k head is RMS-normalised (eps) and scaled by them
    first (the per-head q/k norms), in float32 without rounding before the rotation."""
    T, HQ, D = q.shape
    HKV = k.shape[1]
    assert k.shape == (T, HKV, D) and v.shape == k.shape and positions.shape == (T,)
    assert out_cache_loc.shape == (T,) and k_cache.shape[1:] == (HKV, D)
    assert v_cache.shape == k_cache.shape and k.dtype == k_cache.dtype == v.dtype
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1
    assert k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert D % 2 == 0 and cos_sin_cache.shape[1] == D and cos_sin_cache.stride(1) == 1
    assert cos_sin_cache.dtype == torch.float32
    if T == 0:
        return
    norm = q_norm_w is not None
    assert norm == (k_norm_w is not None), "q and k norms come together"
    assert not norm or (q_norm_w.shape == (D,) and k_norm_w.shape == (D,)
                        and q_norm_w.is_contiguous() and k_norm_w.is_contiguous())
    half = D // 2
    _rotary_store_kernel[(T,)](
        q, k, v, positions, cos_sin_cache, k_cache, v_cache, out_cache_loc,
        q_norm_w if norm else q, k_norm_w if norm else k, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_sin_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        HQ=HQ, HKV=HKV, HALF=half,
        BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HKV=triton.next_power_of_2(HKV),
        BLOCK_HALF=triton.next_power_of_2(half), NORM=norm,
        num_warps=4,
    )


def apply_rotary_triton(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    T, HQ, D = q.shape
    HKV = k.shape[1]
    assert k.shape == (T, HKV, D) and positions.shape == (T,)
    assert q.stride(2) == 1 and k.stride(2) == 1, "head vectors must be contiguous"
    assert D % 2 == 0 and cos_sin_cache.shape[1] == D and cos_sin_cache.stride(1) == 1
    assert cos_sin_cache.dtype == torch.float32
    if T == 0:
        return
    half = D // 2
    _rotary_kernel[(T,)](
        q, k, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        HQ=HQ, HKV=HKV, HALF=half,
        BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HKV=triton.next_power_of_2(HKV),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )


def apply_rotary_ref(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        x.copy_(rotated.to(x.dtype))
