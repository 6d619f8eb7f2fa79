"""Where the JSON objects and arrays written in one text close, found by reading their
brackets once (and checking their JSON as the decoder would), and their decoding within
them: a value that never closes (a looping model's list nested in itself,
`[{...}, [{...}, [...`, cut by max_tokens) is never handed to the decoder, which would
read it to the text's end (or its recursion limit) once for each of its levels, in time
quadratic in the text's length.
"""

from __future__ import annotations

import re

from aiollm.api.call_text import decode_json

_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as the decoder skips it
# a JSON string as the decoder (strict) reads one: no control character, known escapes
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
# a number (ASCII digits only, as the decoder's) or a literal, NaN and Infinity included
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
                     r"|true|false|null|NaN|Infinity|-Infinity")
# runs of those values as an array's elements, or an object's members, that one regular
# expression reads (in C, not a Python step each: a call's arguments of many numbers); a
# value matches one way only, so a run stops where the steps one by one would
_ONE = rf"(?:{_STRING.pattern}|{_SCALAR.pattern})"
_ELEMENTS = re.compile(rf"{_ONE}(?:[ \t\n\r]*,[ \t\n\r]*{_ONE})*")
_MEMBER = rf"{_STRING.pattern}[ \t\n\r]*:[ \t\n\r]*{_ONE}"
_MEMBERS = re.compile(rf"{_MEMBER}(?:[ \t\n\r]*,[ \t\n\r]*{_MEMBER})*")
_ONE_VALUE = re.compile(_ONE)
# what a reading expects next
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _NEXT = range(6)


class Brackets:
    """The objects and arrays written in `text`, read from those asked about as the JSON
    decoder reads them (its grammar: whitespace, strings and their escapes, numbers,
    literals), but without building values or recursing: each bracket read is remembered
    with where its value ends, or that it never does (the text ends first, or the JSON
    stops being valid there, as the decoder would), so a value inside one read already (a
    level of a nested list) is not read again, and one that holds it is read around it.
    A reading stops where the decoder would fail, so one from a bracket that an earlier
    reading found inside a string (its own, shifted reading) costs what decoding it would."""

    __slots__ = ("text", "_ends")

    def __init__(self, text: str):
        self.text = text
        self._ends: dict[int, int] = {}

    def end(self, at: int) -> int:
        """Where the object or array whose opening bracket is text[at] ends (past its
        closing bracket), where text[at:] begins one valid as JSON; -1 where none does
        (the text ends first or the JSON is invalid before it closes). Valid JSON ends where
        the decoder ends it (which may still fail it: nested past its recursion limit, an
        integer past int's digit limit)."""
        ends, text = self._ends, self.text
        if at in ends:
            return ends[at]
        assert text[at] in "[{", (at, text[at:at + 1])
        stack, pos, size = [at], at + 1, len(text)
        expect = _KEY_OR_CLOSE if text[at] == "{" else _VALUE_OR_CLOSE
        while (pos := _SPACE.match(text, pos).end()) < size:
            ch = text[pos]
            if expect == _NEXT or (ch in "]}" and expect in (_VALUE_OR_CLOSE, _KEY_OR_CLOSE)):
                top = text[stack[-1]]
                if ch == "," and expect == _NEXT:
                    expect, pos = (_KEY if top == "{" else _VALUE), pos + 1
                elif ch == ("}" if top == "{" else "]"):
                    ends[stack.pop()] = pos = pos + 1
                    if not stack:
                        return pos
                    expect = _NEXT
                else:
                    break
            elif expect == _COLON:
                if ch != ":":
                    break
                expect, pos = _VALUE, pos + 1
            elif expect in (_KEY, _KEY_OR_CLOSE):
                if (m := _MEMBERS.match(text, pos)) is not None:
                    expect, pos = _NEXT, m.end()
                elif (m := _STRING.match(text, pos)) is not None:
                    expect, pos = _COLON, m.end()
                else:
                    break
            elif ch in "[{":
                known = ends.get(pos)
                if known is None:
                    stack.append(pos)
                    expect, pos = (_KEY_OR_CLOSE if ch == "{" else _VALUE_OR_CLOSE), pos + 1
                elif known < 0:  # never valid: nor are the values around it
                    break
                else:
                    expect, pos = _NEXT, known
            elif (m := (_ELEMENTS if text[stack[-1]] == "[" else _ONE_VALUE).match(text, pos)
                  ) is not None:
                expect, pos = _NEXT, m.end()
            else:
                break
        for i in stack:
            ends[i] = -1
        return -1

    def decode(self, pos: int) -> tuple[object, int]:
        """call_text.decode_json(text, pos): (the JSON value that starts at text[pos],
        where it ends). An object or array is decoded only where its brackets close, and
        within them: a JSONDecodeError counts the lines of the text before the place it
        fails, of the value's only. Raises ValueError where none parses."""
        text = self.text
        if not text.startswith(("[", "{"), pos):
            return decode_json(text, pos)
        end = self.end(pos)
        if end < 0:
            raise ValueError(f"the JSON value at {pos} does not close")
        value, stop = decode_json(text[pos:end], 0)
        return value, pos + stop
