"""The sampling fields that /v1/completions and /v1/chat/completions share (`SamplingFields`,
the base of both request bodies), and their translation into one choice's SamplingParams.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from msgspec import Struct

from aiollm.api import structured
from aiollm.api.protocol import N, Stop, TokenId, TopK
from aiollm.engine.cache_salt import checked_salt
from aiollm.engine.submission import kept_prompt_tokens
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, SamplingParams, choice_seed


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = False  # null: not set (vLLM takes it; clients send it)
    # vLLM's and SGLang's: with include_usage, every chunk carries the usage so far
    continuous_usage_stats: bool | None = False
    # OpenAI's: its stream chunks carry an `obfuscation` field of random characters (against
    # side channels on payload sizes) unless this is false; this server pads none, as vLLM
    # and its own /v1/responses do, so either value is served as false
    include_obfuscation: bool | None = True


# vLLM's sampling fields the server does not serve: (the value that changes nothing, why).
# Refused when sent with another value: ignored, they would change the output unasked.
_VLLM_UNSERVED = {
    "use_beam_search": (False, "the server samples, it does not search beams: send false "
                               "or leave it out"),
    "length_penalty": (1.0, "it weighs beam search, which the server does not do: send 1.0 "
                            "or leave it out"),
    "guided_whitespace_pattern": (None, structured.WHITESPACE_PATTERN_REFUSED),
    # vLLM refuses it too unless it runs with --scheduling-policy priority
    "priority": (0, "the server has no priority scheduling: send 0 or leave it out"),
    # qualified names of processors to load: vLLM refuses them too unless run with
    # --logits-processor-pattern; an empty list asks for nothing
    "logits_processors": ([], "the server loads no logits processors: leave it out (the "
                              "constraints, logit_bias and allowed_token_ids are served)"),
}


class SamplingFields(Struct, kw_only=True):
    """Fields shared by /v1/completions and /v1/chat/completions. None means the default."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: TopK | None = None
    min_p: float | None = None
    n: N | None = 1
    stop: Stop = None
    stop_token_ids: list[TokenId] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = False
    min_tokens: int | None = 0
    skip_special_tokens: bool | None = True
    # vLLM's (its slow tokenizers' spacing of special tokens): SamplingParams takes it
    spaces_between_special_tokens: bool | None = True
    include_stop_str_in_output: bool | None = False  # vLLM's
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # output constraints (api/structured.py checks their shapes)
    response_format: Any = None
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    # SGLang's names of guided_regex and guided_grammar (its docs send them in extra_body)
    regex: Any = None
    ebnf: Any = None
    logit_bias: Any = None
    allowed_token_ids: Any = None
    # vLLM's: words never generated (SamplingParams.bad_words checks them)
    bad_words: list[str] | None = None
    # vLLM's: only the prompt's last k tokens (-1: the context's length); kept_prompt_tokens
    truncate_prompt_tokens: int | None = None
    # vLLM's: the prompt's and the output's token ids beside the text (completions.py and
    # chat_completions.py say where)
    return_token_ids: bool | None = False
    # OpenAI's end-user identifier: nothing is done with it, but it is a string there and
    # another type is a 400, as OpenAI answers
    user: str | None = None
    # vLLM's: the request shares prefix-cache KV only with requests of the same salt (or of
    # none, without one); a non-empty string, as vLLM takes it (engine/cache_salt.py)
    cache_salt: str | None = None
    # vLLM's: the request's id, where no X-Request-Id header gives one (api/request_id.py)
    request_id: str | None = None
    # vLLM's: logprobs name each token "token_id:N" (api/token_names.py); null: the
    # server's --return-tokens-as-token-ids
    return_tokens_as_token_ids: bool | None = None
    # vLLM's, not served (_VLLM_UNSERVED)
    use_beam_search: Any = None
    length_penalty: Any = None
    guided_whitespace_pattern: Any = None
    priority: int | None = 0
    logits_processors: Any = None

    def check_unserved(self) -> None:
        """InvalidRequest naming the first vLLM field the server does not serve that is sent
        with a value that would change the output, or stream_options without stream."""
        for name, (neutral, why) in _VLLM_UNSERVED.items():
            value = getattr(self, name)
            if value is not None and value != neutral:
                raise InvalidRequest(f"{name} is not served: {why}", param=name)
        # as OpenAI and vLLM answer it: its options shape a stream, and an answer in one
        # piece would silently leave out what they ask for (a null is "not set")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options is only allowed with stream true: send "
                                 "stream true, or leave stream_options out",
                                 param="stream_options")
        checked_salt(self.cache_salt)

    def __post_init__(self) -> None:
        # OpenAI's schema makes its fields nullable, null meaning the default, and clients
        # that serialize every field send null for "not set": null takes the field's default.
        # max_tokens keeps its null, which asks for the rest of the context (as in vLLM).
        for name, default in _null_defaults(type(self)):
            if getattr(self, name) is None:
                setattr(self, name, default)

    def kept_prompt_tokens(self, max_model_len: int) -> int | None:
        """How many of the prompt's last tokens are kept (None: all), from
        truncate_prompt_tokens; InvalidRequest naming it for a value other than -1 or
        1 to max_model_len (submission.kept_prompt_tokens)."""
        return kept_prompt_tokens(self.truncate_prompt_tokens, max_model_len)

    def constraint(self) -> Constraint | None:
        fields = {f: getattr(self, f, None) for f in structured.GUIDED_FIELDS}
        return structured.constraint(
            [structured.response_format(self.response_format),
             structured.structured_outputs(self.structured_outputs), *structured.guided(fields)],
            allowed_token_ids=self.allowed_token_ids, bias=structured.logit_bias(self.logit_bias))

    def sampling_params(self, *, max_tokens: int, logprobs: int | None, choice: int,
                        constraint: Constraint | None = None,
                        prompt_logprobs: int | None = None,
                        defaults: dict | None = None) -> SamplingParams:
        """SamplingParams of one choice; choice i of a seeded request samples with seed + i so
        the n choices differ and the whole request stays reproducible. A field left out
        takes its value from `defaults` (the model's generation config's, by SamplingParams'
        names; its max_tokens is the caller's to apply), else SamplingParams' default."""
        given = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            # 0 is off, as -1 is: vLLM's default and its documented "consider all tokens"
            # (clients written against it send top_k 0)
            "top_k": -1 if self.top_k == 0 else self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "seed": choice_seed(self.seed, choice),
        }
        for name, value in (defaults or {}).items():
            if name in given and given[name] is None:
                given[name] = value
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            bad_words=self.bad_words,
            logprobs=logprobs,
            constraint=constraint,
            prompt_logprobs=prompt_logprobs,
            **{k: v for k, v in given.items() if v is not None},
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """vLLM's continuous_usage_stats, which (as there) counts only with include_usage."""
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)


@functools.cache
def _null_defaults(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, default) of the fields of `cls` whose null takes their default (all with a
    default other than None, but max_tokens). Made once per class: msgspec.structs.fields
    resolves the type hints at each call, 0.4-0.9 ms of the loop per request (49 fields),
    more than the rest of a small body's decode."""
    return tuple((f.name, f.default) for f in msgspec.structs.fields(cls)
                 if f.default not in (None, msgspec.NODEFAULT) and f.name != "max_tokens")
