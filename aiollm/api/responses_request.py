"""The body of /v1/responses (`ResponsesRequest`, OpenAI's Responses API as vLLM serves it)
and its translation into the chat request it stands for (`as_chat`): the input items become
messages (response_input.py), `instructions` a system message first, `text.format` the
response_format, the flat function tools the chat form of them. The chat path then
renders, samples and constrains it as it would a chat completion (aiollm/api/chat_plan.py).

A request continuing a kept response (previous_response_id) is given that response's
conversation first (`earlier`: its input items, then its output items; response_store.py).
What the server does not do is refused with a 400 naming the field: background responses,
conversations, a reusable prompt, moderation, built-in tools, image, file and audio inputs.
The output text's logprobs (include "message.output_text.logprobs", top_logprobs
alternatives) are chat's (responses.py); an include value none of OpenAI's is a 400.
Chat's min_tokens, bad_words and allowed_token_ids, which vLLM's ResponsesRequest lacks (it
ignores them), are served as chat serves them: they ask for what the client wants.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, Union

from msgspec import Struct

from aiollm.api.chat_request import MODERATION_REFUSED, ChatCompletionRequest, ChatMessage
from aiollm.api.openai_hints import (VERBOSITIES, ResponsePromptCacheOptions, check_choice,
                                     check_prompt_cache, check_safety_identifier)
from aiollm.api.protocol import Stop, TopK, refuse_unserved
from aiollm.api.response_input import input_messages
from aiollm.errors import InvalidRequest, check_type, missing, shown_json
from aiollm.sampling_params import MAX_LOGPROBS

_CHAT_CONSTRAINTS = ("response_format", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar")
_STORED = "this server keeps no background responses, conversations or prompts"
OUTPUT_LOGPROBS = "message.output_text.logprobs"  # include's ask for the text's logprobs
# OpenAI's include values (the openai SDK's ResponseIncludable); a value not among them is a
# 400 at OpenAI and vLLM. The others than OUTPUT_LOGPROBS ask for the output of built-in
# tools, input images or encrypted reasoning, none of which is made here: taken (as vLLM
# takes them; Codex asks for encrypted reasoning in each request), they add nothing
INCLUDABLE = ("file_search_call.results", "web_search_call.results",
              "web_search_call.action.sources", "message.input_image.image_url",
              "computer_call_output.output.image_url", "code_interpreter_call.outputs",
              "reasoning.encrypted_content", OUTPUT_LOGPROBS)


class ResponseStreamOptions(Struct, kw_only=True):
    """OpenAI's stream_options of /v1/responses."""

    # OpenAI pads its delta events with an `obfuscation` field of random characters
    # (against side channels on payload sizes) unless this is false: this server adds
    # none, as vLLM does not, so either value is served as false
    include_obfuscation: bool | None = True


