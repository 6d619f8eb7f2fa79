"""Where the JSON objects and arrays written in one text close, found by matching their
brackets once, and their decoding within them: a value that never closes (a looping
model's list nested in itself, `[{...}, [{...}, [...`, cut by max_tokens) is never handed
to the decoder, which would read it to the text's end (or its recursion limit) once for
each of its levels, in time quadratic in the text's length.
"""

from __future__ import annotations

import re

from aiollm.api.call_text import decode_json

_SPECIAL = re.compile(r'[][{}"]')
# the rest of a JSON string after its opening quote, its closing quote included
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


class Brackets:
    """The brackets of `text`, matched from the objects and arrays asked about, strings and
    their escapes skipped as JSON reads them: each bracket read outside a string is
    remembered with where its value ends, so a value inside one read already (a level of a
    nested list) is not read again, and one that holds it is read around it. A text is
    read about once whatever is asked of it (again only from a bracket that an earlier
    reading found inside a string)."""

    __slots__ = ("text", "_ends")

    def __init__(self, text: str):
        self.text = text
        self._ends: dict[int, int] = {}

    def end(self, at: int) -> int:
        """Where the object or array whose opening bracket is text[at] ends (past the
        bracket that closes it, of either kind: the decoder fails at one of the other);
        -1 where the text ends first. Valid JSON ends where the decoder ends it."""
        ends, text = self._ends, self.text
        if at in ends:
            return ends[at]
        assert text[at] in "[{", (at, text[at:at + 1])
        stack, pos = [at], at + 1
        while (m := _SPECIAL.search(text, pos)) is not None:
            i, ch = m.start(), m.group()
            if ch == '"':
                string = _STRING_REST.match(text, i + 1)
                if string is None:  # a string the text ends: nothing before it closes
                    break
                pos = string.end()
            elif ch in "[{":
                known = ends.get(i)
                if known is None:
                    stack.append(i)
                    pos = i + 1
                elif known < 0:  # never closes: nor do the values around it
                    break
                else:
                    pos = known
            else:
                ends[stack.pop()] = i + 1
                if not stack:
                    return i + 1
                pos = i + 1
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
