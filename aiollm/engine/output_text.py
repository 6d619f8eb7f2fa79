"""OutputText: one request's output tokens and their text, kept in step with each other.

Tokens are fed one at a time through the incremental detokenizer. Each token's text is the
characters that decoding it completes (a token that holds the first bytes of a character
has none; the one that completes it has the whole character), so the texts of the tokens
join to the output text exactly. A token is handed out together with its text: while a
stop string may be completing, the tokens whose text is held back are held back too, so
every delta's text is the join of its tokens' texts, in streams as in whole results. A
token with no text of its own goes out as it comes, its text "".

When a stop string matches, the output text ends where it starts (with
include_stop_str_in_output, where it ends). The output tokens end with the one that
completes the stop string, as in vLLM: the model generated it, so it stays in the token ids,
logprobs and token count (billed as OpenAI bills every generated token), while its text,
and that of the tokens between the cut and it, is only what lies before the cut (often
""). The tokens after it (generated while the match was undecided, or while the loop ran a
step ahead) are dropped: vLLM, which stops at once, never generates them. Stop strings count
only once the first min_tokens tokens are out, as in vLLM: one that those tokens' text holds
whole is no stop, one that a later token completes is, where it starts (in that text too),
so a request never ends with fewer than min_tokens tokens, nor goes on past a stop string
completed after them.
"""

from __future__ import annotations

from aiollm.engine.detokenizer import IncrementalDetokenizer
from aiollm.sampling_params import SamplingParams


class OutputText:
    """feed(token_id) for each output token in order, finish() once the request ended,
    take() for what can be handed out now: (text, token count, each token's text)."""

    __slots__ = ("_detok", "_ends", "_min_tokens", "_unsent", "_released", "_sent_chars",
                 "_sent_tokens", "_kept", "_finished", "_end_token")

    @classmethod
    def of_request(cls, tokenizer, prompt_ids: list[int], params: SamplingParams
                   ) -> OutputText | NoText:
        """The output text of a request with these prompt ids and parameters (its stop
        strings, min_tokens, special tokens skipped or not, stop string kept or not); none
        with detokenize=False."""
        if not params.detokenize:
            return NoText()
        return cls(IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens,
                                          params.stop, params.include_stop_str_in_output),
                   params.min_tokens)

    def __init__(self, detok: IncrementalDetokenizer, min_tokens: int = 0):
        self._detok = detok
        self._ends: list[int] = []  # characters decoded once each fed token is in
        self._min_tokens = min_tokens
        if min_tokens > 0:
            detok.stop_floor = float("inf")  # lowered once min_tokens tokens are in
        self._unsent = ""  # released text not handed out yet
        self._released = 0  # characters released by the detokenizer (after the stop filter)
        self._sent_chars = 0
        self._sent_tokens = 0
        self._kept: int | None = None
        self._finished = False
        self._end_token = False  # a token not fed (the stop token) takes what the end releases

    @property
    def stopped(self) -> bool:
        """A stop string matched: the output ends at its start."""
        return self._detok.stopped

    @property
    def matched_stop(self) -> str | None:
        """The stop string that matched (None: none did)."""
        return self._detok.matched_stop

    @property
    def fed(self) -> int:
        return len(self._ends)

    @property
    def kept(self) -> int:
        """Tokens that are part of the output once finished (all fed ones unless stopped)."""
        return self._kept if self._kept is not None else len(self._ends)

    def feed(self, token_id: int) -> None:
        self._add(self._detok.add([token_id]))
        self._ends.append(self._detok.decoded)
        if len(self._ends) == self._min_tokens:
            # stop strings ending past the first min_tokens tokens' text count; that text
            # is their whole characters (as vLLM's output text), so one ending in a
            # character the last of them began counts once a later token completes it
            self._detok.stop_floor = self._detok.decoded

    def finish(self, end_token: bool = False) -> None:
        """The request ended: release what was held back and decide which tokens stay.
        end_token: a token that is not fed follows the fed ones (the stop token, eos): the
        text the end releases (a stop string's possible start, held back until now) is its,
        left out of the fed tokens' texts (take's pieces) for the caller to give it, so that
        no token's text depends on whether the last fed token went out before the end
        (streams) or not. An incomplete character at the end is no one's: the detokenizer
        drops it, as vLLM's does."""
        if self._finished:
            return
        self._finished = True
        self._add(self._detok.finish())
        if self.stopped:
            stop_end = self._detok.stop_end
            through = next((k + 1 for k, end in enumerate(self._ends) if end >= stop_end),
                           len(self._ends))
            self._kept = max(self._sent_tokens, through)
            del self._ends[self._kept:]
        elif end_token:
            self._end_token = True
        elif self._ends:
            self._ends[-1] = self._detok.decoded  # what finish() released ends the last token

    def take(self) -> tuple[str, int, list[str]]:
        """Text, number of tokens and each token's text to hand out now (everything left
        once finished); the text is the join of the tokens' texts."""
        ends, n = self._ends, self._sent_tokens
        if self._finished:
            n_new = len(ends) - n
            limit = self._released
        else:
            limit = self._released
            n_new = 0
            # a token whose text is all released, and so one with no text of its own (part
            # of a character, a skipped special token) as soon as the text before it is:
            # its text "" (streams send it as it comes, as LightLLM and vLLM do). A stop
            # string its bytes begin keeps it: the tokens up to the one completing it stay
            while n + n_new < len(ends) and ends[n + n_new] <= limit:
                n_new += 1
        pieces = []
        start = self._sent_chars
        for k in range(n, n + n_new):
            end = min(ends[k], limit)
            pieces.append(self._unsent[start - self._sent_chars : end - self._sent_chars])
            start = max(start, end)
        if self._finished:
            if pieces and not self._end_token:
                # the released text past the last token's (an abort's leftovers)
                pieces[-1] += self._unsent[start - self._sent_chars :]
            start = self._released
        text = self._unsent[: start - self._sent_chars]
        self._unsent = self._unsent[start - self._sent_chars :]
        self._sent_chars = start
        self._sent_tokens = n + n_new
        return text, n_new, pieces

    def _add(self, text: str) -> None:
        self._unsent += text
        self._released += len(text)


class NoText:
    """OutputText's interface for a request that asked for no text (vLLM's
    detokenize=False): each token is handed out as it comes, with no text, neither the
    output's ("") nor each token's (an empty list). Such a request has no stop strings."""

    __slots__ = ("fed", "_sent")
    stopped = False
    matched_stop = None

    def __init__(self):
        self.fed = 0
        self._sent = 0

    @property
    def kept(self) -> int:
        return self.fed

    def feed(self, token_id: int) -> None:
        self.fed += 1

    def finish(self, end_token: bool = False) -> None:
        pass

    def take(self) -> tuple[str, int, list[str]]:
        n, self._sent = self.fed - self._sent, self.fed
        return "", n, []
