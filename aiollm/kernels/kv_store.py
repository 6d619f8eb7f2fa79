"""Writes the step's new K/V vectors into their token slots of one layer's KV pool."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    K, V, KCache, VCache, Loc,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcs, stride_kch, stride_vcs, stride_vch,
    HKV: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Loc + t).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h < HKV)[:, None] & (d < D)[None, :]
    k = tl.load(K + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(V + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    tl.store(KCache + slot * stride_kcs + h[:, None] * stride_kch + d[None, :], k, mask=mask)
    tl.store(VCache + slot * stride_vcs + h[:, None] * stride_vch + d[None, :], v, mask=mask)


def store_kv_triton(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out_cache_loc: torch.Tensor,
) -> None:
    T, HKV, D = k.shape
    assert v.shape == k.shape and out_cache_loc.shape == (T,)
    assert k_cache.shape[1:] == (HKV, D) and v_cache.shape == k_cache.shape
    assert k.dtype == k_cache.dtype and v.dtype == v_cache.dtype
    assert all(t.stride(2) == 1 for t in (k, v, k_cache, v_cache))
    if T == 0:
        return
    _store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, out_cache_loc,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        HKV=HKV, D=D, BLOCK_H=triton.next_power_of_2(HKV), BLOCK_D=triton.next_power_of_2(D),
        num_warps=4,
    )


def store_kv_ref(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out_cache_loc: torch.Tensor,
) -> None:
    k_cache[out_cache_loc] = k
    v_cache[out_cache_loc] = v
