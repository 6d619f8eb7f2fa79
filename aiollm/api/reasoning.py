"""Reasoning parsers for /v1/chat/completions (`--reasoning-parser`): the model's thinking,
written between `<think>` and `</think>`, goes to `message.reasoning_content` (streamed:
`delta.reasoning_content`; both also as `reasoning`, vLLM's name) and the rest to `content`,
the tags removed.

Where the output starts, inside the reasoning or outside it, is decided before the first token:

- the prompt ends with `<think>` (and whitespace): the template opened the reasoning (DeepSeek-R1
  and its distills, Qwen3-2507 "Thinking", QwQ), so the output starts inside it;
- the prompt ends with `</think>` (and whitespace): the template closed it (Qwen3 with
  enable_thinking false), so the output is all content;
- a continued assistant message (continue_final_message) that holds a tag: its last tag
  decides, as the output goes on from the message's end: inside the reasoning after `<think>`
  ("<think>\nThe sky is"), in the answer after `</think>` ("<think>..</think>\n\nIt is");
- otherwise "deepseek_r1" starts inside the reasoning (its templates add `<think>` and older
  ones leave it to the model) and "qwen3" outside it, entering only when the output's very
  first characters are `<think>` (Qwen3's hybrid models write it themselves);
- a request whose output a grammar shapes from its first token (response_format, guided_*,
  tool_choice "required" or a named function) starts outside: the model had no room to reason
  first, so its output is the answer, unless the grammar itself opens with `<think>`.

Inside the reasoning, the first `</think>` ends it; everything after it, the whitespace that
follows the tag included, is content (as vLLM sends it). A `<think>` that opens the output is
markup and dropped, unless the prompt closed the reasoning (then the output is all content,
tags and all). An output that never closes its reasoning (cut by max_tokens) is all reasoning.

One `ReasoningSplitter` serves both the streamed and the whole answer, so the reasoning and
content deltas of a stream join to exactly the non-streamed fields: text that may be the start
of a tag is held back until the next delta shows whether it is one.

`ReasoningTokens` counts the output tokens that belong to the reasoning (usage's
reasoning_tokens). The split is made on text, so a token belongs where its text starts: the
reasoning tokens are the output's first tokens, from the first one (a leading `<think>`
included) up to and including the one that completes `</think>`, also where that token's
text goes on past the tag (">\n\n" after "</think"): it is counted once, as reasoning, since
it completes the reasoning's markup. An output that never closes its reasoning is all
reasoning tokens (its final stop token too); one that never entered it has none. vLLM counts
the tokens between its single-token tags, the tags left out: by this rule they are counted
(one or two tokens more), as the markup the reasoning is made of, hidden from the answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from aiollm.config import REASONING_PARSERS as PARSERS

START, END = "<think>", "</think>"

_OPENING, _REASONING, _CONTENT = "opening", "reasoning", "content"


def partial_tail(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with (0: none)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def prompt_state(prompt_tail: str, continued: str | None = None) -> str | None:
    """"reasoning" when the prompt's end opens a think block, "content" when it closes one,
    None when it does neither. `prompt_tail`: the decoded end of the prompt (special tokens
    kept), a few tokens are enough; `continued`: the text of the message the prompt ends
    inside (continue_final_message), whose last tag, if it has one, decides."""
    if continued:
        opened, closed = continued.rfind(START), continued.rfind(END)
        if opened > closed:
            return _REASONING
        if closed >= 0:
            return _CONTENT
    tail = prompt_tail.rstrip()
    if tail.endswith(START):
        return _REASONING
    if tail.endswith(END):
        return _CONTENT
    return None


class ReasoningSplitter:
    """Splits one output, fed as text deltas, into reasoning and content.

    `start` is where the output begins: "reasoning", "content", or "opening" (content unless
    the output's first characters are `<think>`). `feed` returns the (reasoning, content) text
    that can be sent now; `finish` what was held back, at the end of the output. `entered`
    says whether the output had a reasoning part (the field is then present, else None)."""

    def __init__(self, start: str):
        if start not in (_OPENING, _REASONING, _CONTENT):
            raise ValueError(f"start must be opening, reasoning or content, got {start!r}")
        # a leading <think> is dropped also where the output already starts inside the
        # reasoning (a model that writes its own opening after the template's)
        self.state = _CONTENT if start == _CONTENT else _OPENING
        # where an output that does not open with <think> goes
        self.fallback = _REASONING if start == _REASONING else _CONTENT
        self.held = ""
        self.entered = start == _REASONING
        self.fed = 0  # characters of output text fed so far
        self.ended_at: int | None = None  # where the output's `</think>` ends, once found

    @property
    def in_reasoning(self) -> bool:
        """Whether the output is inside its reasoning now (after finish(): whether it ended
        there, its reasoning never closed)."""
        return self.state == _REASONING

    def reasoning_end(self) -> float:
        """The offset in the output text up to which it is known to be reasoning: where its
        `</think>` ends; inf while inside an open reasoning; 0 while undecided or where the
        output has no reasoning."""
        if self.ended_at is not None:
            return self.ended_at
        return float("inf") if self.state == _REASONING else 0

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of `text` that can be sent now; either may be empty."""
        reasoning = content = ""
        self.fed += len(text)
        if self.state == _CONTENT:
            return "", text
        self.held += text
        if self.state == _OPENING:
            if len(self.held) < len(START) and START.startswith(self.held):
                return "", ""  # all of it may still be the opening tag: wait
            if self.held.startswith(START):
                self.held = self.held[len(START):]
                self.state, self.entered = _REASONING, True
            elif self.fallback == _REASONING:
                self.state = _REASONING
            else:
                self.state, content, self.held = _CONTENT, self.held, ""
                return "", content
        i = self.held.find(END)
        if i >= 0:
            # held ends where the output fed so far ends
            self.ended_at = self.fed - len(self.held) + i + len(END)
            reasoning, content = self.held[:i], self.held[i + len(END):]
            self.state, self.held = _CONTENT, ""
            return reasoning, content
        keep = partial_tail(self.held, END)
        cut = len(self.held) - keep
        reasoning, self.held = self.held[:cut], self.held[cut:]
        return reasoning, ""

    def finish(self) -> tuple[str, str]:
        """At the end of the output: (reasoning, content) still held back. A partial opening
        tag goes where the output would have gone without it; a partial end tag stays
        reasoning (the output ended inside the reasoning)."""
        held, self.held = self.held, ""
        if self.state == _OPENING:
            self.state = self.fallback
            if self.fallback == _CONTENT:
                return "", held
            return held, ""
        if self.state == _REASONING:
            return held, ""
        return "", held


class ReasoningTokens:
    """Counts the output tokens of one output that belong to its reasoning (see the module's
    docstring): `add` each delta's token texts (which join to the delta's text) after the
    splitter was fed that text (and, at the end, finished). `count` is the tokens known to
    be reasoning so far; final once the splitter is finished."""

    def __init__(self, splitter: ReasoningSplitter):
        self.splitter = splitter
        self.count = 0
        self._starts: deque[int] = deque()  # where each uncounted token's text starts
        self._at = 0  # characters of the tokens added so far
        self._decided = False  # every later token is content

    def add(self, token_texts: Sequence[str]) -> int:
        """Takes the next tokens' texts; returns `count`."""
        if self._decided:
            return self.count
        for text in token_texts:
            self._starts.append(self._at)
            self._at += len(text)
        s = self.splitter
        end = s.reasoning_end()
        while self._starts and self._starts[0] < end:
            self._starts.popleft()
            self.count += 1
        if s.state == _CONTENT:  # the reasoning closed, or there was none
            self._decided = True
            self._starts.clear()
        return self.count


def splitter_for(parser: str, prompt_tail: str, *, shaped: bool,
                 continued: str | None = None) -> ReasoningSplitter:
    """The splitter for one output of `parser` ("deepseek_r1" or "qwen3"; ValueError
    otherwise), given the end of its prompt, the continued message's text (None when the
    prompt opens a turn) and whether a grammar shapes the output from its first token
    (`shaped`; see the module's docstring)."""
    if parser not in PARSERS:
        raise ValueError(f"unknown reasoning parser {parser!r}; one of {PARSERS}")
    if shaped:
        return ReasoningSplitter(_OPENING)
    start = prompt_state(prompt_tail, continued)
    if start is None:
        start = _REASONING if parser == "deepseek_r1" else _OPENING
    return ReasoningSplitter(start)


def split(splitter: ReasoningSplitter, text: str) -> tuple[str | None, str]:
    """A whole output: (reasoning, or None when it had none; content)."""
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.finish()
    return (r1 + r2 if splitter.entered else None), c1 + c2


def reasoning_tokens(splitter: ReasoningSplitter, token_texts: Sequence[str]) -> int:
    """The reasoning tokens of a whole output that `splitter` has split (split()), given
    its tokens' texts (which join to its text)."""
    return ReasoningTokens(splitter).add(token_texts)
