"""Gated activations over the fused gate_up projection output: act(gate) * up.

SiLU gives SwiGLU (Llama, Qwen, Mistral), GELU's tanh approximation GeGLU (Gemma; Shazeer
2020, "GLU Variants Improve Transformer"): gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x +
0.044715 x^3))), as torch.nn.functional.gelu(approximate="tanh") computes it, which equals
x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)): the form the kernels use (Triton's sigmoid, no
tanh). One kernel, the activation a constexpr, so the SiLU variant compiles as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

SILU, GELU_TANH = 0, 1


@triton.jit
def gelu_tanh(x):
    """GELU's tanh approximation of float32 x (see the module doc): 1.5957691216057308 is
    2 sqrt(2 / pi), since tanh(u) = 2 sigmoid(2u) - 1."""
    return x * tl.sigmoid(1.5957691216057308 * x * (1.0 + 0.044715 * x * x))


@triton.jit
def _act_and_mul_kernel(X, Out, stride_x, stride_o, I, BLOCK: tl.constexpr,
                        ACT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + I + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        out = gate * tl.sigmoid(gate) * up
    else:
        out = gelu_tanh(gate) * up
    tl.store(Out + row * stride_o + cols, out.to(Out.dtype.element_ty), mask=mask)


def _act_and_mul_triton(x: torch.Tensor, act: int) -> torch.Tensor:
    assert x.dim() == 2 and x.stride(1) == 1 and x.shape[1] % 2 == 0, "x must be [T, 2I]"
    T, I = x.shape[0], x.shape[1] // 2
    out = torch.empty((T, I), dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    block = min(1024, triton.next_power_of_2(I))
    _act_and_mul_kernel[(T, triton.cdiv(I, block))](
        x, out, x.stride(0), out.stride(0), I, BLOCK=block, ACT=act, num_warps=4
    )
    return out


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(x[:, :I]) * x[:, I:] in float32, rounded to x's dtype."""
    return _act_and_mul_triton(x, SILU)


def gelu_tanh_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: gelu_tanh(x[:, :I]) * x[:, I:] in float32, rounded to x's dtype."""
    return _act_and_mul_triton(x, GELU_TANH)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    I = x.shape[-1] // 2
    return (F.silu(x[..., :I].float()) * x[..., I:].float()).to(x.dtype)


def gelu_tanh_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """[..., 2I] -> [..., I] in x's dtype: torch's gelu(approximate="tanh") of the gate half
    times the up half, in float32 (the CPU path and the kernels' reference)."""
    I = x.shape[-1] // 2
    gate = F.gelu(x[..., :I].float(), approximate="tanh")
    return (gate * x[..., I:].float()).to(x.dtype)
