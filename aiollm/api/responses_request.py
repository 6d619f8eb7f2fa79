"""The body of /v1/responses (`ResponsesRequest`, OpenAI's Responses API as vLLM serves it)
and its translation into the chat request it stands for (`as_chat`): the input items become
messages, `instructions` a system message first, `text.format` the response_format, the
flat function tools the chat form of them. The chat path then renders, samples and
constrains it as it would a chat completion (aiollm/api/chat_plan.py).

A request continuing a kept response (previous_response_id) is given that response's
conversation first (`earlier`: its input items, then its output items; response_store.py).
What the server does not do is refused with a 400 naming the field: background responses,
conversations, a reusable prompt, built-in tools, image, file and audio inputs, logprobs.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, Union

from msgspec import Struct

from aiollm.api.chat_request import ChatCompletionRequest, ChatMessage, ContentPart
from aiollm.api.protocol import Stop, TopK
from aiollm.engine.content_parts import text_parts
from aiollm.errors import InvalidRequest

_ROLES = ("user", "system", "developer", "assistant")
_STATUSES = (None, "in_progress", "completed", "incomplete")  # an item's, as the SDK types it
_STORED = "this server keeps no background responses, conversations or prompts"


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
    store: bool | None = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    previous_response_id: str | None = None  # a kept response's id (response_store.py)
    # refused (check_unserved)
    background: bool | None = False
    conversation: Any = None
    prompt: Any = None
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

    def check_unserved(self) -> None:
        """InvalidRequest naming the first field asking for what the server does not do."""
        if self.background:
            raise InvalidRequest(f"background is not served: {_STORED}; send false or leave "
                                 "it out", param="background")
        for name in ("conversation", "prompt"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name} is not served: {_STORED}; send the messages as "
                                     "input items (or previous_response_id)", param=name)
        if self.truncation not in (None, "disabled"):
            raise InvalidRequest(f'truncation {self.truncation!r} is not served: send "disabled"'
                                 " or leave it out (an input past the context is a 400)",
                                 param="truncation")
        if self.top_logprobs:
            raise InvalidRequest("top_logprobs is not served on /v1/responses: send 0 or "
                                 "leave it out (/v1/chat/completions serves logprobs)",
                                 param="top_logprobs")
        if "message.output_text.logprobs" in (self.include or ()):
            raise InvalidRequest('include "message.output_text.logprobs" is not served: '
                                 "/v1/chat/completions serves logprobs", param="include")
        if self.max_tool_calls is not None:
            raise InvalidRequest("max_tool_calls is not served: the server runs no tools, each "
                                 "response ends at the model's calls; leave it out "
                                 "(parallel_tool_calls false allows one)",
                                 param="max_tool_calls")

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
            skip_special_tokens=self.skip_special_tokens, stream=self.stream,
            response_format=response_format(self.text), tools=chat_tools(self.tools),
            tool_choice=chat_tool_choice(self.tool_choice),
            parallel_tool_calls=self.parallel_tool_calls, reasoning_effort=effort,
            chat_template_kwargs=self.chat_template_kwargs, user=self.user,
            cache_salt=self.cache_salt, request_id=self.request_id)


def input_messages(value: str | list[Any], earlier: Sequence[dict] = ()) -> list[ChatMessage]:
    """The chat messages of the items `earlier` (a kept conversation, checked when it was
    kept), then of `input` (its items named input[i] in errors), read as one list: a turn's
    items may straddle the two (a kept call, then its output sent now). A string `input`
    is one user message; each item a message,
    a function_call (joined to the assistant turn before it, or one of its own) or a
    function_call_output (a tool message). A reasoning item, a past turn's reasoning sent
    back, is that assistant turn's reasoning_content, which the chat template renders where
    it renders reasoning (Qwen3's: in the turns after the last user message); as vLLM joins
    them, it goes to the assistant turn just before it if that has none yet, and an
    assistant message after reasoning or calls alone is their turn's content."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    elif not value:
        raise InvalidRequest("input must hold at least one item", param="input")
    out: list[ChatMessage] = []
    for i, item in enumerate([*earlier, *value], -len(earlier)):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{at} must be an object", param=at)
        kind = item.get("type", "message")
        if item.get("status") not in _STATUSES:
            raise InvalidRequest(f"{at}.status must be in_progress, completed or incomplete "
                                 f"(or null), got {item['status']!r:.100}",
                                 param=f"{at}.status")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequest(f"{at}.role must be one of {', '.join(_ROLES)}, got "
                                     f"{role!r}", param=f"{at}.role")
            content = item.get("content")
            # no parts: an empty turn (the model would answer a question nobody asked),
            # refused as chat refuses it
            if content == []:
                raise InvalidRequest(f"{at}.content must hold at least one part (or be a "
                                     "string)", param=f"{at}.content")
            text = _text(content, f"{at}.content")
            last = out[-1] if out else None
            # the message of a turn whose reasoning (or calls) came first: that turn's
            if role == "assistant" and last is not None and last.role == "assistant" \
                    and last.content is None:
                last.content = text
            else:
                out.append(ChatMessage(role=role, content=text))
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", at), "type": "function", "function": {
                "name": _string(item, "name", at), "arguments": _string(item, "arguments", at)}}
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)
            elif last is not None and last.role == "assistant":
                last.tool_calls = [call]
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            text = _text(output, f"{at}.output")
            out.append(ChatMessage(role="tool", content=text,
                                   tool_call_id=_string(item, "call_id", at)))
        elif kind == "reasoning":
            thought = _reasoning(item, at)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.reasoning_content is None:
                last.reasoning_content = thought
            else:
                out.append(ChatMessage(role="assistant", reasoning_content=thought))
        else:
            raise InvalidRequest(f'{at}.type {kind!r} is not served: send "message", '
                                 '"reasoning", "function_call" or "function_call_output" '
                                 "items", param=f"{at}.type")
    for m in out:  # a turn of reasoning alone: its answer was empty
        if m.role == "assistant" and m.content is None and m.tool_calls is None:
            m.content = ""
    return out


