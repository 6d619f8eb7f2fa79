"""Rotary position embedding tables: inverse frequencies (with scaling) and the cos/sin cache.

The cache is computed once, in float32 and on the CPU (explicitly: building a model under a
meta-device context must not turn it into a placeholder), in the same order of operations as
transformers (inverse frequencies in fp32, then position * inv_freq in fp32), so that our
rotary matches the reference bit for bit on the CPU. The layout is the one that
aiollm.kernels.apply_rotary reads: cache[p, :D/2] = cos(p * inv_freq), cache[p, D/2:] = sin.
Each token reads the row its batch names (ForwardBatch.rotary_rows): its position, or for
the first tokens of a LongRoPE prompt longer than the original context, one of the long
factors' rows after the by-position ones (rope_rows.py).
"""

from __future__ import annotations

import math

import torch

from aiollm.model.rope_config import RopeConfig
from aiollm.model.rope_rows import long_prompts


def inv_freq(rope: RopeConfig, head_dim: int, long: bool = False) -> torch.Tensor:
    """[rotary_dim / 2] float32 inverse frequencies after scaling (rotary_dim: rope's, or
    head_dim); `long`: longrope's long factors' (rope_rows.py says which tokens take them)."""
    head_dim = rope.rotary_dim or head_dim  # a partial rotary's frequencies span its part
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    freqs = 1.0 / (rope.theta ** exponents)
    if rope.freq_factors is not None:
        factors = torch.tensor(rope.freq_factors, dtype=torch.float32, device="cpu")
        assert factors.shape == freqs.shape, "rope freq_factors must have head_dim / 2 entries"
        # a GGUF file's linear factor scales on top of its divisors, as llama.cpp runs both
        return freqs / factors / (rope.factor if rope.type == "linear" else 1.0)
    if rope.type == "linear":
        return freqs / rope.factor
    if rope.type == "llama3":
        return _llama3(freqs, rope)
    if rope.type == "dynamic":
        # NTK-aware scaling grows the base only for sequences longer than max_position
        # (original_max_position here), which max_model_len never exceeds; at that length
        # transformers' formula gives the base itself, computed the same way here.
        length = rope.original_max_position
        base = rope.theta * ((rope.factor * length / length) - (rope.factor - 1)) ** (
            head_dim / (head_dim - 2))
        return 1.0 / (base ** exponents)
    if rope.type == "yarn":
        return _yarn(rope, head_dim)
    if rope.type == "longrope":  # as transformers' _compute_longrope_parameters
        factors = torch.tensor(rope.long_factor if long else rope.short_factor,
                               dtype=torch.float32, device="cpu")
        return 1.0 / (factors * rope.theta ** exponents)
    return freqs


def _llama3(freqs: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Llama 3.1 scaling: wavelengths shorter than original_max / high_freq_factor stay as they
    # are, those longer than original_max / low_freq_factor are stretched by `factor`, and the
    # band between is interpolated linearly in (original_max / wavelength).
    wavelen = 2 * math.pi / freqs
    short_limit = rope.original_max_position / rope.high_freq_factor
    long_limit = rope.original_max_position / rope.low_freq_factor
    stretched = torch.where(wavelen > long_limit, freqs / rope.factor, freqs)
    t = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - t) * stretched / rope.factor + t * stretched
    in_band = (wavelen >= short_limit) & (wavelen <= long_limit)
    return torch.where(in_band, blended, stretched)


def _yarn(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    # YaRN (Peng et al. 2023): dimensions that rotate more than beta_fast times over the
    # original context keep their frequency, those rotating fewer than beta_slow times are
    # interpolated by `factor`, with a linear ramp between; the same operations, in the same
    # order, as transformers' _compute_yarn_parameters.
    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(rope.original_max_position / (rotations * 2 * math.pi))
                / (2 * math.log(rope.theta)))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low)
            / (high - low)).clamp(0, 1)
    pos_freqs = rope.theta ** (torch.arange(0, head_dim, 2, device="cpu").float() / head_dim)
    extrapolated = 1 - ramp
    return (1.0 / (rope.factor * pos_freqs) * (1 - extrapolated)
            + 1.0 / pos_freqs * extrapolated)


def cos_sin_cache(rope: RopeConfig, head_dim: int, max_len: int, device=None) -> torch.Tensor:
    """[rows, head_dim] float32: cos in the first half of each row, sin in the second; rows
    is max_len, or max_len + original_max_position for a LongRoPE model served past its
    original context (rope_rows.long_prompts): row p is position p's as _longrope_rows gives
    it (short factors below original_max_position, long from there on), row max_len + p
    (p < original_max_position) position p's under the long factors, which the tokens of a
    prompt longer than the original context read there (rope_rows.py).

    A partial rotary (rope.rotary_dim < head_dim) fills the rest of each half with cos 1 and
    sin 0: those pairs pass through the rotation unchanged (exactly: x * 1 - y * 0), once the
    loader has ordered each q and k head so that the rotated pairs come first in each half
    (weights_layout.rotary_head_order)."""
    positions = torch.arange(max_len, dtype=torch.int64, device="cpu").float()
    angles = positions[:, None] * inv_freq(rope, head_dim)[None, :]
    if rope.type == "longrope":
        _longrope_rows(angles, positions, rope, head_dim)
        if long_prompts(rope, max_len) is not None:
            first = positions[: rope.original_max_position, None]
            angles = torch.cat((angles, first * inv_freq(rope, head_dim, long=True)[None, :]))
    cos, sin = angles.cos(), angles.sin()
    if rope.attention_factor != 1.0:  # yarn, longrope: scales q.k through both rotated vectors
        cos, sin = cos * rope.attention_factor, sin * rope.attention_factor
    rest = head_dim // 2 - cos.shape[1]
    if rest:
        cos = torch.cat((cos, torch.ones(cos.shape[0], rest, device="cpu")), dim=-1)
        sin = torch.cat((sin, torch.zeros(sin.shape[0], rest, device="cpu")), dim=-1)
    return torch.cat((cos, sin), dim=-1).to(device)


def _longrope_rows(angles: torch.Tensor, positions: torch.Tensor, rope: RopeConfig,
                   head_dim: int) -> None:
    """Rotate positions >= original_max_position by the long factors' frequencies, in place.

    transformers (its dynamic rope update) picks one set for a whole forward by its longest
    position: the short factors while the sequence fits in original_max_position, the long
    ones for every position once it does not, recomputing nothing already in its KV cache.
    A sequence whose prompt fits and that grows past original_max_position while decoding
    therefore keeps its short-factor keys and rotates each later token by the long factors:
    position p takes the set transformers uses for a sequence ending there, which is these
    rows, transformers' cached decode exactly. A prompt longer than original_max_position
    is rotated entirely by the long factors: its first tokens read the rows after these
    (cos_sin_cache, rope_rows.py). (vLLM keeps both sets too, but takes the long one for
    every token of a batch in which any position passes original_max_position: a request's
    rotation then depends on its batch mates, which a shared prefix cache cannot allow.)"""
    n = rope.original_max_position
    if len(positions) > n:
        angles[n:] = positions[n:, None] * inv_freq(rope, head_dim, long=True)[None, :]
