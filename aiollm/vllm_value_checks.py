"""Checks of vLLM's JSON-valued flags that aiollm takes with no effect for some values and
refuses for others (aiollm/vllm_flags.py's NO_EFFECT_VALUES, Ignored.refuse): each is given
the value as typed on the command line (a str) or as LLM(...)'s keyword takes it (a dict, or
an object with the fields), and returns why it is refused, or None where it is taken.
config_keys reads a vLLM config's JSON for the modules that read its keys
(vllm_compilation.py, vllm_structured_config.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# what a prompt of a multimodal model may carry that aiollm's models cannot
TEXT_ONLY = "aiollm's models take text alone: no images, audio or video to process"


def config_keys(value: Any, config: str, keys: Sequence[str], example: str) -> dict[str, Any]:
    """A vLLM config given as JSON (a flag's text; as LLM(...)'s keyword a dict or its JSON
    text) as a dict whose keys are all of `keys`, the fields of vLLM's `config`
    ("CompilationConfig"), for its own module to check their values. Raises ValueError
    saying what it takes (a JSON object of the config's keys, such as `example`) where the
    text does not parse or is no object, or naming the first key none of `keys`, with them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"takes a JSON object of vLLM's {config} keys, such as {example}; "
                             f"{value!r} does not parse ({e.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"takes a JSON object of vLLM's {config} keys, such as {example}; "
                         f"got {value!r}")
    for key in value:
        if key not in keys:
            raise ValueError(f"{key!r} is not a key of vLLM's {config} (they are "
                             f"{', '.join(keys)})")
    return dict(value)


def eplb_refusal(value: Any) -> str | None:
    """--eplb-config's value (vLLM's EPLBConfig: a JSON object, or as LLM(...)'s keyword a
    dict or an object with its fields) refused where it is no JSON object, its
    num_redundant_experts no whole number of 0 or more (as vLLM's check refuses it), or
    asks for redundant experts, which vLLM too refuses without --enable-eplb. A number, a
    bool, a list (no object of fields, which vLLM's EPLBConfig refuses too) is refused alike
    on the command line and as LLM(...)'s keyword."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if isinstance(value, (str, int, float, bool, list, tuple)) or value is None:
        return ("takes a JSON object of vLLM's EPLBConfig fields, such as "
                "'{\"window_size\": 1000}'")
    given = (value.get("num_redundant_experts") if isinstance(value, dict)
             else getattr(value, "num_redundant_experts", None))
    if given is None:
        return None
    redundant = whole_number(given)
    if redundant is None or redundant < 0:
        return f"num_redundant_experts must be a whole number, 0 or more; got {given!r}"
    if redundant == 0:
        return None
    return (f"num_redundant_experts {redundant} asks for redundant experts, which need "
            "expert parallelism load balancing (--enable-eplb); there is no expert "
            "parallelism: every rank holds its share of every expert "
            "(--tensor-parallel-size), leave num_redundant_experts out")


def whole_number(value: Any) -> int | None:
    """`value` as the whole number vLLM's EPLBConfig (pydantic, lax) reads it as: an int (or
    bool), a float with no fraction, or a string of one; None for anything else."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return int(value) if isinstance(value, int) else None


def multimodal_refusal(value: Any) -> str | None:
    """--limit-mm-per-prompt's value (vLLM's: a JSON object of a count per modality,
    '{"image": 0, "video": 0}', a modality's count also as {"count": N} with its options,
    or its older form image=0,video=0; as LLM(...)'s keyword a dict) refused where it lets a
    prompt carry any item (a count above 0), or is none of those forms; None (taken) where
    every count is 0, a text-only model's limits, which ask for what aiollm does."""
    limits = value
    if isinstance(value, str):
        try:
            limits = json.loads(value)
        except json.JSONDecodeError:  # the older form: modality=N,modality=N
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            limits = ({name.strip(): count.strip() for name, sep, count in pairs}
                      if all(sep for _, sep, _ in pairs) else None)
    if not isinstance(limits, dict):
        return ("takes a JSON object of a count per modality, such as "
                "'{\"image\": 0, \"video\": 0}'")
    for modality, limit in limits.items():
        count = limit.get("count") if isinstance(limit, dict) else limit
        if whole_number(count) != 0:  # named as typed where no count was given
            shown = count if count is not None else json.dumps(limit)
            return (f"{modality} {shown}: {TEXT_ONLY}; give it 0 (a text-only "
                    "model's limits) or leave the flag out")
    return None
