"""The messages of a conversation checked as OpenAI's chat API takes them, and put in the form
chat templates take: one check for the Engine API (Engine.chat, stream_chat) and the HTTP API
(api/chat_request.ChatMessage), so a message one refuses the other refuses too, naming the same
field (`messages[1].content[0]`).

Refused: a role outside OpenAI's (a template would render it anyway, and the model answer as
if it were a turn), content that is not text or text parts (or, an assistant's, refusal
parts), a message without content (only an assistant's tool calls stand in for it; an empty
list of parts is taken as vLLM takes it, an empty turn), tool calls anywhere but on an
assistant message or malformed, a tool message without the id of the call it answers. The
form: developer (OpenAI's newer name of system, which templates do not know) as system,
content a string as given or a list of text parts ({"type": "text", "text": ...}: refusal
parts and plain strings among them made text parts), no content (an assistant's with tool
calls) as an empty list of parts, a call's JSON arguments as the object templates render
themselves. The content reaches the template in the form content_format.py resolves: the
parts joined by "\n" into one string (vLLM's "string" format, no content as ""), or the
list (its "openai" format, a string as one text part).
"""

from __future__ import annotations

from typing import Any

import msgspec

from aiollm.engine.content_parts import text_parts
from aiollm.errors import InvalidRequest, missing, shown_json, too_deep

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_STRINGS = ("name", "tool_call_id", "reasoning_content", "reasoning")


