"""RMSNorm, optionally fused with the residual add that precedes it in a decoder layer.

The residual stream (x + residual) comes back in float32 whatever the input dtype: in bf16 it
would be rounded to 8 bits of mantissa at every add, and over a deep model those roundings
are the largest part of bf16's drift from the fp32 reference. The sub-block outputs stay in
the model dtype."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    X, Res, W, Out, ResOut,
    stride_x, stride_r, stride_o, stride_ro,
    H, eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ADD_AFTER: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(Res + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(ResOut + row * stride_ro + cols, x.to(ResOut.dtype.element_ty), mask=mask)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * rstd * w
    if ADD_AFTER:  # the normed x added to the stream: ResOut = Res + y (Out is ResOut)
        y += tl.load(Res + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + cols, y.to(Out.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    assert x.dim() == 2 and x.stride(1) == 1, "x must be [T, H] with contiguous rows"
    T, H = x.shape
    assert weight.shape == (H,) and weight.is_contiguous()
    out = torch.empty_like(x)
    # each row is read whole before it is written: residual_out may be residual itself
    res_out = _residual_out(residual, residual_out, x)
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(1) == 1
    if T == 0:
        return out if residual is None else (out, res_out)
    block, num_warps = _row_block(H)
    _rms_norm_kernel[(T,)](
        x, residual if residual is not None else x, weight, out,
        res_out if res_out is not None else out,
        x.stride(0), residual.stride(0) if residual is not None else 0,
        out.stride(0), res_out.stride(0) if res_out is not None else 0,
        H, eps,
        BLOCK=block, HAS_RESIDUAL=residual is not None, ADD_AFTER=False, num_warps=num_warps,
    )
    return out if residual is None else (out, res_out)


def _row_block(H: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of _rms_norm_kernel for rows of H features: one program a row."""
    block = triton.next_power_of_2(H)
    return block, 4 if block <= 1024 else 8 if block <= 4096 else 16


def rms_norm_add_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                        residual: torch.Tensor) -> torch.Tensor:
    """residual + rmsnorm(x) * weight in float32 (the residual stream after a sub-block whose
    output is normed before it is added: Gemma 2/3's post-attention and post-feed-forward
    norms): x [T, H] any float dtype, residual [T, H] -> [T, H] float32, written into
    residual itself when it is float32. The normed x is not rounded to x's dtype first."""
    assert x.dim() == 2 and x.stride(1) == 1, "x must be [T, H] with contiguous rows"
    T, H = x.shape
    assert weight.shape == (H,) and weight.is_contiguous()
    assert residual.shape == x.shape and residual.stride(1) == 1
    out = residual if residual.dtype == torch.float32 else torch.empty(
        x.shape, dtype=torch.float32, device=x.device)
    if T == 0:
        return out
    block, num_warps = _row_block(H)
    # each row's residual is read before its sum is written: out may be residual itself
    _rms_norm_kernel[(T,)](
        x, residual, weight, out, out, x.stride(0), residual.stride(0), out.stride(0), 0,
        H, eps, BLOCK=block, HAS_RESIDUAL=False, ADD_AFTER=True, num_warps=num_warps,
    )
    return out


def rms_norm_add_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                     residual: torch.Tensor) -> torch.Tensor:
    """rms_norm_add_triton's reference (the CPU path): the same sum, in float32."""
    y = residual.float() + rms_norm_ref(x.float(), weight, eps)
    if residual.dtype == torch.float32:
        return residual.copy_(y)
    return y


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    res_out = _residual_out(residual, residual_out, x)
    if res_out is not None:
        res_out.copy_(x.float() + residual.float())
    xf = x.float() if res_out is None else res_out
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    out = out.to(x.dtype)
    return out if res_out is None else (out, res_out)


def _residual_out(residual: torch.Tensor | None, given: torch.Tensor | None,
                  x: torch.Tensor) -> torch.Tensor | None:
    """Where the residual sum goes: None without a residual (then `given` is refused), else
    `given` (float32, x's shape, contiguous rows) or a new tensor."""
    if residual is None:
        if given is not None:
            raise ValueError("residual_out needs a residual to add")
        return None
    if given is None:
        return torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if given.shape != x.shape or given.dtype != torch.float32 or given.stride(1) != 1:
        raise ValueError(f"residual_out must be float32 {tuple(x.shape)} with contiguous rows, "
                         f"got {given.dtype} {tuple(given.shape)}")
    return given
