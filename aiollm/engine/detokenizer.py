"""Incremental detokenization of one request's output for streaming, with stop strings.

Text is decoded from a small window of the latest token ids, never from the whole
sequence: the window starts a few tokens before the unread ones (so that decoders which
drop a leading space, or a character split across tokens, see their context) and is cut
back to that context once it grows past a limit. `_emitted` counts the characters of the
window's decoded text that are already accounted for, so each step costs one decode of a
window of at most MAX_WINDOW tokens plus, every few tokens, one more to re-anchor it.

Whole characters only: a byte-level or byte-fallback decoder renders an incomplete UTF-8
sequence as U+FFFD, so a trailing run of U+FFFD is held back until a later token completes
it. An output that ends inside a character never has it: finish() drops it, as vLLM's
detokenizer never flushes an incomplete character (LightLLM's drops it too), so the text is
the same whether it was streamed or not, and never ends in a U+FFFD that no token made
whole.

Stop strings: decoded text goes through a StopStringMatcher (stop_strings.py), which
says from where on the text must be held back (a stop string may be completing there) and
where the first stop string starts; that start ends the output (the stop string and
everything after it are dropped). `decoded` counts the characters decoded so far, before
the stop-string filter; `len(text)` those released after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from aiollm.engine.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase  # the tokenizer's interface

REPLACEMENT = "\ufffd"
CONTEXT = 4  # tokens kept before the unread ones: enough to hold any one UTF-8 character
MAX_WINDOW = 12  # re-anchor the window to its last CONTEXT tokens past this length


def _decoder(tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool) -> Callable:
    """The cheapest decode equal to tokenizer.decode(ids, skip_special_tokens=...).

    The Rust tokenizer behind a fast tokenizer decodes a short window in about a quarter
    of the time that the Python wrapper takes; the wrapper adds only the optional cleanup
    of spaces before punctuation, so it is bypassed when that is off."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return partial(backend.decode, skip_special_tokens=skip_special_tokens)
    return partial(tokenizer.decode, skip_special_tokens=skip_special_tokens)


def _as_list(ids: Sequence[int]) -> list[int]:
    """Python ints for the Rust decoder, also from numpy arrays or tensors."""
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


class IncrementalDetokenizer:
    """add(new_ids) -> text safe to emit now; finish() -> what was held back, at the end.

    After a stop string matched, `stopped` is True, `matched_stop` names it, `stop_end` is
    where it ends (in characters decoded, as `decoded`), and add() and finish() return "".
    `text` is everything emitted so far: it ends where the stop string starts, or where it
    ends with include_stop."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop: bool = False,
    ):
        self._decode = _decoder(tokenizer, skip_special_tokens)
        self._window: list[int] = _as_list(prompt_ids[-CONTEXT:])
        # The prompt's text is context, not output; an incomplete character at its end is
        # left to be completed (and emitted) by the first output tokens. If they do not
        # complete it (the text still starts with the prompt's, U+FFFD included), those
        # U+FFFD are the prompt's: _skip_prompt_tail moves past them.
        prompt_text = self._decode(self._window)
        self._emitted = len(prompt_text.rstrip(REPLACEMENT))
        self._prompt_tail = prompt_text if len(prompt_text) > self._emitted else None
        self._stop = StopStringMatcher(stop) if any(stop) else None
        self._include_stop = include_stop  # the output ends after the stop string
        self._pending = ""  # released by the decoder, held back by the stop filter
        self.decoded = 0  # characters of output decoded, before the stop filter
        self._released = 0
        self._pieces: list[str] = []
        self.stopped = False
        self.matched_stop: str | None = None
        self.stop_end: int | None = None  # once stopped: where the stop string ends (decoded)
        self.finished = False

    @property
    def stop_floor(self) -> float:
        return self._stop.floor if self._stop is not None else 0

    @stop_floor.setter
    def stop_floor(self, index: float) -> None:
        """Stop strings ending at or before character `index` of the output do not count."""
        if self._stop is not None:
            self._stop.floor = index

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def add(self, new_ids: Sequence[int]) -> str:
        """Feed the request's newest token ids; return the text delta to stream now."""
        if self.stopped or self.finished or len(new_ids) == 0:
            return ""
        self._window.extend(_as_list(new_ids))
        text = self._decode(self._window)
        stable = len(text.rstrip(REPLACEMENT))
        if self._prompt_tail is not None and stable > self._emitted:
            self._skip_prompt_tail(text)
        delta = ""
        if stable > self._emitted:
            delta = text[self._emitted : stable]
            self._emitted = stable
        if stable == len(text) and len(self._window) > MAX_WINDOW:
            self._reanchor()
        return self._release(delta)

    def finish(self) -> str:
        """The request ended: return the held-back text (a possible stop-string prefix)
        unless a stop string matched. An incomplete character at the end (the U+FFFD run
        add() held back) is dropped: it is no text (vLLM's and LightLLM's outputs drop it)."""
        if self.stopped or self.finished:
            return ""
        self.finished = True
        out = ""
        if not self.stopped and self._stop is not None:
            self._stop.finish()
            out += self._release("")
        if not self.stopped and self._pending:
            out += self._pending
            self._pieces.append(self._pending)
            self._released += len(self._pending)
            self._pending = ""
        return out

    def _skip_prompt_tail(self, text: str) -> None:
        """Once output text follows the prompt's incomplete character: if the output did not
        complete it (the decoded text still starts with the prompt's, U+FFFD and all), its
        U+FFFD belong to the prompt and are not output; else the completed character is."""
        if text.startswith(self._prompt_tail):
            self._emitted = len(self._prompt_tail)
        self._prompt_tail = None

    def _reanchor(self) -> None:
        """Cut the window to its last CONTEXT tokens, all of whose text is emitted."""
        tail = self._window[-CONTEXT:]
        text = self._decode(tail)
        # A tail ending mid-character (possible only with empty special tokens) would not
        # be a stable prefix of later decodes: keep the whole window then.
        if not text.endswith(REPLACEMENT):
            self._window = tail
            self._emitted = len(text)

    def _release(self, delta: str) -> str:
        """Pass decoded text through the stop-string filter; return what may be emitted."""
        self.decoded += len(delta)
        if self._stop is None:
            if delta:
                self._pieces.append(delta)
            return delta
        stop = self._stop
        self._pending += delta
        stop.feed(delta)
        if stop.match_start is not None:
            # the match is decided only once all of it was fed: its end is in _pending
            end = stop.match_start + (len(stop.matched) if self._include_stop else 0)
            self.stopped = True
            self.matched_stop = stop.matched
            self.stop_end = stop.match_start + len(stop.matched)
        else:
            end = stop.hold_from
        out = self._pending[: end - self._released]
        self._pending = "" if self.stopped else self._pending[end - self._released :]
        self._released = end
        if out:
            self._pieces.append(out)
        return out
