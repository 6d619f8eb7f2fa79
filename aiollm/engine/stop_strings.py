"""Stop strings: an Aho-Corasick automaton over characters that finds the first stop string
in a stream of text in time linear in the text, whatever the number and length of the stop
strings (Aho and Corasick, "Efficient string matching: an aid to bibliographic search",
CACM 1975).

The matcher is fed the output text as it is decoded and answers two questions after each
piece: where a stop string starts (the output ends there), and from where on the text must
be held back because a stop string may still be completing. The automaton's state after
each character is the longest suffix of the text that is a prefix of some stop string, so
that suffix, and nothing before it, is what may become part of a match: holding it back
costs O(1) per character, with no set of every prefix of every stop string.

The output is cut at the stop string that starts first in the text (ties: any). A match
that ends now may be overtaken by a longer one that began earlier and is still being
completed; the match is decided once no partial match starts before it. Matches that end
at or before `floor` do not count: the engine lowers the floor (infinite until then) to the
end of the text of the first min_tokens tokens, so no stop string ends a request before
min_tokens. One that a later token completes counts where it starts, in that text too, as
vLLM checks stop strings once min_tokens are out; so what may begin one is held back all
along.
"""

from __future__ import annotations

from collections.abc import Sequence



class StopStringMatcher:
    """feed(text) -> None; then `match_start` (absolute character index where the output
    ends, None while undecided) and `hold_from` (text from this index on must not be
    emitted yet). Build O(total length of the stop strings), feed O(1) amortized per char."""

    __slots__ = ("stops", "_goto", "_fail", "_depth", "_out", "_state", "pos", "floor",
                 "match_start", "matched", "_best", "_best_stop")

    def __init__(self, stops: Sequence[str]):
        self.stops = stops = [s for s in dict.fromkeys(stops) if s]
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        # (length, index) of the stop strings ending at each node, longest first
        out: list[tuple[tuple[int, int], ...]] = [()]
        for i, s in enumerate(stops):
            node = 0
            for ch in s:
                nxt = goto[node].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto[node][ch] = nxt
                    goto.append({})
                    depth.append(depth[node] + 1)
                    out.append(())
                node = nxt
            out[node] = ((len(s), i),)
        fail = [0] * len(goto)
        queue = list(goto[0].values())  # depth 1: fail to the root
        for node in queue:  # breadth first: a node's fail link is shallower than the node
            for ch, nxt in goto[node].items():
                f = fail[node]
                while f and ch not in goto[f]:
                    f = fail[f]
                fail[nxt] = goto[f].get(ch, 0)
                # the stop strings ending here: the node's own, then its suffixes' (shorter)
                out[nxt] = out[nxt] + out[fail[nxt]]
                queue.append(nxt)
        self._goto, self._fail, self._depth, self._out = goto, fail, depth, out
        self._state = 0
        self.pos = 0  # characters fed
        self.floor: float = 0  # matches ending at or before this index are ignored
        self.match_start: int | None = None  # decided: the output ends here
        self.matched: str | None = None
        self._best: int | None = None  # the earliest match found, not yet decided
        self._best_stop = -1

    @property
    def hold_from(self) -> int:
        """Index from which the text fed so far must be held back."""
        if self.match_start is not None:
            return self.match_start
        start = self.pos - self._depth[self._state]  # a partial match may end past floor
        if self._best is not None:
            start = min(start, self._best)
        return min(start, self.pos)

    def feed(self, text: str) -> None:
        if self.match_start is not None:
            return
        goto, fail, out = self._goto, self._fail, self._out
        state, pos = self._state, self.pos
        for ch in text:
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
            pos += 1
            if out[state] and pos > self.floor:  # the longest: the earliest start
                length, i = out[state][0]
                start = pos - length
                if self._best is None or start < self._best:
                    self._best, self._best_stop = start, i
            if self._best is not None and pos - self._depth[state] >= self._best:
                # no partial match began before the best one: it is final
                self.pos, self._state = pos, state
                self._decide()
                return
        self._state, self.pos = state, pos

    def finish(self) -> None:
        """The text is complete: a pending match is final."""
        if self.match_start is None and self._best is not None:
            self._decide()

    def _decide(self) -> None:
        self.match_start = self._best
        self.matched = self.stops[self._best_stop]
