"""What the engine shows the scheduler: the running batch and the waiting queue, as columns.

Both are plain structs of numpy arrays, one element per request, so the engine can fill
them straight from numpy columns of the request table and the scheduler can work on whole
columns at once. Lengths are converted to int64 here because the table stores int32 and
the scheduler sums them over the batch.

Accounting used by every policy (and by bench/sim.py): one step of the engine appends one
token of KV to every running request, so a request that holds `kv_len` tokens now holds
`kv_len + t` after t more steps and frees them all after the step that produces its last
token. A waiting request admitted now is counted as prefilled in the coming step: it needs
`prompt_len` free tokens at once (for a resumed request, prompt + tokens generated before
it was paused, recomputed) and that prefill also samples its next output token.

The engine prefills a prompt in chunks when the step's budget runs out, so a request may
start decoding later than that. Both structs carry `prefill_left`: the tokens of each
request's prefill still to compute after the coming step's chunk (0 once it ends there or
before). The engine plans running requests' chunks before it admits anyone, so each later
step prefills at least one of them (unless its decodes take the whole budget or no KV slot
is free): the request starts decoding at most `prefill_left` steps late and frees its
tokens at most that many steps later than if prefilled at once. The peak policies add
`prefill_left` to its remaining steps: it then holds at most `kv_len + t` tokens after
step t for as long as it can live, an upper bound on what it really holds (its KV counted
whole meanwhile), at the price of up to `prefill_left` steps and tokens too many for the
one or two requests mid-prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


def as_column(x: ArrayLike, n: int | None = None, dtype: type = np.int64) -> np.ndarray:
    """x as a 1-D array of n entries (of any length for n=None); a scalar is repeated.
    No copy when x already is such an array."""
    a = np.asarray(x, dtype=dtype)
    if a.ndim == 0:
        return np.broadcast_to(a, (1 if n is None else n,))
    a = a.reshape(-1)
    assert n is None or a.shape[0] == n, f"a column of {a.shape[0]} entries, expected {n}"
    return a


def prefill_chunks(need: np.ndarray, budget: int) -> np.ndarray:
    """Tokens each request gets of a step's prefill budget shared in queue order (chunked
    prefill): what the requests before it leave, up to its own need. Sizes in tokens."""
    return np.minimum(need, np.maximum(budget - (np.cumsum(need) - need), 0))


@dataclass(slots=True, init=False)
class RunningBatch:
    """Requests holding KV now (state RUNNING).

    kv_len: tokens of KV each holds now (a request mid-prefill: all it will hold once
    prefilled). output_len: tokens it has generated (g). max_new_tokens: its cap on output
    tokens. ignore_eos: whether it runs to the cap. prefill_left: tokens of its prefill
    still to compute after the coming step's chunk, at most that many steps before it
    decodes (0: it decodes in the coming step, or its prefill ends there).
    """

    kv_len: np.ndarray
    output_len: np.ndarray
    max_new_tokens: np.ndarray
    ignore_eos: np.ndarray
    prefill_left: np.ndarray

    def __init__(
        self,
        kv_len: ArrayLike,
        output_len: ArrayLike,
        max_new_tokens: ArrayLike,
        ignore_eos: ArrayLike | None = None,
        prefill_left: ArrayLike | None = None,
    ):
        self.kv_len = as_column(kv_len)
        n = self.kv_len.shape[0]
        self.output_len = as_column(output_len, n)
        self.max_new_tokens = as_column(max_new_tokens, n)
        self.ignore_eos = as_column(False if ignore_eos is None else ignore_eos, n, bool)
        self.prefill_left = as_column(0 if prefill_left is None else prefill_left, n)

    def __len__(self) -> int:
        return self.kv_len.shape[0]

    @classmethod
    def empty(cls) -> RunningBatch:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass(slots=True, init=False)
class Candidates:
    """Requests waiting for admission (WAITING, and PAUSED ones to resume), in queue order.

    prompt_len: tokens that need KV on admission (prompt, plus the tokens already generated
    for a resumed request). output_len: tokens generated before a pause (0 for a new
    request). max_new_tokens, ignore_eos: as in RunningBatch. prefill_left: tokens of its
    prompt_len left to prefill after the coming step, if it were admitted in it (0 by
    default; Scheduler.admit sets it from the step's prefill budget, see chunked). locked:
    tokens of a cached prefix that no request uses yet, which admitting it takes out of the
    free pool (they count as free, evictable, until then) without prefilling them: the peak
    policies count them as held from its admission, the prefill budget does not (0 without
    a cache hit). Aggressive ignores them: the planner holds back a hit that leaves no slot.
    """

    prompt_len: np.ndarray
    output_len: np.ndarray
    max_new_tokens: np.ndarray
    ignore_eos: np.ndarray
    prefill_left: np.ndarray
    locked: np.ndarray

    def __init__(
        self,
        prompt_len: ArrayLike,
        max_new_tokens: ArrayLike,
        output_len: ArrayLike | None = None,
        ignore_eos: ArrayLike | None = None,
        prefill_left: ArrayLike | None = None,
        locked: ArrayLike | None = None,
    ):
        self.prompt_len = as_column(prompt_len)
        n = self.prompt_len.shape[0]
        self.max_new_tokens = as_column(max_new_tokens, n)
        self.output_len = as_column(0 if output_len is None else output_len, n)
        self.ignore_eos = as_column(False if ignore_eos is None else ignore_eos, n, bool)
        self.prefill_left = as_column(0 if prefill_left is None else prefill_left, n)
        self.locked = as_column(0 if locked is None else locked, n)

    def __len__(self) -> int:
        return self.prompt_len.shape[0]

    def kv_need(self, k: int) -> np.ndarray:
        """Free KV tokens each of the first k takes on admission: its prompt_len and the
        cached tokens it locks."""
        return self.prompt_len[:k] + self.locked[:k]

    def head(self, k: int) -> Candidates:
        """The first k candidates (views, no copy)."""
        out = Candidates.__new__(Candidates)
        out.prompt_len = self.prompt_len[:k]
        out.output_len = self.output_len[:k]
        out.max_new_tokens = self.max_new_tokens[:k]
        out.ignore_eos = self.ignore_eos[:k]
        out.prefill_left = self.prefill_left[:k]
        out.locked = self.locked[:k]
        return out

    def chunked(self, prefill_budget: int) -> Candidates:
        """These candidates (the other columns as views) with prefill_left as a step of
        prefill_budget tokens, shared in queue order, leaves it: candidate j gets what the
        prompts before it leave of the budget, up to its prompt_len, and has the rest left."""
        out = self.head(len(self))
        out.prefill_left = self.prompt_len - prefill_chunks(self.prompt_len, prefill_budget)
        return out
