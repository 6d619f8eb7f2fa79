"""Request bodies of the HTTP API as msgspec Structs.

Types are checked here, strictly, while the body is decoded (api/body.py decodes it); value
ranges are checked once, by SamplingParams, so every rule lives in one place. Unknown fields
are accepted and ignored: clients send vendor extensions (`user`, `metadata`,
`multimodal_params`...) that must not fail.
Known fields that would change the output, sent to an endpoint that does not serve them (tools
on /v1/completions, logit_bias on /generate), are refused instead (refuse_unserved).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from aiollm.api import structured
from aiollm.engine.chat_messages import checked_message
from aiollm.engine.chat_template import TemplateOptions
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import MAX_LOGPROBS, Constraint, SamplingParams

MAX_N = 64  # choices per request: each is a full request in the engine
# choices of one completions request (prompts of a batch x n): each is submitted on the event
# loop, so a batch of a million prompts would hold up every stream for a minute
MAX_CHOICES = 1024
INT32_MAX = 2**31 - 1  # the request table stores top_k and stop token ids as int32
SEED_RANGE = 2**63  # seeds are in [0, 2**63), as SamplingParams checks

# A prompt: text, token ids, or a batch of either. msgspec allows one array type per union,
# so the batch forms share one list type and `prompt_batch` sorts them out.
Prompt = Union[str, list[Union[int, str, list[int]]]]
Stop = Union[str, list[str], None]
N = Annotated[int, Meta(ge=1, le=MAX_N)]
# Only the upper bounds live here (the table's storage); SamplingParams checks the ranges.
TopK = Annotated[int, Meta(le=INT32_MAX)]
TokenId = Annotated[int, Meta(le=INT32_MAX)]


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice i of a seeded request: seed + i, wrapped within the seed range so
    that every valid seed works for every n. An invalid seed is passed on as it is, for
    SamplingParams to report."""
    if seed is None or not 0 <= seed < SEED_RANGE:
        return seed
    return (seed + choice) % SEED_RANGE


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = False  # null: not set (vLLM takes it; clients send it)
    # vLLM's and SGLang's: with include_usage, every chunk carries the usage so far
    continuous_usage_stats: bool | None = False


# vLLM's sampling fields the server does not serve: (the value that changes nothing, why).
# Refused when sent with another value: ignored, they would change the output unasked.
_VLLM_UNSERVED = {
    "use_beam_search": (False, "the server samples, it does not search beams: send false "
                               "or leave it out"),
    "length_penalty": (1.0, "it weighs beam search, which the server does not do: send 1.0 "
                            "or leave it out"),
    "bad_words": ([], "send logit_bias with -100 for their tokens"),
    "truncate_prompt_tokens": (None, "prompts are never truncated: shorten the prompt"),
    "return_tokens_as_token_ids": (False, "logprobs name tokens by their text"),
    "guided_whitespace_pattern": (None, "the grammar's own whitespace rules apply"),
}