class ResponsesRequest(Struct, kw_only=True):
    """OpenAI's CreateResponse body, with vLLM's sampling extensions; None is the default."""

    input: Union[str, list[Any]]
    model: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = True
    reasoning: dict[str, Any] | None = None
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None  # with stream only (check_unserved)
    store: bool | None = True
    metadata: dict[str, Any] | None = None  # checked with the chat request (metadata.py)
    user: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None  # alternatives per token, with include's logprobs
    # echoed in the Response as given (OpenAI's Response carries them), else unused;
    # max_tool_calls bounds calls to built-in tools (OpenAI's), of which none run here
    max_tool_calls: int | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: ResponsePromptCacheOptions | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    previous_response_id: str | None = None  # a kept response's id (response_store.py)
    # refused (check_unserved)
    background: bool | None = False
    conversation: Any = None
    prompt: Any = None
    moderation: Any = None
    # vLLM's extensions, as on its chat path
    top_k: TopK | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: Stop = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = False
    skip_special_tokens: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None
    request_id: str | None = None
    structured_outputs: Any = None  # checked on the chat path (structured.py)
    logit_bias: Any = None
    include_stop_str_in_output: bool | None = False  # vLLM's, as on its chat path
    # chat's constraints, not this API's: refused (check_chat_fields), never ignored
    response_format: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    # chat's sampling fields, which vLLM's ResponsesRequest lacks and ignores: served as on
    # chat (a client sending them asks for them; a 400 would fail a request vLLM runs)
    min_tokens: int | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: Any = None  # checked on the chat path (structured.constraint)

    def check_chat_fields(self) -> None:
        """InvalidRequest naming the first of chat's constraint fields sent here: they would
        shape the output, and this body takes text.format and structured_outputs instead.
        Checked before the chat path names response_format as text.format."""
        refuse_unserved(self, _CHAT_CONSTRAINTS, "", "/v1/responses takes text.format (or "
                        "vLLM's structured_outputs: json, regex, choice, grammar...)")

    def check_unserved(self) -> None:
        """InvalidRequest naming the first field asking for what the server does not do."""
        if self.background:
            raise InvalidRequest(f"background is not served: {_STORED}; send false or leave "
                                 "it out", param="background")
        for name in ("conversation", "prompt"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name} is not served: {_STORED}; send the messages as "
                                     "input items (or previous_response_id)", param=name)
        # as chat refuses it (SamplingFields.check_unserved): its options shape a stream,
        # and an answer in one piece would silently leave out what they ask for
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options is only allowed with stream true: send "
                                 "stream true, or leave stream_options out",
                                 param="stream_options")
        if self.moderation is not None:
            raise InvalidRequest(MODERATION_REFUSED, param="moderation")
        # echoed in the Response: held to OpenAI's values, as chat holds them
        check_prompt_cache(self.prompt_cache_retention, self.prompt_cache_options)
        check_safety_identifier(self.safety_identifier)
        verbosity = check_type((self.text or {}).get("verbosity"), (str,), "text.verbosity")
        check_choice(verbosity, VERBOSITIES, "text.verbosity")  # chat's verbosity, echoed
        if self.truncation not in (None, "disabled"):
            raise InvalidRequest(f"truncation {shown_json(self.truncation)} is not served: send "
                                 '"disabled" or leave it out (an input past the context is a '
                                 "400)",
                                 param="truncation")
        for i, value in enumerate(self.include or ()):
            if value not in INCLUDABLE:
                raise InvalidRequest(f"include[{i}] {shown_json(value)} is none of OpenAI's "
                                     f"values: {', '.join(INCLUDABLE)}", param=f"include[{i}]")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], "
                                 f"got {self.top_logprobs}", param="top_logprobs")
        if self.max_tool_calls is not None and self.max_tool_calls < 0:
            raise InvalidRequest(f"max_tool_calls must be a count of calls (>= 0), got "
                                 f"{self.max_tool_calls}", param="max_tool_calls")

    def wants_logprobs(self) -> bool:
        """Whether the output text's logprobs are asked for (include, as OpenAI and vLLM
        take it: top_logprobs alone asks for none)."""
        return OUTPUT_LOGPROBS in (self.include or ())

    def as_chat(self, earlier: Sequence[dict] = ()) -> ChatCompletionRequest:
        """The chat request this one stands for, its input following the items `earlier`
        (the conversation of the response it continues). InvalidRequest naming the field
        (input[i], tools[i], text.format, tool_choice) for a shape the server does not
        take."""
        messages = ([ChatMessage(role="system", content=self.instructions)]
                    if self.instructions is not None else [])
        messages += input_messages(self.input, earlier)
        effort = (self.reasoning or {}).get("effort")
        return ChatCompletionRequest(
            messages=messages, model=self.model, max_completion_tokens=self.max_output_tokens,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            seed=self.seed, stop=self.stop, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, stream=self.stream,
            min_tokens=self.min_tokens, bad_words=self.bad_words,
            allowed_token_ids=self.allowed_token_ids,
            response_format=response_format(self.text), tools=chat_tools(self.tools),
            tool_choice=chat_tool_choice(self.tool_choice),
            parallel_tool_calls=self.parallel_tool_calls, reasoning_effort=effort,
            chat_template_kwargs=self.chat_template_kwargs, user=self.user,
            cache_salt=self.cache_salt, request_id=self.request_id,
            metadata=self.metadata, structured_outputs=self.structured_outputs,
            logit_bias=self.logit_bias, logprobs=self.wants_logprobs(),
            top_logprobs=(self.top_logprobs or 0) if self.wants_logprobs() else None)


def response_format(text: dict | None) -> dict | None:
    """text.format as chat's response_format (structured.response_format checks it)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequest('text.format must be an object with a "type"', param="text.format")
    if fmt.get("type") != "json_schema":
        return fmt
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}


def chat_tools(tools: list | None) -> list | None:
    """The flat function tools ({type, name, description, parameters, strict}) in chat's
    form; a built-in tool (web_search, file_search, ...) or a custom one (free-form input,
    as Codex's apply_patch) is refused, naming it."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        check_type(tool, (dict,), f"tools[{i}]", required=True)
        if "type" not in tool:
            raise missing(f"tools[{i}].type")
        kind = tool["type"]
        if kind != "function":  # a custom tool is the client's, but takes free-form text
            why = ("the server reads no calls of free-form text input, as a custom tool's"
                   if kind == "custom" else "the server runs no built-in tools")
            raise InvalidRequest(f"tools[{i}].type {shown_json(kind)} is not served: {why}; "
                                 'send tools of type "function"', param=f"tools[{i}].type")
        out.append({"type": "function", "function": {
            k: v for k, v in tool.items() if k != "type" and v is not None}})
    return out


def chat_tool_choice(choice: Any) -> Any:
    """tool_choice in chat's form: {"type": "function", "name": N} names a function."""
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest('tool_choice {"type": "function"} needs the "name" of one '
                                 "of the tools", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict):
        raise InvalidRequest(f"tool_choice of type {shown_json(choice.get('type'))} is not "
                             'served: send "none", "auto", "required" or {"type": '
                             '"function", "name": ...}', param="tool_choice")
    return choice


# chat's names of the fields, as this body names them (longest first)
_RENAMES = [(re.compile(r"response_format\.json_schema"), "text.format"),
            (re.compile(r"response_format"), "text.format"),
            (re.compile(r"(tools\[\d+\])\.function"), r"\1"),
            (re.compile(r"tool_choice\.function\.name"), "tool_choice.name"),
            (re.compile(r"\bmax_completion_tokens\b|\bmax_tokens\b"), "max_output_tokens"),
            (re.compile(r"\breasoning_effort\b"), "reasoning.effort"),
            (re.compile(r"\bmessages\b"), "input")]


@contextmanager
def responses_names() -> Iterator[None]:
    """InvalidRequest raised by the chat path told in this body's field names (text.format
    for response_format, tools[i].name for tools[i].function.name, ...)."""
    try:
        yield
    except InvalidRequest as e:
        message, param = str(e), e.param
        for pattern, theirs in _RENAMES:
            message = pattern.sub(theirs, message)
            param = pattern.sub(theirs, param) if param else param
        raise InvalidRequest(message, param=param, code=e.code) from None
