"""Tool calls written as JSON values in a model's text: an object `{"name": ..., "<args
key>": {...}}` (Hermes' inside its tags, Mistral's and Llama 3's bare), or a list of them,
each read whole where it parses; its arguments as written (aiollm/api/call_text.py). The
families' parsers (aiollm/api/tool_parsers.py) say where such values stand and what
separates them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aiollm.api.call_text import decode_json, element_starts, member_text, skip_json_space
from aiollm.api.tool_calls import ToolCall


def json_calls(text: str, pos: int, args_key: str, seps: str,
               words: tuple[str, ...] = (),
               names: Collection[str] | None = None) -> tuple[list[ToolCall], int]:
    """The calls written as JSON values (objects, or arrays of them) from text[pos:] on,
    separated by characters of `seps`, `words` (Llama 3's <|python_tag|>) and whitespace
    (any: U+00A0 too, as a stream's joints read it): (the calls, where they end); none if
    the first does not parse. With `names`, a value naming a function not among them ends
    the calls as one that does not parse does (None: any name)."""
    calls = []
    while True:
        while pos < len(text):
            if text[pos] in seps or text[pos].isspace():
                pos += 1
            elif (word := next((w for w in words if text.startswith(w, pos)), None)):
                pos += len(word)
            else:
                break
        if not _may_hold_calls(text, pos):  # not decoded: see _may_hold_calls
            return calls, pos
        try:
            obj, end = decode_json(text, pos)
        except ValueError:
            return calls, pos
        if isinstance(obj, list):
            found = [json_call(o, args_key, text, at)
                     for o, at in zip(obj, element_starts(text, pos))]
        else:
            found = [json_call(obj, args_key, text, pos)]
        if not found or None in found or (
                names is not None and any(c.name not in names for c in found)):
            return calls, pos
        calls += found
        pos = end


def list_calls(text: str, at: int, args_key: str, names: Collection[str] | None
               ) -> tuple[list[ToolCall], str, int] | None:
    """(the calls among the elements of the JSON list written at text[at], the list without
    them as written, where the list ends): its elements that are not calls (to one of
    `names`; None: any name) are the model's text, a list still. None where the list does
    not parse or holds no call."""
    try:
        obj, end = decode_json(text, at)
    except ValueError:
        return None
    if not isinstance(obj, list):
        return None
    starts = element_starts(text, at)
    ends = [decode_json(text, s)[1] for s in starts]
    calls, keep = [], []
    for k, (o, s) in enumerate(zip(obj, starts)):
        call = json_call(o, args_key, text, s)
        if call is not None and (names is None or call.name in names):
            calls.append(call)
        else:
            keep.append(k)
    if not calls:
        return None
    # each element kept with the separator after it, the last with the list's closing
    rest = [text[at:starts[0]]]
    for k in keep:
        rest += [text[starts[k]:ends[k]],
                 text[ends[k]:starts[k + 1]] if k != keep[-1] else text[ends[-1]:end]]
    return calls, "".join(rest), end


def _may_hold_calls(text: str, pos: int) -> bool:
    """Whether text[pos:] may begin an object or an array of objects, the values calls
    are. Asked before decoding: a value that fails to decode raises a JSONDecodeError,
    which counts the lines of all the text before it, so that an output of many places
    where a run of calls ends in text (or in Mistral's next marker, `[TOOL_CALLS]`) would
    read in time quadratic in its length."""
    if text.startswith("[", pos):
        pos = skip_json_space(text, pos + 1)
        return text.startswith(("{", "]"), pos)
    return text.startswith("{", pos)


def json_call(obj: Any, args_key: str, text: str, at: int) -> ToolCall | None:
    """The call of `obj`, the JSON object written at text[at] (decoded already): its
    "name" a string, its arguments the text of its `args_key` (or "arguments") member as
    written (call_text.member_text), "{}" when it has none; None where `obj` is no call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = member_text(text, at, args_key)
    if args is None:
        args = member_text(text, at, "arguments")
    return ToolCall(obj["name"], "{}" if args is None else args)


def value_end(text: str, at: int) -> int:
    """Where the JSON value written at text[at] ends; `at` where none is."""
    try:
        return decode_json(text, at)[1]
    except ValueError:
        return at
