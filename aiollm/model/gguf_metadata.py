"""GGUF metadata values read as llama.cpp reads them: a number that holds text refused
naming its key, a hyperparameter given per layer (head counts, feed_forward_length), and
the rotary scaling keys (rope.scaling.*, 2023's rope.scale_linear). weights_gguf.py builds
a model's config from them."""

from __future__ import annotations

import math
from typing import Any

from gguf import GGUFReader

from aiollm.model.rope_config import RopeConfig

# the keys read as text (by weights_gguf.py too); every other key read is a number or a list
_TEXT_KEYS = ("general.architecture", "general.type", "adapter.type", ".rope.scaling.type")


def field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (`default` when absent). Raises ValueError naming the key
    when a key read as a number holds text (int() of it named no key)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    if not key.endswith(_TEXT_KEYS) and any(isinstance(x, str)
                                            for x in (v if isinstance(v, list) else [v])):
        raise ValueError(f"GGUF metadata {key} must be a number, got {v!r:.80}")
    return v


def required(reader: GGUFReader, key: str) -> Any:
    """A metadata field every model file carries: ValueError naming it if absent (int(None)
    was a TypeError traceback from aiollm serve)."""
    v = field(reader, key)
    if v is None:
        raise ValueError(f"GGUF file has no {key!r} metadata: it is not a complete model file")
    return v


def one_for_all_layers(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """A hyperparameter llama.cpp reads as one value or as one per layer (its
    get_key_or_arr: head counts, feed_forward_length): per-layer values that are all equal
    are that value. Raises ValueError naming the key when they differ (aiollm's layers are
    all alike), when they are not one per layer (block_count, of the key's architecture:
    llama.cpp refuses the "wrong array length" too) or the key is absent without a default;
    int() of a list was a TypeError."""
    v = required(reader, key) if default is None else field(reader, key, default)
    if isinstance(v, list):
        layers = field(reader, key.split(".")[0] + ".block_count")
        if layers is not None and len(v) != layers:
            raise ValueError(f"GGUF metadata {key} has {len(v)} values, not one per layer "
                             f"(block_count {layers})")
        if not v or len(set(v)) > 1:
            raise ValueError(f"GGUF metadata {key} gives its layers different values "
                             f"({', '.join(map(str, v[:8]))}{', ...' if len(v) > 8 else ''}): "
                             "aiollm runs models whose layers are all alike")
        v = v[0]
    return v


def rope_scaling(reader: GGUFReader, p: str, theta: float) -> RopeConfig:
    """The rotary scaling of a file's metadata as llama.cpp reads it (llama-model.cpp's
    hyperparameters, llama-context.cpp): rope.scaling.type is "linear" when absent; the
    factor is rope.scaling.factor or, in files converted before that key (2023's
    rope.scale_linear, e.g. 16k-context Llama 2 fine-tunes), the old key; no factor (or 0)
    scales nothing, and type "none" scales nothing whatever the factor says. Raises
    ValueError naming the key for a type llama.cpp does not know (it stops at any but its
    four, factor or not), for another type that would scale (llama.cpp's yarn, with its
    attn_factor, ramp and original context keys, is not transformers' yarn that RopeConfig
    implements), and for a factor that is negative, infinite or NaN. rope.scaling.attn_factor
    multiplies cos and sin whatever the type, as llama.cpp multiplies its yarn_attn_factor
    by it (llama-context.cpp)."""
    rope = _rope_frequencies(reader, p, theta)
    attn = float(field(reader, p + "rope.scaling.attn_factor", 1.0))
    if not 0 < attn < math.inf:
        raise ValueError(f"GGUF metadata {p}rope.scaling.attn_factor must be positive, "
                         f"got {attn}")
    rope.attention_factor = attn
    return rope


def _rope_frequencies(reader: GGUFReader, p: str, theta: float) -> RopeConfig:
    """rope_scaling's frequencies (of rope.scaling.type and its factor)."""
    scaling = field(reader, p + "rope.scaling.type", "linear")
    if scaling not in _LLAMA_CPP_ROPE_SCALINGS:
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported (supported: none, "
                         f"linear; {p}rope.scaling.type is none, linear, yarn or longrope "
                         "in llama.cpp's files)")
    key = p + "rope.scaling.factor"
    if (factor := field(reader, key)) is None:
        key = p + "rope.scale_linear"
        factor = field(reader, key, 0)
    factor = float(factor)
    if scaling == "none" or factor in (0.0, 1.0):
        return RopeConfig(theta=theta)
    if scaling != "linear":
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported "
                         "(supported: none, linear)")
    if not 0 < factor < math.inf:
        raise ValueError(f"GGUF metadata {key} must be positive, got {factor}")
    return RopeConfig(theta=theta, type="linear", factor=factor)


# llama.cpp's rope scaling types (llama_rope_scaling_type_from_string); it stops at others
_LLAMA_CPP_ROPE_SCALINGS = ("none", "linear", "yarn", "longrope")