def checked_messages(messages: Any) -> list[dict[str, Any]]:
    """Each message of a conversation (a list or tuple of dicts) checked and in the form
    chat templates take (checked_message). Raises InvalidRequest naming "messages" for
    another type or an empty conversation, else the field at fault."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidRequest('messages must be a list of {"role", "content"} dicts, got '
                             f"{type(messages).__name__}", param="messages")
    if not messages:
        raise InvalidRequest("messages must hold at least one message", param="messages")
    return [checked_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


def checked_message(m: Any, at: str) -> dict[str, Any]:
    """The message `m` (a dict, at the path `at`) as chat templates take it: role and content
    (a string, or a list of text parts: _content), its name, tool calls, tool_call_id and
    reasoning (`reasoning_content`, also from vLLM's `reasoning`) when given; other keys as
    they are. Raises InvalidRequest naming the field (`{at}.role`...) for a message OpenAI's
    chat API refuses."""
    if not isinstance(m, dict):
        raise InvalidRequest(f'{at} must be a {{"role", "content"}} dict, got '
                             f"{type(m).__name__}", param=at)
    role, calls = m.get("role"), m.get("tool_calls")
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise InvalidRequest(f"{at}.role must be one of {', '.join(CHAT_ROLES)}, got "
                             f"{shown_json(role)}", param=f"{at}.role")
    for key in _STRINGS:
        if m.get(key) is not None and not isinstance(m[key], str):
            raise InvalidRequest(f"{at}.{key} must be a string", param=f"{at}.{key}")
    if calls is not None and not (isinstance(calls, list)
                                  and all(isinstance(c, dict) for c in calls)):
        raise InvalidRequest(f"{at}.tool_calls must be a list of objects",
                             param=f"{at}.tool_calls")
    if m.get("content") is None and not (role == "assistant" and calls):
        # an empty list of parts is taken, as vLLM takes it (an empty turn: "" or no parts,
        # as the content format gives it); no content at all is likelier a client's slip
        given = "null" if "content" in m else "missing"
        raise missing(f"{at}.content", f" for {_article(role)} {role} message, got {given} "
                      "(only an assistant message with tool_calls may omit it)")
    if calls and role != "assistant":
        raise InvalidRequest(f"only assistant messages have tool_calls, {at} is a "
                             f"{role} message", param=f"{at}.tool_calls")
    if role == "tool" and m.get("tool_call_id") is None:
        raise InvalidRequest("a tool message needs the tool_call_id of the call it "
                             "answers", param=f"{at}.tool_call_id")
    for j, call in enumerate(calls or ()):
        fn = call.get("function")
        if call.get("id") is not None and not isinstance(call["id"], str):
            # a tool message answers the call by this id (tool_call_id, a string)
            raise InvalidRequest(f"{at}.tool_calls[{j}].id must be a string",
                                 param=f"{at}.tool_calls[{j}].id")
        if call.get("type", "function") != "function":
            raise InvalidRequest(f'{at}.tool_calls[{j}].type must be "function", got '
                                 f"{shown_json(call.get('type'))}",
                                 param=f"{at}.tool_calls[{j}].type")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f'{at}.tool_calls[{j}].function must be an object with '
                                 'a "name"', param=f"{at}.tool_calls[{j}].function")
        if not isinstance(fn.get("arguments", ""), (str, dict)):
            raise InvalidRequest(f"{at}.tool_calls[{j}].function.arguments must be a JSON "
                                 "string", param=f"{at}.tool_calls[{j}].function.arguments")
    msg = {k: v for k, v in m.items() if v is not None and k != "reasoning"}
    msg["role"] = "system" if role == "developer" else role
    msg["content"] = _content(m.get("content"), f"{at}.content", role)
    if calls is not None:
        msg["tool_calls"] = _template_tool_calls(calls, at)
    thought = m.get("reasoning_content")
    if thought is None:
        thought = m.get("reasoning")
    if thought is not None:
        msg["reasoning_content"] = thought
    return msg


def _article(role: str) -> str:
    """The article a role's name takes: "an assistant", but "a user" (a consonant sound)."""
    return "an" if role == "assistant" else "a"


def _content(content: Any, at: str, role: str) -> str | list[dict[str, str]]:
    """A message's content as text (content_parts.text_parts): a string as it is, a list
    as text parts (a plain string in it a text part, as vLLM takes it; an assistant's
    refusal parts what it said, which OpenAI's schema allows there; another role's are
    refused); no content as no parts (vLLM's: "" to a template that reads a string, an
    empty list to one that reads parts)."""
    if content is None:
        return []
    # vLLM folds a thinking part into the content: the model would read its own reasoning as
    # what it said (only an assistant's message renders reasoning)
    hint = (": send an assistant's reasoning as the message's reasoning_content"
            if role == "assistant" else "")
    return text_parts(content, at, refusal=role == "assistant", strings=True,
                      thinking_hint=hint)


def _template_tool_calls(calls: list[dict[str, Any]], at: str) -> list[dict[str, Any]]:
    """OpenAI's calls carry arguments as a JSON string; chat templates (HF's convention)
    want the object, which they render themselves (arguments that are no JSON stay the
    string). Raises InvalidRequest naming `{at}.tool_calls[j].function.arguments` for
    arguments nested too deeply to decode (the decoder's recursion)."""
    out = []
    for j, c in enumerate(calls):
        fn = dict(c.get("function") or {})
        if isinstance(fn.get("arguments"), str):
            fn["arguments"] = _decoded_arguments(fn["arguments"],
                                                 f"{at}.tool_calls[{j}].function.arguments")
        out.append({**c, "function": fn})
    return out


def _decoded_arguments(text: str, param: str) -> Any:
    """A call's arguments `text` (a JSON string, as OpenAI sends them) as a template renders
    them: the decoded JSON value, or `text` itself where it is no JSON. InvalidRequest naming
    `param` where it is nested too deeply to decode (the decoder's recursion)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    except RecursionError:
        raise too_deep(param) from None


def check_call_arguments(text: str, param: str) -> None:
    """InvalidRequest naming `param` where a call's arguments `text` are nested too deeply
    to decode, as _decoded_arguments would tell them, without decoding them: msgspec skips a
    Raw value, checking its syntax and nesting (7 ms for 6 MB of small arrays, which take
    250 ms to decode). The Responses API checks its function_call items so, naming
    input[i].arguments, before the template's decode names the chat turn they join."""
    try:
        msgspec.json.decode(text, type=msgspec.Raw)
    except msgspec.DecodeError:
        return  # no JSON: the template renders the string itself
    except RecursionError:
        raise too_deep(param) from None