def _reasoning(item: dict, at: str) -> str:
    """The text of a reasoning item (a past turn's, sent back as OpenAI asks): its
    reasoning_text parts joined, else its summary_text parts joined by a blank line (as
    vLLM takes the summary where the content is missing). Both are checked (null or a list
    of their parts: the item is kept and listed back as sent). A non-empty
    encrypted_content is refused: the server never writes it, so it is another server's
    ("" or null carry none, as vLLM reads them)."""
    if item.get("encrypted_content") not in (None, ""):
        said = ("is not served: this server writes reasoning as reasoning_text content; "
                "send that back instead") if isinstance(item["encrypted_content"], str) \
            else "must be a string"
        raise InvalidRequest(f"{at}.encrypted_content {said}", param=f"{at}.encrypted_content")
    texts = {key: _thought_parts(item.get(key), kind, f"{at}.{key}")
             for key, kind in (("content", "reasoning_text"), ("summary", "summary_text"))}
    return "".join(texts["content"]) if texts["content"] else "\n\n".join(texts["summary"])


def _thought_parts(parts: Any, kind: str, at: str) -> list[str]:
    """The texts of a reasoning item's summary or content `parts` (at the path `at`), each
    part of type `kind`; null is none."""
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise InvalidRequest(f"{at} must be a list of parts", param=at)
    texts = []
    for j, part in enumerate(parts):
        where = f"{at}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f'{where} must be a part: an object of type "{kind}"',
                                 param=where)
        if part.get("type") != kind:
            raise InvalidRequest(f'{where}.type must be "{kind}"', param=f"{where}.type")
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
        texts.append(part["text"])
    return texts


def _string(item: dict, key: str, at: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{at}.{key} must be a string", param=f"{at}.{key}")
    return value


def _text(content: Any, at: str) -> str | list[ContentPart]:
    """An input message's content or a call's output, at the path `at`, as text
    (content_parts.text_parts, as chat takes a message's parts): a string, or its text
    parts, which the chat template is given in the server's content format, joined or as
    a list; no parts (a call's output: a message's are refused before) as "", the tool's
    empty answer, as vLLM joins them. The Responses API's schema takes refusal parts in any
    role's content, and no plain strings in a list."""
    parts = text_parts(content, at, refusal=True, strings=False)
    if isinstance(parts, str):
        return parts
    if not parts:  # a call's output of no parts: the tool said nothing (a message's is refused)
        return ""
    return [ContentPart(type="text", text=p["text"]) for p in parts]


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
    form; a built-in tool (web_search, file_search, ...) is refused, naming it."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidRequest(f'tools[{i}].type {kind!r} is not served: the server runs '
                                 'no built-in tools; send tools of type "function"',
                                 param=f"tools[{i}].type")
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
        raise InvalidRequest(f"tool_choice of type {choice.get('type')!r} is not served: "
                             'send "none", "auto", "required" or {"type": "function", '
                             '"name": ...}', param="tool_choice")
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
