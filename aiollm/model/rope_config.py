"""RopeConfig: a checkpoint's rotary position embedding (theta and scaling), and how it is read
from a Hugging Face config (transformers 5's rope_parameters, 4.x's rope_theta and
rope_scaling). rope.py computes the frequencies from it; GGUF metadata fills it in
weights_gguf.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")


@dataclass(slots=True)
class RopeConfig:
    """The rotary embedding of a checkpoint: base `theta` and one of transformers' scalings
    (linear and dynamic NTK; Llama 3.1's per-band llama3; YaRN, Peng et al. 2023,
    arXiv:2309.00071; LongRoPE, Ding et al. 2024, arXiv:2402.13753, as Phi-3 uses it),
    lengths in tokens; `rotary_dim`, the leading dimensions of each head that rotate (Phi-3's
    partial_rotary_factor; None: the whole head)."""

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
    rotary_dim: int | None = None
    # longrope: per-frequency divisors below original_max_position (short) and from it on
    # (long); attention_factor is its mscale (rope.py)
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

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
    (rope_theta, factor, low/high_freq_factor, original_max_position_embeddings), or a
    longrope short_factor/long_factor that is not a list; None stands for "not given" (but
    for those lists, given as null). Checked on config.json's own dicts (and top-level
    rope_theta) before transformers reads it, and on the rope_parameters of the config it
    read."""
    for key in _ROPE_NUMBERS:  # transformers warns of a string here and goes on
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{field} {key} must be a number, got {value!r}")
        if key in _POSITIVE and not value > 0:
            raise ValueError(f"{field} {key} must be > 0, got {value!r}")
    if (params.get("rope_type") or params.get("type")) in ("longrope", "su"):
        for key in ("short_factor", "long_factor"):  # transformers: len() of a non-list
            if key in params and not isinstance(params[key], (list, tuple)):
                raise ValueError(f"{field} {key} must be a list of numbers (one per rotated "
                                 f"frequency), got {params[key]!r}")


def rope_from_hf(hf: Any, head_dim: int) -> RopeConfig:
    """RopeConfig from a transformers config (`head_dim`: its attention head size). Raises
    ValueError naming the rope_parameters (rope_scaling) field that is not a number (or not
    positive: check_rope_parameters), a type aiollm does not compute, a scaled type without
    its factor, or a partial rotary factor with a scaled rope (but for Phi-3's longrope,
    which transformers runs: _phi3_rotary_dim, _longrope_from_hf)."""
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
    rope = RopeConfig(theta=float(theta), type=kind, factor=float(factor or 1.0))
    if getattr(hf, "model_type", None) == "phi3":
        rope.rotary_dim = _phi3_rotary_dim(hf, params, head_dim)
    else:
        _check_partial_rotary(hf, params, kind, head_dim)
    if kind == "llama3":
        rope.low_freq_factor = float(params["low_freq_factor"])
        rope.high_freq_factor = float(params["high_freq_factor"])
        rope.original_max_position = int(params["original_max_position_embeddings"])
    elif kind == "dynamic":
        rope.original_max_position = int(hf.max_position_embeddings)
    elif kind == "yarn":
        _yarn_from_hf(rope, params, hf)
    elif kind == "longrope":
        _longrope_from_hf(rope, params, hf, rope.rotary_dim or head_dim)
    return rope


def _phi3_rotary_dim(hf: Any, params: dict, head_dim: int) -> int | None:
    """The dimensions of each head Phi-3 rotates: int(head_dim x partial_rotary_factor), as
    transformers' Phi3RotaryEmbedding computes them (None: all). Raises ValueError naming
    partial_rotary_factor when that leaves an odd count or none (transformers' rotate_half
    then pairs the wrong dimensions) or asks for more than the head."""
    factor = params.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", None))
    dim = head_dim if factor is None else int(head_dim * factor)
    if dim == head_dim:
        return None
    if dim < 2 or dim % 2 or dim > head_dim:
        raise ValueError(f"config.json: partial_rotary_factor {factor} rotates {dim} of the "
                         f"head's {head_dim} dimensions: it must give an even count from 2 "
                         "to head_dim")
    return dim


def _longrope_from_hf(rope: RopeConfig, params: dict, hf: Any, rotary_dim: int) -> None:
    """LongRoPE's parameters as transformers' _compute_longrope_parameters reads them: the
    short and long per-frequency factors (rotary_dim / 2 numbers each), the pretraining
    context, and the attention factor (given, or sqrt(1 + ln(s) / ln(original)) with s the
    factor or max_position_embeddings / original_max_position_embeddings, 1 when s <= 1)."""
    original = params.get("original_max_position_embeddings",
                          getattr(hf, "original_max_position_embeddings", None))
    if original is None:
        raise ValueError(f"{_FIELD} original_max_position_embeddings must be given for "
                         "rope_type 'longrope', got None")
    rope.original_max_position = int(original)
    for key in ("short_factor", "long_factor"):
        value = params.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == rotary_dim // 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
                for x in value)):
            raise ValueError(f"{_FIELD} {key} must be a list of {rotary_dim // 2} positive "
                             f"numbers (one per rotated frequency), got {value!r}")
        setattr(rope, key, tuple(float(x) for x in value))
    scale = params.get("factor")
    if scale is None:  # Phi-3: the ratio of the two contexts
        scale = hf.max_position_embeddings / rope.original_max_position
    rope.factor = float(scale)
    factor = params.get("attention_factor")
    if factor is None:
        factor = 1.0 if scale <= 1.0 else math.sqrt(
            1 + math.log(scale) / math.log(rope.original_max_position))
    rope.attention_factor = float(factor)


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
