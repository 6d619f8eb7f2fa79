"""The sampling defaults a model's generation_config.json recommends (`sampling_defaults`):
what a request that leaves temperature, top_p, top_k, min_p, repetition_penalty or its length
out is generated with, as vLLM does by default (its `--generation-config auto`).

do_sample is read for LightLLM's /generate alone, whose sampling is off unless it is true (as
LightLLM reads it); vLLM's OpenAI API ignores it, and so does aiollm's.

A Qwen2.5-Instruct directory, say, recommends temperature 0.7, top_p 0.8, top_k 20 and
repetition_penalty 1.05; served without them it samples differently than it does on vLLM.
GGUF files carry no generation config: their defaults stay SamplingParams' own.
"""

from __future__ import annotations

import logging
import os

from aiollm.errors import InvalidRequest

log = logging.getLogger(__name__)

FILE = "generation_config.json"
# generation_config.json's sampling keys, with SamplingParams' name for each: transformers'
# max_new_tokens is the output length SamplingParams calls max_tokens
KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
        "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
MODES = ("auto", "vllm")


def check_mode(mode: str) -> None:
    """Raise ValueError naming generation_config unless `mode` is auto, vllm or a folder
    that holds a generation_config.json."""
    if mode in MODES:
        return
    if not isinstance(mode, str) or not os.path.isfile(os.path.join(mode, FILE)):
        raise ValueError(f"generation_config must be auto (the model's {FILE}), vllm (none) "
                         f"or a folder holding a {FILE}, got {mode!r}")


def sampling_defaults(mode: str, model_path: str) -> dict[str, float | int]:
    """SamplingParams' defaults under `mode`, by SamplingParams' field names (max_tokens for
    max_new_tokens): auto, those of `model_path`'s generation_config.json (none for a GGUF
    file or a directory without one); vllm, none; else a folder's generation_config.json.
    Only the keys the file gives a value are in it (null is no value), each checked as
    SamplingParams checks it; do_sample (a bool) under its own name, for /generate.
    Raises ValueError naming the file and the key of a bad value, or the file when it is no
    JSON object."""
    from aiollm.model.hf_config import json_object  # imports torch: not for check_mode's CLI
    from aiollm.sampling_params import SamplingParams, is_int

    if mode == "vllm":
        return {}
    path = os.path.join(model_path if mode == "auto" else mode, FILE)
    if mode == "auto" and not (os.path.isdir(model_path) and os.path.isfile(path)):
        return {}
    fields = json_object(path)
    defaults = {}
    for key, name in KEYS.items():
        value = fields.get(key)
        if value is None:
            continue
        if key == "max_new_tokens" and not (is_int(value) and value >= 1):
            # SamplingParams' message speaks of its None and prompt_logprobs, no file's
            raise ValueError(f"{path}: max_new_tokens must be an integer >= 1, got {value!r}")
        try:
            # checked as given: a temperature in (0, 0.01) is raised per request (and
            # warned of there), not here, where it would spend that one warning
            SamplingParams(**{name: value}, raise_low_temperature=False)
        except InvalidRequest as e:
            # SamplingParams' message names its own field; the file's key is what to fix
            raise ValueError(f"{path}: {str(e).replace(name, key, 1)}") from None
        # transformers' top_k 0 is off, as SamplingParams' -1 is (LightLLM's API refuses 0)
        defaults[name] = -1 if key == "top_k" and value == 0 else value
    do_sample = fields.get("do_sample")
    if do_sample is not None:
        if not isinstance(do_sample, bool):
            raise ValueError(f"{path}: do_sample must be true or false, got {do_sample!r}")
        defaults["do_sample"] = do_sample
    return defaults


def folder_eos_ids(mode: str) -> list[int] | None:
    """The eos_token_id (ids; none, []) of the generation_config.json of the folder `mode`
    names (--generation-config PATH), which generation ends at in place of an HF model
    directory's own eos ids, as in vLLM, whose stop ids are the tokenizer's eos and those of
    the one generation config it reads (the model's own under auto and vllm: None here).
    Raises ValueError naming the file when its eos_token_id holds no token ids."""
    from aiollm.model.hf_config import generation_eos_ids  # imports torch (as above)

    if mode in MODES:
        return None
    path = os.path.join(mode, FILE)
    ids = generation_eos_ids(path)
    log.info("generation ends at the eos ids of %s: %s (and the tokenizer's eos)", path, ids)
    return ids


def log_defaults(defaults: dict[str, float | int], mode: str) -> None:
    """Say at start-up which defaults requests that leave the fields out are generated with."""
    if defaults:
        key = {name: key for key, name in KEYS.items()}
        shown = ", ".join(f"{key.get(k, k)}={v}" for k, v in defaults.items())
        log.info("sampling defaults of requests that leave them out, from %s: %s "
                 "(do_sample: /generate's alone; --generation-config vllm ignores them)",
                 FILE if mode == "auto" else os.path.join(mode, FILE), shown)
    else:
        log.info("sampling defaults: none from a generation config (--generation-config %s)",
                 mode)
