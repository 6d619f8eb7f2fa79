"""The input items of a /v1/responses request as the chat messages they stand for
(`input_messages`): a message, a function_call joined to its assistant turn, a
function_call_output a tool message, a reasoning item its turn's reasoning_content; each
checked, errors naming its field (input[i]...), as the items are also kept as sent
(response_items.py). And what reading them weighs (`input_weight`: on the event loop or
off it).
"""

from __future__ import annotations

from typing import Any, NoReturn, Sequence

from aiollm.api.chat_request import ChatMessage, ContentPart
from aiollm.engine.chat_messages import check_call_arguments
from aiollm.engine.chat_template import MESSAGE_FRAMING
from aiollm.engine.content_parts import text_parts
from aiollm.engine.submission import TOKENIZE_INLINE_CHARS
from aiollm.errors import InvalidRequest, check_type, json_type, missing, shown_json

_ROLES = ("user", "system", "developer", "assistant")
_STATUSES = (None, "in_progress", "completed", "incomplete")  # an item's, as the SDK types it


def input_weight(value: str | list[Any], earlier: Sequence[dict] = ()) -> int:
    """What reading `value` (a request's input) after `earlier` (the items of the
    conversation it continues) weighs, in off_loop's characters: MESSAGE_FRAMING a message
    as chat weighs its messages (chat_request.message_dicts), and where they are few,
    MESSAGE_FRAMING each of their parts too (an item's content, a function_call_output's
    output, a reasoning item's summary, where each is a list): one item of 150,000 content
    parts held the event loop ~0.2 s, weighed as one message."""
    items = [*earlier, *(value if isinstance(value, list) else [value])]
    size = MESSAGE_FRAMING * len(items)
    if size <= TOKENIZE_INLINE_CHARS:  # a few items: their parts counted
        size += MESSAGE_FRAMING * sum(
            len(part) for item in items if isinstance(item, dict)
            for part in (item.get("content"), item.get("output"), item.get("summary"))
            if isinstance(part, list))
    return size


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
    assistant message after reasoning or calls alone is their turn's content. An output
    of `input` whose call_id no function_call item before it (of `earlier` or `input`) has
    is refused, naming input[i].call_id: _refuse_orphan. An item's id, where sent, is a
    string (null: none). An empty `input` ("" or []) is refused, naming input: OpenAI refuses
    both (an empty string with code empty_string); "" read as a user turn of no text ran to
    max_output_tokens."""
    if value == "":
        raise InvalidRequest("input must not be empty: give a user message's text or a list "
                             "of input items", param="input", code="empty_string")
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    elif not value:
        raise InvalidRequest("input must hold at least one item", param="input")
    out: list[ChatMessage] = []
    calls: set[str] = set()  # the call_ids of the function_call items so far
    for i, item in enumerate([*earlier, *value], -len(earlier)):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{at} must be an object", param=at)
        kind = check_type(item.get("type", "message"), (str,), f"{at}.type", required=True)
        check_type(item.get("id"), (str,), f"{at}.id")  # the SDK's ids: strings, or none
        if item.get("status") not in _STATUSES:
            raise InvalidRequest(f"{at}.status must be in_progress, completed or incomplete "
                                 f"(or null), got {shown_json(item['status'])}",
                                 param=f"{at}.status")
        if kind == "message":
            if "role" not in item:
                raise missing(f"{at}.role", f": one of {', '.join(_ROLES)}")
            role = item["role"]
            if role not in _ROLES:  # null too: a value sent, as _required tells it
                raise InvalidRequest(f"{at}.role must be one of {', '.join(_ROLES)}, got "
                                     f"{shown_json(role)}", param=f"{at}.role")
            # no parts: an empty turn, taken as chat (and vLLM) take it
            text = _text(_required(item, "content", at), f"{at}.content")
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
            # told here by its item: the chat check would name the turn it joins
            # (messages[k].tool_calls[j]), whose place in the input is not k
            check_call_arguments(call["function"]["arguments"], f"{at}.arguments")
            calls.add(call["id"])
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)
            elif last is not None and last.role == "assistant":
                last.tool_calls = [call]
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            text = _text(_required(item, "output", at), f"{at}.output")
            call_id = _string(item, "call_id", at)
            out.append(ChatMessage(role="tool", content=text, tool_call_id=call_id))
            if i >= 0 and call_id not in calls:  # the kept ones were checked when sent
                _refuse_orphan(i, call_id)
        elif kind == "reasoning":
            thought = _reasoning(item, at)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.reasoning_content is None:
                last.reasoning_content = thought
            else:
                out.append(ChatMessage(role="assistant", reasoning_content=thought))
        else:
            raise InvalidRequest(f'{at}.type {shown_json(kind)} is not served: send "message", '
                                 '"reasoning", "function_call", "function_call_output" or '
                                 '"item_reference" items', param=f"{at}.type")
    for m in out:  # a turn of reasoning alone: its answer was empty
        if m.role == "assistant" and m.content is None and m.tool_calls is None:
            m.content = ""
    return out


def _refuse_orphan(i: int, call_id: str) -> NoReturn:
    """InvalidRequest naming input[i].call_id: the output input[i] answers no function_call
    item before it (of the input, or of the conversation of previous_response_id), as
    OpenAI refuses it (400, "No tool call found for function call output"), reading the
    input in order: a tool message that answers nothing asked, or a call sent after it,
    renders a turn the model never took."""
    raise InvalidRequest(
        f"input[{i}].call_id {shown_json(call_id)} answers no function call: no "
        "function_call item before it, of this input or of the conversation of "
        "previous_response_id, has that call_id; send the function_call item before its "
        "output, or continue the response that made the call (previous_response_id)",
        param=f"input[{i}].call_id")


def _reasoning(item: dict, at: str) -> str:
    """The text of a reasoning item (a past turn's, sent back as OpenAI asks): its
    reasoning_text parts joined, else its summary_text parts joined by a blank line (as
    vLLM takes the summary where the content is missing). Both are checked (null or a list
    of their parts: the item is kept and listed back as sent); the summary, which OpenAI
    requires, is told missing where it is left out. A non-empty
    encrypted_content is refused: the server never writes it, so it is another server's
    ("" or null carry none, as vLLM reads them)."""
    if check_type(item.get("encrypted_content"), (str,), f"{at}.encrypted_content"):
        raise InvalidRequest(f"{at}.encrypted_content is not served: this server writes "
                             "reasoning as reasoning_text content; send that back instead",
                             param=f"{at}.encrypted_content")
    _required(item, "summary", at)  # the SDK's type requires it ([] for none); null is none
    texts = {key: _thought_parts(item.get(key), kind, f"{at}.{key}")
             for key, kind in (("content", "reasoning_text"), ("summary", "summary_text"))}
    return "".join(texts["content"]) if texts["content"] else "\n\n".join(texts["summary"])


def _thought_parts(parts: Any, kind: str, at: str) -> list[str]:
    """The texts of a reasoning item's summary or content `parts` (at the path `at`), each
    part of type `kind`; null is none. A part's text or type left out is told as missing,
    one of another type names what was sent (_string)."""
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise InvalidRequest(f"{at} must be a list of parts, got {json_type(parts)}", param=at)
    texts = []
    for j, part in enumerate(parts):
        where = f"{at}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f'{where} must be a part: an object of type "{kind}", got '
                                 f"{json_type(part)}", param=where)
        if part.get("type") != kind:
            if "type" not in part:
                raise missing(f"{where}.type", f': "{kind}"')
            given = check_type(part["type"], (str,), f"{where}.type", required=True)
            raise InvalidRequest(f'{where}.type must be "{kind}", got {shown_json(given)}',
                                 param=f"{where}.type")
        texts.append(_string(part, "text", where))
    return texts


def _required(item: dict, key: str, at: str) -> Any:
    """item[key], the item at the path `at`; InvalidRequest naming `{at}.{key}` where the
    item leaves it out, told as missing ("input[2].call_id is required"), as the body's
    own missing fields are (validation_errors.describe)."""
    if key not in item:
        raise missing(f"{at}.{key}")
    return item[key]


def _string(item: dict, key: str, at: str) -> str:
    """item[key], a string (_required); one of another type (null too) is told as the
    body's type errors are ("input[2].call_id: expected a string, got an integer")."""
    return check_type(_required(item, key, at), (str,), f"{at}.{key}", required=True)


def _text(content: Any, at: str) -> str | list[ContentPart]:
    """An input message's content or a call's output, at the path `at`, as text
    (content_parts.text_parts, as chat takes a message's parts): a string, or its text
    parts, which the chat template is given in the server's content format, joined or as
    a list; no parts as "" (a message's empty turn, a call's output: the tool said
    nothing), as vLLM joins them. The Responses API's schema takes refusal parts in any
    role's content, and no plain strings in a list."""
    parts = text_parts(content, at, refusal=True, strings=False)
    if isinstance(parts, str):
        return parts
    if not parts:
        return ""
    return [ContentPart(type="text", text=p["text"]) for p in parts]
