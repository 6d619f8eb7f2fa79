"""Sampling kernels: counter-based noise and one pass over each row of logits.

row_scan gives, per row, the argmax and logsumexp and (with noise keys) a Gumbel-max draw,
in one read of the logits: Triton on CUDA, row_scan_ref (PyTorch) otherwise. The noise of
(seed, step, token id) is a keyed integer hash, identical on any row, in any batch, on CPU
and CUDA (see aiollm/model/sampler.py for how the sampler uses it).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


# ---- counter-based noise -------------------------------------------------------------------
_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def _s32(x: int) -> int:
    """A 32-bit constant as the signed int32 torch needs."""
    return x - (1 << 32) if x >= 1 << 31 else x


def _shr32(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


_U30, _U27, _U31, _U32 = (np.uint64(n) for n in (30, 27, 31, 32))
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN64, _LOW32 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xFFFFFFFF)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64, in place (numpy wraps the products mod 2^64)."""
    z ^= z >> _U30
    z *= _M1
    z ^= z >> _U27
    z *= _M2
    z ^= z >> _U31
    return z


def row_keys(seed: np.ndarray, step: np.ndarray) -> np.ndarray:
    """[2, B] int32 noise keys of each row's (seed, step): output `step` of splitmix64
    seeded with `seed`. On the host, [B] numpy work saves some twenty tiny device kernels."""
    z = np.asarray(step, dtype=np.int64).view(np.uint64) * _GOLDEN64
    z += np.asarray(seed, dtype=np.int64).view(np.uint64)
    _mix64(z)
    out = np.empty((2, len(z)), dtype=np.uint32)
    out[0] = z & _LOW32
    out[1] = z >> _U32
    return out.view(np.int32)


