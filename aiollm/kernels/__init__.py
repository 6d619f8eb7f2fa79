"""The model's compute kernels: Triton on CUDA tensors, the PyTorch reference otherwise.

Each family lives in its own module with its Triton kernel, a wrapper (`*_triton`, also
runnable on the CPU under TRITON_INTERPRET=1, which is how the tests check it) and the
reference (`*_ref`, the CPU path); a family too long for one file keeps its Triton code in
`<family>_kernel.py` and its launch configs in `<family>_configs.py` beside the module of
its launches (decode_attention, fused_moe_gemm). Each wrapper's docstring gives its shapes
and dtypes.
"""

from __future__ import annotations

import torch

from aiollm.kernels.activation import (
    gelu_tanh_and_mul_ref,
    gelu_tanh_and_mul_triton,
    silu_and_mul_ref,
    silu_and_mul_triton,
)
from aiollm.kernels.decode_attention import decode_attention_ref, decode_attention_triton
from aiollm.kernels.extend_attention import extend_attention_ref, extend_attention_triton
from aiollm.kernels.fused_moe import fused_moe_decode_ref, fused_moe_ref, fused_moe_triton
from aiollm.kernels.fused_moe_gemv import fused_moe_decode_triton
from aiollm.kernels.kv_store import store_kv_ref, store_kv_triton
from aiollm.kernels.moe_align import moe_route_ref, moe_route_triton
from aiollm.kernels.norm import (
    rms_norm_add_ref,
    rms_norm_add_triton,
    rms_norm_ref,
    rms_norm_triton,
)
from aiollm.kernels.rotary import apply_rotary_ref, apply_rotary_triton, rotary_store_kv_triton

__all__ = [
    "rms_norm", "rms_norm_add", "silu_and_mul", "gelu_tanh_and_mul", "apply_rotary",
    "store_kv", "rotary_store_kv", "decode_attention", "extend_attention", "fused_moe",
    "fused_moe_decode",
    "rms_norm_triton", "rms_norm_add_triton", "silu_and_mul_triton", "gelu_tanh_and_mul_triton",
    "apply_rotary_triton", "store_kv_triton", "rotary_store_kv_triton",
    "decode_attention_triton", "extend_attention_triton", "fused_moe_triton",
    "fused_moe_decode_triton",
    "moe_route_triton",
    "rms_norm_ref", "rms_norm_add_ref", "silu_and_mul_ref", "gelu_tanh_and_mul_ref",
    "apply_rotary_ref", "store_kv_ref",
    "decode_attention_ref", "extend_attention_ref", "fused_moe_ref", "moe_route_ref",
    "fused_moe_decode_ref",
]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """rmsnorm(x) * weight, or with `residual`: (rmsnorm(x + residual) * weight, x + residual),
    the sum in float32 (the residual stream), written into `residual_out` when given (float32
    [T, H]; it may be `residual` itself: the add then happens in place)."""
    fn = rms_norm_triton if x.is_cuda else rms_norm_ref
    return fn(x, weight, eps, residual, residual_out)


def rms_norm_add(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor) -> torch.Tensor:
    """residual + rmsnorm(x) * weight: x [T, H], residual [T, H] -> [T, H] float32 (the
    residual stream), in place when residual is float32 (norm.rms_norm_add_triton)."""
    fn = rms_norm_add_triton if x.is_cuda else rms_norm_add_ref
    return fn(x, weight, eps, residual)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(x[:, :I]) * x[:, I:]."""
    return silu_and_mul_triton(x) if x.is_cuda else silu_and_mul_ref(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: gelu_tanh(x[:, :I]) * x[:, I:] (GELU's tanh approximation: GeGLU,
    Gemma's MLP, as torch's gelu(approximate="tanh"))."""
    return gelu_tanh_and_mul_triton(x) if x.is_cuda else gelu_tanh_and_mul_ref(x)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    """Rotates q [T,Hq,D] and k [T,Hkv,D] in place by their token positions."""
    fn = apply_rotary_triton if q.is_cuda else apply_rotary_ref
    fn(q, k, positions, cos_sin_cache)


