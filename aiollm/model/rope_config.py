"""RopeConfig: a checkpoint's rotary position embedding (theta and scaling), and how it is read
from a Hugging Face config (transformers 5's rope_parameters, 4.x's rope_theta and
rope_scaling). rope.py computes the frequencies from it; GGUF metadata fills it in
weights_gguf.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn")


@dataclass(slots=True)
class RopeConfig:
    """The rotary embedding of a checkpoint: base `theta` and one of transformers' scalings
    (linear and dynamic NTK; Llama 3.1's per-band llama3; YaRN, Peng et al. 2023,
    arXiv:2309.00071), lengths in tokens."""

    theta: float = 10000.0
    type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    # llama3, yarn: context length before the scaling; dynamic: max_position_embeddings
    original_max_position: int = 8192
    attention_factor: float = 1.0  # yarn: multiplies cos and sin
    beta_fast: float = 32.0  # yarn: the ramp between extrapolated and interpolated frequencies
    beta_slow: float = 1.0
    truncate: bool = True  # yarn: round the ramp's ends to whole dimensions
    # llama.cpp stores llama3 scaling as precomputed per-frequency divisors (the rope_freqs
    # tensor of a GGUF file); when present they replace `type`-based scaling, but for a
    # linear factor, which divides on top of them as llama.cpp applies both (rope.py).
    freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            # ValueError like every other refused config: the CLI reports those in one line
            raise ValueError(
                f"rope scaling {self.type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
            )
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError(
                f"rope theta and factor must be positive, got {self.theta}, {self.factor}"
            )


# the numbers of a rope_parameters (rope_scaling) dict that rope_from_hf reads
_ROPE_NUMBERS = ("rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings", "attention_factor", "beta_fast",
                 "beta_slow", "mscale", "mscale_all_dim", "partial_rotary_factor")
# ... and those transformers divides by or raises to a power: 0 (or less) is a
# ZeroDivisionError there (yarn's check as config.json is read, llama3's table) or a rotary
# table of inf and NaN
_POSITIVE = ("rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings")
# the rope types whose frequencies transformers scales by `factor`, which it requires
# (yarn derives a missing one from the contexts)
_FACTOR_REQUIRED = ("linear", "dynamic", "llama3")
_FIELD = "config.json: rope_parameters (rope_scaling)"


def check_rope_parameters(params: dict, field: str = _FIELD) -> None:
    """Raise ValueError naming the key of `params` (`field`: the dict's name in messages)
    whose value is not a number, or not positive where transformers divides by it
    (rope_theta, factor, low/high_freq_factor, original_max_position_embeddings); None
    stands for "not given". Checked on config.json's own dicts (and top-level rope_theta)
    before transformers reads it, and on the rope_parameters of the config it read."""
    for key in _ROPE_NUMBERS:  # transformers warns of a string here and goes on
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{field} {key} must be a number, got {value!r}")
        if key in _POSITIVE and not value > 0:
            raise ValueError(f"{field} {key} must be > 0, got {value!r}")


def rope_from_hf(hf: Any, head_dim: int) -> RopeConfig:
    """RopeConfig from a transformers config (`head_dim`: its attention head size). Raises
    ValueError naming the rope_parameters (rope_scaling) field that is not a number (or not
    positive: check_rope_parameters), a type aiollm does not compute, a scaled type without
    its factor, or a partial rotary factor with a scaled rope."""
    # transformers 5 keeps theta and scaling together in rope_parameters; 4.x had rope_theta and
    # an optional rope_scaling dict whose type key was "type" before "rope_type".
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    if params.get("rope_theta") is None:  # 4.x: beside the dict (a 0 there is no default)
        params["rope_theta"] = getattr(hf, "rope_theta", None)
    check_rope_parameters(params)
    theta = params["rope_theta"] if params["rope_theta"] is not None else 10000.0
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(f"{_FIELD} rope_type {kind!r} is not supported (supported: "
                         f"{', '.join(ROPE_TYPES)})")
    factor = params.get("factor")
    if factor is None and kind in _FACTOR_REQUIRED:  # transformers: TypeError at the table
        raise ValueError(f"{_FIELD} factor must be a number for rope_type {kind!r}, got None")
    _check_partial_rotary(hf, params, kind, head_dim)
    rope = RopeConfig(theta=float(theta), type=kind, factor=float(factor or 1.0))
    if kind == "llama3":
        rope.low_freq_factor = float(params["low_freq_factor"])
        rope.high_freq_factor = float(params["high_freq_factor"])
        rope.original_max_position = int(params["original_max_position_embeddings"])
    elif kind == "dynamic":
        rope.original_max_position = int(hf.max_position_embeddings)
    elif kind == "yarn":
        _yarn_from_hf(rope, params, hf)
    return rope


def _check_partial_rotary(hf: Any, params: dict, kind: str, head_dim: int) -> None:
    """Refuse partial_rotary_factor < 1 with a scaled rope. These model types' default rotary
    (transformers' compute_default_rope_parameters of each) rotates the whole head whatever
    the factor, as ours does; the scaled ones compute frequencies for the rotated part only,
    which transformers then applies to the whole head and fails (a shape mismatch)."""
    factor = params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", None))
    if kind != "default" and factor is not None and int(head_dim * factor) != head_dim:
        raise ValueError(
            f"partial_rotary_factor {factor} with rope scaling {kind!r} (rope_scaling / "
            "rope_parameters) is not supported: aiollm rotates the whole head, and "
            "transformers cannot run this combination either")


def _yarn_from_hf(rope: RopeConfig, params: dict, hf: Any) -> None:
    """YaRN's parameters as transformers' _compute_yarn_parameters reads them."""
    original = int(params.get("original_max_position_embeddings") or hf.max_position_embeddings)
    rope.original_max_position = original
    if params.get("factor") is None:  # DeepSeek-V3 style: the ratio of the two contexts
        rope.factor = hf.max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor = params.get("attention_factor")
    if factor is None and params.get("mscale") and params.get("mscale_all_dim"):
        factor = mscale(rope.factor, params["mscale"]) / mscale(rope.factor,
                                                                 params["mscale_all_dim"])
    rope.attention_factor = float(mscale(rope.factor) if factor is None else factor)
    rope.beta_fast = float(params.get("beta_fast") or 32)
    rope.beta_slow = float(params.get("beta_slow") or 1)
    rope.truncate = bool(params.get("truncate", True))
