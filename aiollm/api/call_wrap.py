"""Markup that models put around tool calls without their format defining it: a markdown
code fence (```json ... ```, ``` ... ```) around the calls, and for bare-JSON calls
(Llama 3) a JSON list of them (`[{...}, {...}]`). Such a wrapper is markup, not content,
when calls follow its opening: its opening goes with the calls, and its closing (`]`,
then the fence's ```) too where it follows them. A whole list whose other elements are
not calls keeps those as a list, content (`[{"x": 1}]`): a stream has sent its first
call before they came, and never takes a call back, so the list cannot be content whole
(vLLM's llama3_json answers such an output as content). A list is a wrapper only where
a call is its first element: one that opens with other values was sent as content
before its first call came (`[{"x": 1}, {call}]` leaves `[{"x": 1}, ]`). Text that might
be a wrapper's opening is held back by a stream (ToolParser.content_end) until what
follows shows whether a call does; a wrapper's opening is bounded (a fence's indent and
language, the whitespace in it), so that is never more than WRAP_MAX characters. vLLM's
llama3_json drops all text around calls (content null); aiollm drops the wrapper and
keeps the model's other text.

A fence opens a wrapper only where it is a fence (at a line's start, after at most INDENT
spaces) and outside the model's code blocks (where the fences before it are even in
number: Fences), so a block's closing ``` before a call stays the block's; a stream
passes the code blocks of the content it has sent. Only the content counts: the calls'
arguments are not the model's text (a pattern "```"). A wrapper's closing fence is a
run of three or more backticks, whitespace before it, only spaces or tabs after it on
its line (CommonMark's closing, though it may follow the calls on their line).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

FENCE = "```"
_INFO = frozenset(string.ascii_letters + string.digits + "_+.-")  # a fence's language
MAX_INFO = 16  # the longest language a fence opening calls may have ("javascript", "json")
MAX_SPACE = 16  # the most whitespace in one place of a wrapper's opening
MAX_BLANK = 3  # the most spaces or tabs on either side of a fence's language
_SPACE = " \t\r\n"
_RUN, _LEAD = re.compile("`+"), re.compile("( *)(`*)")
INDENT = 3  # the most spaces before a fence on its line (CommonMark)
# a fence that begins a line, whole (other text follows it)
_LINE_FENCES = re.compile("\n {0,%d}`{3,}(?=[^`])" % INDENT)
# a closing fence: its backticks, then only spaces or tabs to its line's end ("```python"
# opens a code block)
_CLOSE = re.compile("`{3,}(?=[ \t]*(?:[\r\n]|\\Z))")
# the longest wrapper opening: indent ``` blank language blank \r\n space [ space
WRAP_MAX = INDENT + len(FENCE) + 2 * MAX_BLANK + MAX_INFO + 2 + MAX_SPACE + 1 + MAX_SPACE


@dataclass(frozen=True, slots=True)
class Wrap:
    """A wrapper's opening at text[start:end] (the calls' own opening at `end`, or the text's
    end where it may still come), a fence's indent on its line included (markup as the
    closing fence's is): whether it opens a fence, whether a list ('[')."""

    start: int
    end: int
    fence: bool
    bracket: bool


def _space(text: str, i: int, space: str = _SPACE, most: int = MAX_SPACE) -> int:
    """Past at most `most` characters of `space` from text[i]; -1 where more follow."""
    j = i
    while j < len(text) and text[j] in space:
        j += 1
        if j - i > most:
            return -1
    return j


@dataclass(frozen=True, slots=True)
class Fences:
    """The code blocks of a text so far: whether one is open (an odd number of fences, runs
    of three or more backticks that begin a line, after at most INDENT spaces, as
    CommonMark's do: ``` within a sentence is none), the backticks that end the text (a run
    that the text to come may make longer), and the spaces that begin the text's last line
    (`col`; INDENT + 1: other text, or too many). Read character by character, so that a
    text read in parts (a stream's) gives what it gives whole."""

    open: bool = False
    ticks: int = 0
    col: int = 0

    def after(self, text: str, end: int, start: int = 0) -> Fences:
        """These fences (those before text[start]) followed by text[start:end]: the first
        and the last line read here, the fences that begin the lines between counted by
        one regular expression (a long code-heavy answer is read in C, not run by run)."""
        if not self.ticks and text.find("`", start, end) < 0:  # most text: no backtick
            nl = text.rfind("\n", start, end)
            col = _indent(self.col if nl < 0 else 0, text, max(start, nl + 1), end)
            return self if col == self.col else Fences(self.open, 0, col)
        first = text.find("\n", start, end)
        if first < 0:
            return Fences(*_line(self.open, self.ticks, self.col, text, start, end))
        is_open, _, _ = _ended(*_line(self.open, self.ticks, self.col, text, start, first))
        last = text.rfind("\n", first, end)
        is_open ^= len(_LINE_FENCES.findall(text, first, last + 1)) % 2 == 1
        return Fences(*_line(is_open, 0, 0, text, last + 1, end))

    def ended(self) -> Fences:
        """These fences where other text follows (a call): the run that ended them is
        whole, and the line no longer begins."""
        return Fences(*_ended(self.open, self.ticks, INDENT + 1))


def _ended(is_open: bool, ticks: int, col: int) -> tuple[bool, int, int]:
    """(open, ticks, col) once the run of `ticks` backticks that `col` spaces began is
    followed by other text: a fence where it begins a line and is one."""
    if not ticks:
        return is_open, 0, col
    return is_open != (ticks >= len(FENCE) and col <= INDENT), 0, INDENT + 1


def _line(is_open: bool, ticks: int, col: int, text: str, start: int, end: int
          ) -> tuple[bool, int, int]:
    """(open, ticks, col) after text[start:end], a part of a line (no line break in it):
    only its first run of backticks may be a fence, or make one longer."""
    if start == end:
        return is_open, ticks, col
    if ticks:  # the run before goes on
        k = _RUN.match(text, start, end)
        at = start if k is None else k.end()
        if at == end:
            return is_open, ticks + end - start, col
        is_open, _, _ = _ended(is_open, ticks + at - start, col)
    else:
        lead = _LEAD.match(text, start, end)  # spaces, then backticks
        col = _indent(col, text, start, lead.start(2))
        if lead.end() == end:
            return is_open, lead.end(2) - lead.start(2), col
        is_open, _, _ = _ended(is_open, lead.end(2) - lead.start(2), col)
        at = lead.end()
    # within the line: a run, but no fence (stripped, not searched for: a search from
    # every backtick of a long run would read to its end each time)
    rest = text[at:end]
    return is_open, len(rest) - len(rest.rstrip("`")), INDENT + 1


def _indent(col: int, text: str, start: int, end: int) -> int:
    """The spaces that begin a line after `col` of them and text[start:end]; INDENT + 1
    where other text (or more spaces) is there."""
    if col > INDENT or end - start > INDENT - col or text.count(" ", start, end) < end - start:
        return INDENT + 1 if end > start else col
    return col + end - start


OUTSIDE = Fences()  # before the first character


def wrap_at(text: str, start: int, brackets: bool, fences: Fences = OUTSIDE,
            since: int = 0) -> Wrap | None:
    """The wrapper opening that starts at text[start], read to the first character that
    is not its own (its `end`: where the calls' opening must begin, or len(text) where the
    text ends inside it); None where none starts there. `brackets`: a list's '[' is one
    (Llama 3's bare JSON calls); `fences`: the code blocks before text[since]."""
    i, n, fence = start, len(text), False
    if text.startswith("`", i):
        before = fences.after(text, start, since)
        if before.open or before.ticks or before.col > INDENT:
            return None  # a code block's closing, not a run's start, or not a line's
        start -= min(before.col, start - since)  # its indent (the spaces read from `since`)
        if not text.startswith(FENCE, i):  # "``" may go on as a fence where the text ends
            return Wrap(start, n, True, False) if FENCE.startswith(text[i:]) else None
        # the language, spaces or tabs around it (CommonMark's info string, trimmed)
        if (i := _space(text, i + len(FENCE), " \t", MAX_BLANK)) < 0:
            return None
        info = i
        while i < n and text[i] in _INFO:
            i += 1
            if i - info > MAX_INFO:
                return None
        if (i := _space(text, i, " \t", MAX_BLANK)) < 0:
            return None
        if i < n and text[i] == "\r":
            i += 1
        if i < n:
            if text[i] != "\n":
                return None
            i = _space(text, i + 1)
            if i < 0:
                return None
        fence = True
    bracket = brackets and text.startswith("[", i)
    if bracket:
        i = _space(text, i + 1)
        if i < 0:
            return None
    return Wrap(start, i, fence, bracket) if fence or bracket else None


def wrap_before(text: str, at: int, floor: int, brackets: bool,
                fences: Fences = OUTSIDE) -> Wrap | None:
    """The wrapper whose opening ends at text[at] (where a call's opening is), starting
    at or after `floor` (`fences`: the code blocks before text[floor]); None where none
    does (the earliest where more would)."""
    lo = max(floor, at - WRAP_MAX)
    return next((w for w in _wraps(text, lo, at, brackets, fences.after(text, lo, floor))
                 if w.end == at), None)


def wrap_part(text: str, opens: Sequence[str], brackets: bool, fences: Fences = OUTSIDE) -> int:
    """The length of the longest end of `text` that begins a wrapper's opening followed
    by one of `opens` (all of that, or a part of it); 0: none. `fences`: the code blocks
    before text[0]."""
    lo = max(0, len(text) - WRAP_MAX - max(map(len, opens)))
    for w in _wraps(text, lo, len(text), brackets, fences.after(text, lo)):
        if any(o.startswith(text[w.end:]) for o in opens):
            return len(text) - w.start
    return 0


def wrap_close(text: str, end: int, wrap: Wrap | None) -> int:
    """Past the closing of `wrap` (']' where it opened a list, then ``` where a fence: a
    run of three or more backticks that only spaces or tabs follow on its line, or a part
    of one that ends the text), whitespace before each, where it follows text[end] (the
    end of its calls); `end` where it does not follow there."""
    if wrap is None:
        return end
    i = end
    if wrap.bracket:
        j = skip_space(text, i)
        if not text.startswith("]", j):
            return end
        i = j + 1
    if wrap.fence:
        j = skip_space(text, i)
        if j < len(text) and FENCE.startswith(text[j:]):  # cut part way, ending the text
            return len(text)
        close = _CLOSE.match(text, j)
        if close is None:
            return i
        i = close.end()
    return i


def without_wrap_end(text: str, brackets: bool, fences: Fences = OUTSIDE) -> str:
    """`text`, the text before a call, without a wrapper's opening that ends it (its
    trailing whitespace dropped), and without the whitespace before that. `fences`: the
    code blocks before text[0]."""
    text = text.rstrip()
    lo = max(0, len(text) - WRAP_MAX)
    for w in _wraps(text, lo, len(text), brackets, fences.after(text, lo)):
        if w.end == len(text) and (w.bracket or FENCE in text[w.start:w.end]):
            return text[:w.start].rstrip()
    return text


def _wraps(text: str, lo: int, end: int, brackets: bool, fences: Fences) -> Iterator[Wrap]:
    """The wrappers whose openings start in text[lo:end], in order (wrap_at; `fences`: the
    code blocks before text[lo])."""
    for s in range(lo, end):
        if text[s] in "`[" and (w := wrap_at(text, s, brackets, fences, lo)) is not None:
            yield w


def skip_space(text: str, i: int) -> int:
    """Past the whitespace from text[i] on."""
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def text_after(text: str, end: int) -> int:
    """Where the text after a family's last call starts, `end` being where its reader
    stopped (past the separators after the call): the whitespace just before `end` is the
    text's own (the paragraph break before "Done."), as Hermes keeps what follows a
    </tool_call>; a ';' there stays a separator."""
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def block_wrap(text: str, at: int, pos: int, wrap: Wrap | None, brackets: bool,
          fences: Fences) -> tuple[Wrap | None, int]:
    """(the wrapper of the block of calls at text[at], where the text before it ends):
    one whose opening ends there, or `wrap`, the previous block's still open, where only
    whitespace parts them (text[pos:at], pos where the previous block ended). `fences`:
    the code blocks before text[pos] (call_wrap.Fences)."""
    own = wrap_before(text, at, pos, brackets, fences)
    if own is not None:
        return own, own.start
    return (wrap if wrap is not None and not text[pos:at].strip() else None), at