def uniform_noise(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """u in (0, 1) for token ids [B, C] (or [1, C], broadcast) of rows with keys [2, B].

    A keyed 32-bit integer hash (Wellons' lowbias32 finaliser) in int32 lanes: the noise of
    (seed, step, id) is the same on any row, in any batch, on CPU and CUDA."""
    x = (ids.to(torch.int32) ^ keys[0, :, None]) * _s32(0x9E3779B1) + keys[1, :, None]
    x = (x ^ _shr32(x, 16)) * _s32(0x7FEB352D)
    x = (x ^ _shr32(x, 15)) * _s32(0x846CA68B)
    x = x ^ _shr32(x, 16)
    # the top value's + 0.5 rounds to 2**24 in float32: u = 1 would be Gumbel noise +inf
    # (a certain win, or NaN on a -inf logit, which argmax takes)
    return (((x & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))).clamp_(max=_BELOW_ONE)


# ---- sampling ------------------------------------------------------------------------------
def gumbel_argmax_ref(
    values: torch.Tensor, scale_floor: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Per row, the index of argmax(values * scale + g) over the entries >= floor, where
    values [B, C] are logits, scale_floor = [1/temperature, floor] ([2, B]) and g is the
    Gumbel noise -log(-log(u)) of (keys [2, B], ids [B or 1, C]). A row with no entry
    >= its floor (e.g. a floor of +inf) gives 0."""
    keep = values >= scale_floor[1, :, None]
    score = values * scale_floor[0, :, None] - torch.log(-torch.log(uniform_noise(keys, ids)))
    return torch.where(keep, score, float("-inf")).argmax(dim=-1)


def row_scan_ref(values, scale_floor=None, keys=None, ids=None, stats=True):
    """(argmax [B], logsumexp [B, 1]) of values if stats, and the Gumbel draw if keys."""
    greedy = lse = drawn = None
    if stats:
        greedy, lse = values.argmax(dim=-1), torch.logsumexp(values, dim=-1, keepdim=True)
    if keys is not None:
        drawn = gumbel_argmax_ref(values, scale_floor, keys, ids)
    return greedy, lse, drawn


if triton is not None:

    @triton.jit(do_not_specialize=["B"])  # the batch size: one variant for every size
    def _row_scan_kernel(
        Values, Ids, ScaleFloor, Keys, Fl, Ix,
        B, C, stride_v, stride_ids, n_blocks,
        BLOCK: tl.constexpr, STATS: tl.constexpr, SAMPLE: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        cols = blk * BLOCK + tl.arange(0, BLOCK)
        mask = cols < C
        v = tl.load(Values + row * stride_v + cols, mask=mask, other=float("-inf"))
        out = row * n_blocks + blk
        plane = B * n_blocks
        m = tl.max(v, axis=0)
        if STATS:  # block max, its index, and sum(exp(v - max)) for the logsumexp
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            tl.store(Fl + out, m)
            tl.store(Fl + plane + out, tl.sum(tl.exp(v - m_safe), axis=0))
            tl.store(Ix + out, blk * BLOCK + tl.argmax(v, axis=0, tie_break_left=True))
        if SAMPLE:
            floor = tl.load(ScaleFloor + B + row)
            best = tl.full([], float("-inf"), tl.float32)
            at = blk * BLOCK  # what a block with nothing kept gives: -inf at its first column
            # the hash only where the block keeps a token: a block wholly below the floor
            # (most of a top-k row's) skips it
            if m >= floor:  # uniform_noise's hash in uint32 (>> logical)
                ids = tl.load(Ids + row * stride_ids + cols, mask=mask, other=0)
                k1 = tl.load(Keys + row).to(tl.uint32, bitcast=True)
                k2 = tl.load(Keys + B + row).to(tl.uint32, bitcast=True)
                x = (ids.to(tl.uint32) ^ k1) * tl.full([BLOCK], 0x9E3779B1, tl.uint32) + k2
                x = (x ^ (x >> 16)) * tl.full([BLOCK], 0x7FEB352D, tl.uint32)
                x = (x ^ (x >> 15)) * tl.full([BLOCK], 0x846CA68B, tl.uint32)
                x = x ^ (x >> 16)
                u = ((x & 0xFFFFFF).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
                u = tl.minimum(u, 1.0 - 1.0 / 16777216.0)  # uniform_noise's clamp
                score = v * tl.load(ScaleFloor + row) - tl.log(-tl.log(u))
                score = tl.where(mask & (v >= floor), score, float("-inf"))
                best = tl.max(score, axis=0)
                at = blk * BLOCK + tl.argmax(score, axis=0, tie_break_left=True)
            tl.store(Fl + 2 * plane + out, best)
            tl.store(Ix + plane + out, at)


def row_scan_triton(values, scale_floor=None, keys=None, ids=None, stats=True):
    """row_scan_ref in one read of `values`. Each program reduces a block of one row; torch
    combines the blocks ([B, C / 2048], small). Splitting rows keeps a batch of one fast."""
    b, c = values.shape
    assert values.stride(1) == 1
    sample = keys is not None
    if sample:
        assert ids.stride(1) == 1 and ids.shape[1] == c
        assert scale_floor.is_contiguous() and keys.is_contiguous()
    block = min(2048, triton.next_power_of_2(c))
    n_blocks = triton.cdiv(c, block)
    fl = torch.empty(3, b, n_blocks, dtype=torch.float32, device=values.device)
    ix = torch.empty(2, b, n_blocks, dtype=torch.int64, device=values.device)
    _row_scan_kernel[(b, n_blocks)](
        values, ids if sample else values, scale_floor if sample else values,
        keys if sample else values, fl, ix,
        b, c, values.stride(0), (ids.stride(0) if ids.shape[0] > 1 else 0) if sample else 0,
        n_blocks, BLOCK=block, STATS=stats, SAMPLE=sample, num_warps=8 if block > 1024 else 4,
    )  # fmt: skip
    greedy = lse = drawn = None
    if stats:
        top = fl[0].argmax(dim=-1, keepdim=True)  # the first block holding the row max
        greedy = ix[0].gather(1, top).squeeze(1)
        row_max = fl[0].gather(1, top)
        lse = row_max + (fl[1] * (fl[0] - row_max).exp()).sum(dim=-1, keepdim=True).log()
    if sample:
        drawn = ix[1].gather(1, fl[2].argmax(dim=-1, keepdim=True)).squeeze(1)
    return greedy, lse, drawn


def row_scan(values, scale_floor=None, keys=None, ids=None, stats=True):
    """Per row of values [B, C]: argmax and logsumexp (stats) and the Gumbel-max draw of
    gumbel_argmax_ref (keys given; 0 on a row with nothing at or above its floor, whose
    noise is not computed). Triton on CUDA, the reference otherwise."""
    if values.is_cuda and triton is not None and values.shape[0] > 0:
        return row_scan_triton(values, scale_floor, keys, ids, stats)
    return row_scan_ref(values, scale_floor, keys, ids, stats)