def _template_options(req: ChatCompletionRequest | TokenizeRequest) -> TemplateOptions:
    """The request's chat-template options (the method of both request types that take them)."""
    return TemplateOptions(req.add_generation_prompt, req.continue_final_message,
                           req.chat_template_kwargs or {})


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
    logit_bias: Any = None
    allowed_token_ids: Any = None
    # vLLM's, not served (_VLLM_UNSERVED)
    use_beam_search: Any = None
    length_penalty: Any = None
    bad_words: Any = None
    truncate_prompt_tokens: Any = None
    return_tokens_as_token_ids: Any = None
    guided_whitespace_pattern: Any = None

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

    def __post_init__(self) -> None:
        # OpenAI's schema makes its fields nullable, null meaning the default, and clients
        # that serialize every field send null for "not set": null takes the field's default.
        # max_tokens keeps its null, which asks for the rest of the context (as in vLLM).
        for f in msgspec.structs.fields(self):
            if (f.default not in (None, msgspec.NODEFAULT) and f.name != "max_tokens"
                    and getattr(self, f.name) is None):
                setattr(self, f.name, f.default)

    def constraint(self) -> Constraint | None:
        fields = {f: getattr(self, f) for f in ("guided_json", "guided_regex", "guided_choice",
                                                "guided_grammar")}
        return structured.constraint(
            [structured.response_format(self.response_format),
             structured.structured_outputs(self.structured_outputs), *structured.guided(fields)],
            allowed_token_ids=self.allowed_token_ids, bias=structured.logit_bias(self.logit_bias))

    def sampling_params(self, *, max_tokens: int, logprobs: int | None, choice: int,
                        constraint: Constraint | None = None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams of one choice; choice i of a seeded request samples with seed + i so
        the n choices differ and the whole request stays reproducible."""
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
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
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


def refuse_unserved(fields: Struct, names: tuple[str, ...], prefix: str, why: str) -> None:
    """InvalidRequest naming the first of `names` that `fields` has set (not None, [] or
    "none"): a field that would change the output, sent to an endpoint that does not serve
    it, is refused rather than ignored."""
    for name in names:
        if getattr(fields, name) not in (None, [], "none"):
            raise InvalidRequest(f"{prefix}{name} is not served here: {why}",
                                 param=prefix + name)


def check_max_tokens(value: int | None, param: str, *, zero_with: tuple[str, ...] = (),
                     zero_ok: bool = False) -> None:
    """InvalidRequest naming `param` when `value` (None: not sent) is below 1, or below 0
    where `zero_ok` (the request scores its prompt, so it may generate nothing). `zero_with`
    names the fields that allow 0 on this endpoint, for the message: an endpoint that scores
    no prompt has none, and its message mentions none (the engine's names prompt_logprobs)."""
    if value is None or value >= (0 if zero_ok else 1):
        return
    allows = f" (0 only with {' or '.join(zero_with)}: the prompt scored, nothing generated)"
    raise InvalidRequest(f"{param} must be an integer >= 1{allows if zero_with else ''}, got "
                         f"{value}", param=param)


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: Prompt
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool | None = False
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's logprob and top-N
    # OpenAI's, not served: refused when they would change the output (check_unserved)
    suffix: str | None = None
    best_of: int | None = None
    # chat's: refused here (refuse_unserved)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None

    def check_unserved(self) -> None:
        SamplingFields.check_unserved(self)
        refuse_unserved(self, ("tools", "tool_choice", "functions", "function_call"), "",
                        "tool calls are served by /v1/chat/completions")
        if self.suffix:
            raise InvalidRequest("suffix is not supported: the server does not insert text "
                                 "(fill-in-the-middle); send the prompt alone", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest(f"best_of must equal n ({self.n}) or be left out: the server "
                                 f"does not rank choices, got {self.best_of}", param="best_of")

    def check_max_tokens(self) -> None:
        check_max_tokens(self.max_tokens, "max_tokens", zero_with=("echo", "prompt_logprobs"),
                         zero_ok=bool(self.echo) or self.prompt_logprobs is not None)

    def prompt_batch(self) -> list[str | list[int]]:
        """The prompts of this request: one string or token-id list each."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        kinds = set(map(type, p))  # one C-speed pass: an id list may have millions of items
        if kinds == {int}:
            return [p]  # type: ignore[list-item]
        if kinds == {str} or kinds == {list}:
            if len(p) * self.n > MAX_CHOICES:  # before any prompt is looked at
                raise InvalidRequest(
                    f"a batch may have at most {MAX_CHOICES} choices (prompts x n), got "
                    f"{len(p)} prompts x n {self.n}", param="prompt" if len(p) > MAX_CHOICES
                    else "n")
            empty = next((i for i, x in enumerate(p) if len(x) == 0), None)  # type: ignore
            if empty is not None:
                raise InvalidRequest(f"prompt[{empty}] is empty: a batch must not contain "
                                     f"empty prompts", param=f"prompt[{empty}]")
            return list(p)  # type: ignore[arg-type]
        raise InvalidRequest(
            "prompt must be a string, a list of token ids, a list of strings or a list of "
            "token-id lists", param="prompt")


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(Struct, kw_only=True):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls, in the history
    tool_call_id: str | None = None  # a tool message answers this call
    # an assistant's reasoning, sent back in the history (DeepSeek's and SGLang's name, and
    # vLLM's newer one): templates such as Qwen3's render it (transformers also passes it as
    # `thinking`)
    reasoning_content: str | None = None
    reasoning: str | None = None

    def as_dict(self, index: int) -> dict[str, Any]:
        """The message as the chat template wants it (engine/chat_messages.py, the Engine
        API's check too). Raises InvalidRequest naming the field for a role or shape OpenAI
        refuses."""
        return checked_message(msgspec.to_builtins(self), f"messages[{index}]")


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    # vLLM's and SGLang's rendering options (TemplateOptions)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # with --reasoning-parser: vLLM's include_reasoning false leaves the reasoning out of the
    # answer; SGLang's separate_reasoning false leaves the output unsplit (aiollm/api/reasoning.py)
    include_reasoning: bool = True
    separate_reasoning: bool = True
    # vLLM's: they change the prompt or the output, and are not served (check_unserved)
    echo: bool | None = False
    chat_template: str | None = None
    prompt_logprobs: int | None = None

    def check_max_tokens(self) -> None:
        """The length field the request uses (max_completion_tokens over max_tokens) is >= 1:
        chat scores no prompt, so 0 has no use."""
        if self.max_completion_tokens is not None:
            check_max_tokens(self.max_completion_tokens, "max_completion_tokens")
        else:
            check_max_tokens(self.max_tokens, "max_tokens")

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.as_dict(i) for i, m in enumerate(self.messages)]

    template_options = _template_options

    def check_unserved(self) -> None:
        """Refuse vLLM's chat fields the server does not serve, when they would change the
        prompt or the output: ignored, they would answer another question than the one asked."""
        SamplingFields.check_unserved(self)
        if self.chat_template is not None:
            raise InvalidRequest("chat_template is not served: the model's own chat template "
                                 "renders the messages", param="chat_template")
        if self.echo:
            raise InvalidRequest("echo true is not served: send the conversation to "
                                 "/v1/completions as a prompt to have it echoed", param="echo")
        if self.prompt_logprobs is not None:  # was ignored: no scores, and no error
            raise InvalidRequest("prompt_logprobs is not served on chat: send the "
                                 "conversation's token ids (/tokenize with messages) to "
                                 "/v1/completions as the prompt, with prompt_logprobs",
                                 param="prompt_logprobs")


class GenerateParameters(Struct, kw_only=True):
    """LightLLM's `parameters`: sampling is off unless do_sample is true."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: TopK = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 16
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
    # LightLLM's own, not served: refused where they would change the output
    input_penalty: bool = False
    exponential_decay_length_penalty: Any = None
    print_eos_token: bool = False

    def check_unserved(self) -> None:
        refuse_unserved(self, ("response_format", "structured_outputs", "guided_regex",
                               "guided_choice", "logit_bias"), "parameters.",
                        "LightLLM's constraints are guided_json, guided_grammar, "
                        "regular_constraint and allowed_token_ids; /v1/completions takes "
                        "OpenAI's and vLLM's")
        decay = self.exponential_decay_length_penalty
        for name, served, why in (
                ("input_penalty", not self.input_penalty, "presence and frequency penalties "
                 "count the output's tokens only (repetition_penalty counts the prompt's too)"),
                ("exponential_decay_length_penalty", decay is None or (
                    isinstance(decay, list) and len(decay) == 2 and decay[1] == 1),
                 "the server has no length penalty"),
                ("print_eos_token", not self.print_eos_token, "the eos token that ends an "
                 "output is counted with an empty text")):
            if not served:
                raise InvalidRequest(f"parameters.{name} is not served: {why}",
                                     param=f"parameters.{name}")

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


class TokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True  # with messages, as in ChatCompletionRequest
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    template_options = _template_options


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: list[int]


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(obj),
                        content_type="application/json", charset="utf-8")

