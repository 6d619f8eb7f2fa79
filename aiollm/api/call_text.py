"""A tool call's arguments as the model wrote them, and the calls an output (whole or a
stream's prefix) has written so far.

A call's `arguments` is the text of its JSON value as written, not the value re-encoded:
a stream sends that text as it arrives (aiollm/api/tool_stream.py), so the whole answer
holds the same characters and the stream's fragments join to it byte for byte. OpenAI's
arguments are the model's text too. An arguments value written as a JSON string (JSON in a
string) is its decoded text, which a stream sends once the string is complete.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection
from dataclasses import dataclass

_DECODER = json.JSONDecoder()
JSON_SPACE = " \t\n\r"
# what may follow a number's digits and still be that number ('-2.' of '-2.5', '1e' of
# '1e-3'): the decoder stops before it, at the text's end too
_NUMBER_GOES_ON = re.compile(r"(?:\.\d*)?(?:[eE][-+]?\d*)?")


def decode_json(text: str, pos: int) -> tuple[object, int]:
    """(the JSON value that starts at text[pos], where it ends), as JSONDecoder.raw_decode.
    Raises ValueError where none parses there, a value nested deeper than the decoder's
    recursion goes too (a looping model's '[[[...' in a call's arguments): the readers
    take it for text that does not parse rather than fail the request."""
    try:
        return _DECODER.raw_decode(text, pos)
    except RecursionError:
        raise ValueError(f"JSON at {pos} nested too deep to decode") from None


def skip_json_space(text: str, pos: int) -> int:
    """The first position at or after `pos` that is not JSON whitespace."""
    while pos < len(text) and text[pos] in JSON_SPACE:
        pos += 1
    return pos


def member_text(text: str, pos: int, key: str) -> str | None:
    """The arguments text (value_text) of the first member named `key` of the JSON object
    that starts at text[pos] and is known to be valid; None without one. The first, not
    the last as json.loads keeps: a stream has sent the first by the time a second comes.
    Raises ValueError where a member is nested deeper than the decoder goes here (deeper
    in the stack than where the object was decoded: decode_json)."""
    pos = skip_json_space(text, pos + 1)
    while text[pos] == '"':
        name, pos = _DECODER.raw_decode(text, pos)
        start = skip_json_space(text, skip_json_space(text, pos) + 1)  # past the ':'
        value, pos = decode_json(text, start)
        if name == key:
            return value if isinstance(value, str) else text[start:pos]
        pos = skip_json_space(text, pos)
        if text[pos] == ",":
            pos = skip_json_space(text, pos + 1)
    return None


def element_starts(text: str, pos: int) -> list[int]:
    """Where each element of the valid JSON array that starts at text[pos] starts."""
    starts, pos = [], skip_json_space(text, pos + 1)
    while text[pos] != "]":
        starts.append(pos)
        _, pos = _DECODER.raw_decode(text, pos)
        pos = skip_json_space(text, pos)
        if text[pos] == ",":
            pos = skip_json_space(text, pos + 1)
    return starts


def value_text(text: str, start: int) -> tuple[str, int, bool]:
    """(the arguments written so far, where they end, whether complete) of the JSON value
    that starts at text[start] (after whitespace) and may be cut at the text's end. An
    incomplete value is all the text after its start, except a string's (held: its decoded
    text is the arguments); a number or literal that reaches the end may go on, a number
    too that the end cuts in its fraction or exponent ('-2.', '1e': its digits so far)."""
    start = skip_json_space(text, start)
    if start >= len(text):
        return "", start, False
    try:
        value, end = decode_json(text, start)
    except ValueError:
        return ("" if text[start] == '"' else text[start:]), len(text), False
    if end == len(text) and text[start] not in '{["':
        return text[start:], end, False
    if type(value) in (int, float) and _NUMBER_GOES_ON.fullmatch(text, end) is not None:
        return text[start:end], end, False  # its digits so far: '-2.' may end as '-2'
    return (value if isinstance(value, str) else text[start:end]), end, True


@dataclass(slots=True)
class OpenValue:
    """Where a JSON object or array written so far stands, read one delta at a time: its
    brackets open outside strings (`depth`), whether it is inside a string (after a
    backslash there). A value that never comes back to depth 0 cannot decode, so its
    arguments are all the text after its start (value_text), without reading them again."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def extend(self, text: str) -> bool:
        """Reads `text`, the value's next characters: whether the value is still open
        after them (False: it may end in them; the state is then no longer the value's)."""
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return False
        return True


@dataclass(slots=True)
class Written:
    """A call as written so far: its name, its arguments text, whether they are complete."""

    name: str
    arguments: str = ""
    complete: bool = False
    id: str = ""  # the id the model wrote in its head (Heads.call_id); "" where none


@dataclass(frozen=True, slots=True)
class Joints:
    """How a parser's format leads to a call's head `{"name": `: `lead`, the text from the
    call marker to the first head; `between`, from the end of a call's arguments value
    (its object's closing bracket not yet read) to the next call's head."""

    lead: re.Pattern
    between: re.Pattern


ID_LENGTH = 9  # a call id a marked head writes (Mistral's: letters and digits)
ID_PATTERN = f"[A-Za-z0-9]{{{ID_LENGTH}}}"  # such an id, as a regular expression


@dataclass(frozen=True, slots=True)
class Heads:
    """How a format writes a call's head, the text before its arguments value: the part
    that names the call (`named`) and what follows it up to the value (`lead`). JSON heads
    (`marked` ""): `{"name": NAME` then `, "<args_key>": `, NAME a JSON string, whose
    closing quote ends it; a marker's heads (Mistral's v11 `marked` "[ARGS]"): the bare
    NAME and the marker, which alone ends it (`get` is a part of `get_weather`); with
    `call_id` (Mistral-Small-3.2's "[CALL_ID]"), NAME, that marker, the call's id
    (ID_LENGTH letters or digits, the model's) and `marked`. A call is known once its
    whole head up to `lead` is written, its id with it."""

    args_key: str = "arguments"
    marked: str = ""
    call_id: str = ""

    def named(self, name: str) -> str:
        """The text that names a call to `name`, as a tool grammar writes it (with
        `call_id`, the name and that marker: the id and `marked` follow)."""
        if self.call_id:
            return name + self.call_id
        return name + self.marked if self.marked else f'{{"name": {json.dumps(name)}'

    @property
    def lead(self) -> str:
        """What follows the head (`named`, and an id) up to the arguments value."""
        return "" if self.marked else f', "{self.args_key}": '

    def size(self, name: str) -> int:
        """The length of a whole head of a call to `name`, up to `lead`."""
        return len(self.named(name)) + (ID_LENGTH + len(self.marked) if self.call_id else 0)

    def begins(self, text: str, name: str) -> bool:
        """Whether `text` is the start of a head of a call to `name` (a cut one: the
        whole `named` part, or a start of it, then maybe an id and `marked` cut)."""
        named = self.named(name)
        if named.startswith(text):
            return True
        if not self.call_id or not text.startswith(named):
            return False
        rest = text[len(named):]
        written = rest[:ID_LENGTH]
        if not (written.isascii() and written.isalnum()):
            return False
        return len(written) < ID_LENGTH and rest == written or (
            len(written) == ID_LENGTH and self.marked.startswith(rest[ID_LENGTH:]))


@functools.lru_cache(maxsize=64)
def _heads(heads: Heads, names: tuple[str, ...]) -> tuple[re.Pattern, dict[str, str]]:
    # no head is a part of another's: a JSON name's closing quote ends it, or the marker
    # after a bare name ("get[ARGS]" is no part of "get_weather[ARGS]"); group 1 the head
    # that names the call, group 2 its id (with `call_id`)
    named = {heads.named(n): n for n in names}
    heads_re = "(" + "|".join(map(re.escape, named)) + ")"
    if heads.call_id:
        heads_re += f"({ID_PATTERN})" + re.escape(heads.marked)
    return re.compile(heads_re), named


def written_calls(text: str, pos: int, names: Collection[str], heads: Heads,
                  joints: Joints, *, after_call: bool = False,
                  seen: int = 0) -> tuple[list[Written], int]:
    """The calls written from text[pos] on, as a tool grammar writes them (`heads`: JSON
    heads `{"name": NAME, "<args_key>": VALUE`, or `NAME[ARGS]VALUE`, or with an id
    `NAME[CALL_ID]ID[ARGS]VALUE` (its `id`), NAME one of `names`),
    each known once its name is written: (the calls, the last one's arguments as written
    so far; where a next call may start, after the last complete one). Read in order, each
    call's value skipped (markers in its strings are its text); reading stops at an
    incomplete value, at a head that goes on otherwise than `heads.lead` (that call's
    arguments stay ""), or at a head the text before it does not lead to as the format
    joins calls (`joints`: from text[pos], a call marker unless `after_call`, to the first
    head; from a call's arguments to the next head): text after the calls that quotes a
    call's JSON is none. `seen`: no head that leads on starts before it (a stream read the
    text that far), so heads are looked for from there: no joint spans a head.

    The calls of a longer text extend those of its prefix (same calls, arguments that
    start with the prefix's): what a stream sends of them is never taken back."""
    if not names:
        return [], pos
    (pattern, named), between = _heads(heads, tuple(sorted(names))), heads.lead
    calls: list[Written] = []
    while (m := pattern.search(text, max(pos, seen))) is not None:
        joint = joints.between if calls or after_call else joints.lead
        if joint.fullmatch(text, pos, m.start()) is None:
            return calls, pos
        call = Written(named[m.group(1)], id=m.group(2) if heads.call_id else "")
        calls.append(call)
        rest = text[m.end():m.end() + len(between)]
        if rest != between:  # the head cut, or not a grammar's head: no arguments read
            return calls, pos
        call.arguments, end, call.complete = value_text(text, m.end() + len(between))
        if not call.complete:
            return calls, pos
        pos = end
    return calls, pos
