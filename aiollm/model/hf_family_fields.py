"""The fields of Gemma's and Granite's Hugging Face configs that other families lack, read
for hf_config.py's config_from_hf: a multimodal Gemma 3's text_config, Gemma 2/3's
query_pre_attn_scalar and soft-caps, Gemma 3's two rotaries (global and sliding layers), and
Granite's four scalars. A bad value is refused naming its config.json field."""

from __future__ import annotations

import logging
from typing import Any

from aiollm.model.rope_config import RopeConfig, rope_from_hf

log = logging.getLogger(__name__)

# Granite's scalars: config.json's name -> ModelConfig's (the same names)
GRANITE_SCALARS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier",
                   "logits_scaling")


def gemma3_text_config(hf: Any, fields: dict | None) -> Any:
    """A Gemma3Config's text_config (its language model's); ValueError for a config.json
    without one (transformers would give that model Gemma3TextConfig's defaults, vocab_size
    262,208 and hidden_size 2,304, whatever the top-level fields say) or of another type."""
    if fields is not None and not isinstance(fields.get("text_config"), dict):
        raise ValueError("config.json: model_type gemma3 (Gemma3ForConditionalGeneration) "
                         "has no text_config, which sizes its language model (transformers "
                         "would take Gemma3TextConfig's defaults, not the top-level fields): "
                         "give text_config, or model_type gemma3_text (Gemma3ForCausalLM) "
                         "for a text-only Gemma 3")
    log.info("model_type gemma3 (Gemma3ForConditionalGeneration): serving its language "
             "model (text_config) as text alone; the vision tower and the multimodal "
             "projector's weights are not loaded, and images are not accepted")
    text = hf.text_config
    if getattr(text, "model_type", None) != "gemma3_text":
        raise ValueError(f"config.json: text_config has model_type "
                         f"{getattr(text, 'model_type', None)!r}, not 'gemma3_text'")
    return text


def gemma_scalars(hf: Any) -> dict[str, float | None]:
    """Gemma 2/3's query_pre_attn_scalar and soft-caps, as their transformers configs hold
    them (defaults filled in there: Gemma 2 caps at 50 and 30, Gemma 3 not). A value that is
    not a number > 0 is refused naming the field (transformers would divide by it)."""
    scalars: dict[str, float | None] = {}
    for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
        value = getattr(hf, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ValueError(f"config.json: {name} must be a number > 0 (or null for none), "
                             f"got {value!r}")
        scalars[name] = None if value is None else float(value)
    if scalars["query_pre_attn_scalar"] is None:
        raise ValueError("config.json: query_pre_attn_scalar must be a number > 0, got null")
    return scalars


class _RopeView:
    """A transformers config seen with rope_parameters replaced by one layer type's dict
    (Gemma 3 keeps one per layer type), for rope_from_hf."""

    def __init__(self, hf: Any, params: dict):
        self._hf, self.rope_parameters = hf, params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hf, name)


def gemma3_ropes(hf: Any, head_dim: int) -> tuple[RopeConfig, RopeConfig]:
    """(the global layers' rotary, the sliding layers'), as transformers' Gemma3TextConfig
    fills rope_parameters by layer type: full_attention from rope_theta (default 1e6) and
    rope_scaling (e.g. linear, factor 8 on the 4B and larger), sliding_attention from
    rope_local_base_freq (default 1e4), unscaled; `head_dim` the rotated features a head."""
    params = getattr(hf, "rope_parameters", None) or {}
    ropes = []
    for kind in ("full_attention", "sliding_attention"):
        if not isinstance(params.get(kind), dict):
            raise ValueError(f"config.json: rope_parameters has no {kind!r} dict (transformers' "
                             "Gemma3TextConfig keeps one per layer type)")
        ropes.append(rope_from_hf(_RopeView(hf, params[kind]), head_dim))
    return ropes[0], ropes[1]


def granite_scalars(hf: Any) -> dict[str, float]:
    """Granite's four scalars, as transformers' Granite classes read them: each defaults to
    1.0 (attention_multiplier too: the softmax scale is then 1, not 1/sqrt(head_dim)). A
    null or non-number, which transformers multiplies by and fails on, is refused naming
    the field, and so is one of 0 or below, which no Granite has (its embeddings, layers or
    attention scores would vanish or change sign; logits_scaling is divided by)."""
    scalars = {}
    for name in GRANITE_SCALARS:
        value = getattr(hf, name, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config.json: {name} must be a number, got {value!r}")
        if not value > 0:
            raise ValueError(f"config.json: {name} must be > 0, got {value!r}")
        scalars[name] = float(value)
    return scalars