def rotary_store_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    out_cache_loc: torch.Tensor, q_norm_w: torch.Tensor | None = None,
    k_norm_w: torch.Tensor | None = None, eps: float = 0.0,
) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D] (views of the projection): with q_norm_w / k_norm_w
    [D], each head RMS-normalised (eps) and scaled first; then apply_rotary(q, k, ...) and
    store_kv(k_cache, v_cache, k, v, out_cache_loc); one fused kernel on CUDA. Returns q,
    rotated (in place on CUDA; the reference's norm makes a new tensor)."""
    if q.is_cuda:
        rotary_store_kv_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache,
                               out_cache_loc, q_norm_w, k_norm_w, eps)
        return q
    if q_norm_w is not None:
        T, D = q.shape[0], q.shape[-1]
        q = rms_norm_ref(q.reshape(-1, D), q_norm_w, eps).view(T, -1, D)
        k = rms_norm_ref(k.reshape(-1, D), k_norm_w, eps).view(T, -1, D)
    apply_rotary_ref(q, k, positions, cos_sin_cache)
    store_kv_ref(k_cache, v_cache, k, v, out_cache_loc)
    return q


def store_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out_cache_loc: torch.Tensor,
) -> None:
    """k_cache[out_cache_loc] = k; v_cache[out_cache_loc] = v."""
    fn = store_kv_triton if k.is_cuda else store_kv_ref
    fn(k_cache, v_cache, k, v, out_cache_loc)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    out: torch.Tensor | None = None, window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """One query token per request over req_to_token[req_rows[b], :seq_lens[b]] -> [B,Hq,D],
    written into `out` when given (q's shape and dtype, contiguous head dim); with a sliding
    `window` of W tokens over its last W positions only (None or 0: no window); each score
    soft-capped at `softcap` (None or 0: none; decode_attention_ref)."""
    fn = decode_attention_triton if q.is_cuda else decode_attention_ref
    return fn(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
              out=out, window=window, softcap=softcap)


def extend_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
    q_start_loc: torch.Tensor, sm_scale: float, max_extend_len: int,
    out: torch.Tensor | None = None, window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of the new tokens over prefix + themselves -> [T,Hq,D], written into
    `out` when given (rows of the requests given; q's shape and dtype, contiguous head dim);
    with a sliding `window` of W tokens the query at position p sees keys (p - W, p] only
    (None or 0: no window); each score soft-capped at `softcap` (None or 0: none)."""
    fn = extend_attention_triton if q.is_cuda else extend_attention_ref
    return fn(q, k_cache, v_cache, req_to_token, req_rows, prefix_lens, extend_lens,
              q_start_loc, sm_scale, max_extend_len, out=out, window=window,
              softcap=softcap)


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, router_logits: torch.Tensor,
    top_k: int, renormalize: bool, expert_start: int = 0,
) -> torch.Tensor:
    """Mixture-of-experts MLP of x [T,H] -> [T,H]: route by router_logits [T, E_all] (softmax,
    top_k, renormalised if asked), then the experts [expert_start, expert_start + E) held in
    w13 [E,2I,H] and w2 [E,H,I]; routes to experts not held here contribute 0."""
    if x.is_cuda:
        weights, ids = moe_route_triton(router_logits, top_k, renormalize)
        return fused_moe_triton(x, w13, w2, weights, ids, expert_start, router_logits.shape[1])
    weights, ids = moe_route_ref(router_logits, top_k, renormalize)
    return fused_moe_ref(x, w13, w2, weights, ids, expert_start)


def fused_moe_decode(
    residual: torch.Tensor, norm_w: torch.Tensor, eps: float, router_logits: torch.Tensor,
    w13: torch.Tensor, w2: torch.Tensor, top_k: int, renormalize: bool, expert_start: int = 0,
) -> torch.Tensor:
    """The mixture-of-experts MLP of a one-token step on the float32 residual stream
    residual [T, H], updated in place and returned: residual += fused_moe(rmsnorm(residual) *
    norm_w, ...) with router_logits [T, E_all] float32 the router's output on that normalised
    stream (see fused_moe_gemv.fused_moe_decode_triton)."""
    fn = fused_moe_decode_triton if residual.is_cuda else fused_moe_decode_ref
    return fn(residual, norm_w, eps, router_logits, w13, w2, top_k, renormalize, expert_start)
