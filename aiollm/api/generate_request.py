"""The body of LightLLM's /generate and /generate_stream (`GenerateRequest`): the inputs and
LightLLM's `parameters` (`GenerateParameters`), with the OpenAI and LightLLM fields it refuses.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec
from msgspec import Struct

from aiollm.api.protocol import N, TokenId, TopK, check_max_tokens, refuse_unserved
from aiollm.errors import InvalidRequest


class GenerateParameters(Struct, kw_only=True):
    """LightLLM's `parameters`: sampling is off unless do_sample is true (temperature,
    top_p and top_k are then not read, as LightLLM overwrites them). None (left out or
    null) takes the model's generation config's value (do_sample too, as LightLLM reads
    it; aiollm/model/generation_defaults.py), else LightLLM's default (`with_defaults`).
    max_new_tokens left out is 16 whatever the generation config says, as LightLLM reads
    no length from it."""

    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: TopK | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int = 1
    # strings, or token-id sequences (a sequence of one id is a stop token id)
    stop_sequences: Union[str, list[Union[str, list[TokenId]]], None] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    add_special_tokens: bool = True
    seed: int | None = None
    n: N | None = None  # LightLLM's default: best_of
    best_of: N | None = None
    return_details: bool = False
    guided_json: Any = None
    guided_grammar: Any = None
    regular_constraint: Any = None
    allowed_token_ids: Any = None
    # OpenAI's and vLLM's: refused here (refuse_unserved)
    response_format: Any = None
    structured_outputs: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    logit_bias: Any = None
    cache_salt: Any = None  # vLLM's tenant isolation: refused here too (_refuse_salt)
    # LightLLM's: the penalties count the prompt's tokens too (else the output's alone)
    input_penalty: bool = False
    # LightLLM's [start, factor] (SamplingParams.exponential_decay_length_penalty)
    exponential_decay_length_penalty: Any = None
    # LightLLM's: an eos token's text is "" unless this is true (and special tokens are
    # not skipped)
    print_eos_token: bool = False

    def check_unserved(self) -> None:
        _refuse_salt(self.cache_salt, "parameters.cache_salt")
        refuse_unserved(self, ("response_format", "structured_outputs", "guided_regex",
                               "guided_choice", "logit_bias"), "parameters.",
                        "LightLLM's constraints are guided_json, guided_grammar, "
                        "regular_constraint and allowed_token_ids; /v1/completions takes "
                        "OpenAI's and vLLM's")

    def with_defaults(self, defaults: dict) -> None:
        """Fill the fields left None from `defaults` (the model's generation config's, by
        SamplingParams' names, do_sample under its own), else from LightLLM's defaults;
        max_new_tokens from LightLLM's alone (16)."""
        for name, lightllm in (("do_sample", False), ("temperature", 1.0), ("top_p", 1.0),
                               ("top_k", -1), ("min_p", 0.0), ("repetition_penalty", 1.0)):
            if getattr(self, name) is None:
                setattr(self, name, defaults.get(name, lightllm))
        if self.max_new_tokens is None:
            self.max_new_tokens = 16

    def check_max_tokens(self) -> None:
        check_max_tokens(self.max_new_tokens, "parameters.max_new_tokens")

    def choices(self) -> int:
        """How many sequences to generate: n, which LightLLM requires to equal best_of when
        both are given (it generates best_of and returns them all); either alone sets both."""
        if self.n is not None and self.best_of is not None and self.n != self.best_of:
            raise InvalidRequest(f"best_of must equal n ({self.n}) or be left out: the "
                                 f"server returns every sequence it generates, got "
                                 f"{self.best_of}", param="parameters.best_of")
        return self.n or self.best_of or 1


class GenerateRequest(Struct, kw_only=True):
    inputs: Union[str, list[int]]
    parameters: GenerateParameters = msgspec.field(default_factory=GenerateParameters)
    # LightLLM's images and audio for multimodal models: the models served read text alone
    multimodal_params: dict[str, Any] | None = None
    cache_salt: Any = None  # vLLM's, not served here (_refuse_salt)
    # POST / (LightLLM's compat route) streams when true (null: not, as LightLLM pops it
    # and /v1/completions reads it); /generate and /generate_stream ignore it, as
    # LightLLM's do
    stream: bool | None = False

    def check_unserved(self) -> None:
        """Refuse images or audio (LightLLM's multimodal_params.images and .audios): the
        answer to the text alone would answer another question. Empty lists, as LightLLM's
        clients send them with text alone, are served. A cache salt is refused, in either
        place (_refuse_salt)."""
        _refuse_salt(self.cache_salt, "cache_salt")
        refuse_media(self.multimodal_params)
        self.parameters.check_unserved()


def refuse_media(multimodal_params: dict[str, Any] | None) -> None:
    """InvalidRequest naming LightLLM's multimodal_params.images or .audios when they hold
    any: the models served read text alone."""
    for kind in ("images", "audios"):
        if (multimodal_params or {}).get(kind):
            raise InvalidRequest(f"multimodal_params.{kind} is not served: the model "
                                 "reads text alone", param=f"multimodal_params.{kind}")


def _refuse_salt(salt: Any, param: str) -> None:
    """InvalidRequest naming `param` for a cache salt (anything but null): LightLLM has
    none, and ignored as an unknown field it would leave a tenant whose gateway salts every
    body sharing its prefix cache with everyone here, unknowingly (engine/cache_salt.py)."""
    if salt is not None:
        raise InvalidRequest(f"{param} is not served on LightLLM's endpoints: their "
                             "requests share the prefix cache with every unsalted request; "
                             "send salted requests to /v1/completions or "
                             "/v1/chat/completions", param=param)
