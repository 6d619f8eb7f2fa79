"""Rotary position embedding tables: inverse frequencies (with scaling) and the cos/sin cache.

The cache is computed once, in float32 and on the CPU (explicitly: building a model under a
meta-device context must not turn it into a placeholder), in the same order of operations as
transformers (inverse frequencies in fp32, then position * inv_freq in fp32), so that our
rotary matches the reference bit for bit on the CPU. The layout is the one that
aiollm.kernels.apply_rotary reads: cache[p, :D/2] = cos(p * inv_freq), cache[p, D/2:] = sin.
"""

from __future__ import annotations

import math

import torch

from aiollm.model.rope_config import RopeConfig


def inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies after scaling."""
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
    """[max_len, head_dim] float32: cos in the first half of each row, sin in the second."""
    freqs = inv_freq(rope, head_dim)
    positions = torch.arange(max_len, dtype=torch.int64, device="cpu").float()
    angles = positions[:, None] * freqs[None, :]
    cos, sin = angles.cos(), angles.sin()
    if rope.attention_factor != 1.0:  # yarn: scales q.k through both rotated vectors
        cos, sin = cos * rope.attention_factor, sin * rope.attention_factor
    return torch.cat((cos, sin), dim=-1).to(device)
