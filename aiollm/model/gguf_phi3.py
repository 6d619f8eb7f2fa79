"""What llama.cpp's phi3 GGUF files (Phi-3, Phi-3.5, Phi-4, Phi-4-mini) say beyond a Llama's.

Its converter (convert_hf_to_gguf.py's Phi3MiniModel) writes the partial rotary as
rope.dimension_count (int(partial_rotary_factor x hidden) / heads), LongRoPE as two tensors of
per-frequency factors, rope_factors_short.weight and rope_factors_long.weight, with
rope.scaling.original_context_length and the attention factor it computed as
rope.scaling.attn_factor (gguf_metadata.rope_scaling reads that one), and the config's
sliding_window as attention.sliding_window (0: none, as Phi-4 has). Its q, k and v stay fused
in attn_qkv and gate and up in ffn_up, gate first, as in transformers' checkpoint:
weights_layout splits both.

Where llama.cpp picks the LongRoPE factors by the context it is started with (the long ones
for every position once that context passes the original one), aiollm picks them per request
as transformers does for a checkpoint (model/rope_rows.py): a file's model then computes what
the same model's safetensors compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiollm.model.gguf_metadata import field, required
from aiollm.model.rope_config import RopeConfig

ROPE_FACTOR_TENSORS = ("rope_factors_short.weight", "rope_factors_long.weight")


def phi3_rope(reader: Any, p: str, tensors: dict, rope: RopeConfig, head_dim: int,
              rotated: int, context: int, factors: Callable[[Any], list[float]]) -> None:
    """Fill `rope` (read by gguf_metadata.rope_scaling) with the file's partial rotary
    (`rotated` dimensions of `head_dim`) and LongRoPE factors; `factors(tensor)` is the
    tensor's values as a flat list of floats, `context` the file's context_length. Raises
    ValueError naming the key or tensor that no Phi-3 could have."""
    if rotated != head_dim:
        if rotated < 2 or rotated % 2 or rotated > head_dim:
            raise ValueError(f"GGUF metadata {p}rope.dimension_count must be an even count "
                             f"from 2 to head_dim {head_dim}, got {rotated}")
        rope.rotary_dim = rotated
    present = [n for n in ROPE_FACTOR_TENSORS if n in tensors]
    if not present:
        return
    if len(present) == 1:
        raise ValueError(f"GGUF file has {present[0]} without "
                         f"{(set(ROPE_FACTOR_TENSORS) - set(present)).pop()}: LongRoPE "
                         "needs both")
    if rope.type != "default":
        raise ValueError(f"GGUF file has LongRoPE factors ({', '.join(ROPE_FACTOR_TENSORS)}) "
                         f"and {p}rope.scaling.type scaling {rope.type!r} too")
    short, long = (tuple(float(x) for x in factors(tensors[n])) for n in ROPE_FACTOR_TENSORS)
    for name, values in zip(ROPE_FACTOR_TENSORS, (short, long)):
        if len(values) != rotated // 2 or not all(x > 0 for x in values):
            raise ValueError(f"GGUF tensor {name} must hold {rotated // 2} positive factors "
                             f"(half of {p}rope.dimension_count {rotated}), got "
                             f"{len(values)} values")
    original = int(required(reader, p + "rope.scaling.original_context_length"))
    if original < 1:  # the factor is the context over it
        raise ValueError(f"GGUF metadata {p}rope.scaling.original_context_length must be >= 1, "
                         f"got {original}")
    rope.type, rope.short_factor, rope.long_factor = "longrope", short, long
    rope.original_max_position = original
    rope.factor = context / original


def phi3_window(reader: Any, p: str) -> int | None:
    """The file's attention.sliding_window (None for 0 or absent: no window)."""
    window = int(field(reader, p + "attention.sliding_window", 0) or 0)
    if window < 0:
        raise ValueError(f"GGUF metadata {p}attention.sliding_window must be >= 0, got "
                         f"{window}")
    return window or None
