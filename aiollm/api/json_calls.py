"""Tool calls written as JSON values in a model's text: an object `{"name": ..., "<args
key>": {...}}` (Hermes' inside its tags, Mistral's and Llama 3's bare), or a list of them,
each read whole where it parses; its arguments as written (aiollm/api/call_text.py). The
families' parsers (aiollm/api/tool_parsers.py) say where such values stand and what
separates them.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from aiollm.api.call_text import element_starts, member_text, skip_json_space
from aiollm.api.json_brackets import Brackets
from aiollm.api.tool_calls import ToolCall

# what a JSON value may start with: an element is decoded only where one may (a value that
# fails to decode costs the text before it: _may_hold_calls), a number or a literal only
# where it is written whole (as the decoder reads them: -Infinity too)
_VALUE_START = frozenset('{["-0123456789tfn')
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|-Infinity")


def json_calls(text: str, pos: int, args_key: str, seps: str,
               words: tuple[str, ...] = (),
               names: Collection[str] | None = None,
               brackets: Brackets | None = None) -> tuple[list[ToolCall], int]:
    """The calls written as JSON values (objects, or arrays of them) from text[pos:] on,
    separated by characters of `seps`, `words` (Llama 3's <|python_tag|>) and whitespace
    (any: U+00A0 too, as a stream's joints read it): (the calls, where they end); none if
    the first does not parse. With `names`, a value naming a function not among them ends
    the calls as one that does not parse does (None: any name). `brackets`: the text's
    (json_brackets.Brackets), which a caller reading it again shares."""
    calls, brackets = [], Brackets(text) if brackets is None else brackets
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
            obj, end = brackets.decode(pos)
        except ValueError:
            return calls, pos
        found = _calls_of(obj, args_key, text, pos)
        if not found or None in found or (
                names is not None and any(c.name not in names for c in found)):
            return calls, pos
        calls += found
        pos = end


def list_calls(text: str, at: int, args_key: str, names: Collection[str] | None,
               words: tuple[str, ...] = (), brackets: Brackets | None = None
               ) -> tuple[list[ToolCall], str, int] | None:
    """(the calls among the elements of the JSON list written at text[at], a list of calls
    among them too (as json_calls reads one); the list without them as written, "" where
    all are calls; where the list ends): its elements that are not calls (to one of
    `names`; None: any name) are the model's text, a list still. `words` (Llama 3's
    <|python_tag|>) before an element are markup. None where no list of such elements is
    written there or it holds no call. Read element by element, and no further than one
    that neither ',' nor ']' follows (a list that text ends, not decoded whole: see
    _may_hold_calls); an element that is an object or an array only where its brackets
    close (`brackets`, the text's: json_brackets.Brackets)."""
    read = _elements(Brackets(text) if brackets is None else brackets, at, words)
    if read is None:
        return None
    elements, end = read
    calls, keep = [], []
    for k, (obj, start, _) in enumerate(elements):
        found = _calls_of(obj, args_key, text, start)
        if found and None not in found and (
                names is None or all(c.name in names for c in found)):
            calls += found
        else:
            keep.append(k)
    if not calls or not keep:
        return (calls, "", end) if calls else None
    # each element kept with the separator after it, the last with the list's closing
    rest = [text[at:elements[0][1]]]
    for k in keep:
        _, start, stop = elements[k]
        rest += [text[start:stop],
                 text[stop:elements[k + 1][1]] if k != keep[-1] else text[elements[-1][2]:end]]
    return calls, "".join(rest), end


def _elements(brackets: Brackets, at: int, words: tuple[str, ...]
              ) -> tuple[list[tuple[Any, int, int]], int] | None:
    """([(value, where it starts, where it ends)] of the elements of the JSON list written
    at text[at] (the text of `brackets`), `words` allowed before each; where the list
    ends). None where no such list (of one element or more) is written there; a value is
    decoded only where one may start (a number or a literal: where one is written whole;
    an object or an array: where its brackets close), and where the element before it is
    followed by ','."""
    text, elements, pos = brackets.text, [], at
    while True:
        pos = skip_json_space(text, pos + 1)  # past the '[' or the ','
        while (word := next((w for w in words if text.startswith(w, pos)), None)):
            pos = skip_json_space(text, pos + len(word))
        if pos >= len(text) or text[pos] not in _VALUE_START or (
                text[pos] not in '{["' and _SCALAR.match(text, pos) is None):
            return None
        try:
            obj, end = brackets.decode(pos)
        except ValueError:
            return None
        elements.append((obj, pos, end))
        pos = skip_json_space(text, end)
        if text.startswith("]", pos):
            return elements, pos + 1
        if not text.startswith(",", pos):
            return None


def _calls_of(obj: Any, args_key: str, text: str, at: int) -> list[ToolCall | None]:
    """The calls of `obj`, the JSON value written at text[at] (decoded already): its own
    (json_call) or, a list, its elements' (None for one that is no call)."""
    if isinstance(obj, list):
        return [json_call(o, args_key, text, s) for o, s in zip(obj, element_starts(text, at))]
    return [json_call(obj, args_key, text, at)]


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
    written (call_text.member_text), "{}" when it has none; None where `obj` is no call,
    or its arguments are nested too deep for the decoder to read them again here."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    try:
        args = member_text(text, at, args_key)
        if args is None:
            args = member_text(text, at, "arguments")
    except ValueError:  # too deep to read again here: as one too deep to decode
        return None
    return ToolCall(obj["name"], "{}" if args is None else args)


def value_end(text: str, at: int, brackets: Brackets | None = None) -> int:
    """Where the JSON value written at text[at] ends; `at` where none is. `brackets`: the
    text's (json_brackets.Brackets), which a caller reading it again shares."""
    try:
        return (Brackets(text) if brackets is None else brackets).decode(at)[1]
    except ValueError:
        return at
