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
it was paused, recomputed) and that prefill also samples its next output token. (The engine
may prefill its prompt in chunks over more steps when the step's budget runs out. Counting
it whole at once overstates what it holds meanwhile, but not how long it lives: prefilled
over s steps, it frees its tokens s - 1 steps later than counted, so a peak policy that
filled the pool to the token can overrun it then, and the engine pauses a request.)
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


@dataclass(slots=True, init=False)
class RunningBatch:
    """Requests holding KV now (state RUNNING).

    kv_len: tokens of KV each holds now. output_len: tokens it has generated (g).
    max_new_tokens: its cap on output tokens. ignore_eos: whether it runs to the cap.
    """

    kv_len: np.ndarray
    output_len: np.ndarray
    max_new_tokens: np.ndarray
    ignore_eos: np.ndarray

    def __init__(
        self,
        kv_len: ArrayLike,
        output_len: ArrayLike,
        max_new_tokens: ArrayLike,
        ignore_eos: ArrayLike | None = None,
    ):
        self.kv_len = as_column(kv_len)
        n = self.kv_len.shape[0]
        self.output_len = as_column(output_len, n)
        self.max_new_tokens = as_column(max_new_tokens, n)
        self.ignore_eos = as_column(False if ignore_eos is None else ignore_eos, n, bool)

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
    request). max_new_tokens, ignore_eos: as in RunningBatch.
    """

    prompt_len: np.ndarray
    output_len: np.ndarray
    max_new_tokens: np.ndarray
    ignore_eos: np.ndarray

    def __init__(
        self,
        prompt_len: ArrayLike,
        max_new_tokens: ArrayLike,
        output_len: ArrayLike | None = None,
        ignore_eos: ArrayLike | None = None,
    ):
        self.prompt_len = as_column(prompt_len)
        n = self.prompt_len.shape[0]
        self.max_new_tokens = as_column(max_new_tokens, n)
        self.output_len = as_column(0 if output_len is None else output_len, n)
        self.ignore_eos = as_column(False if ignore_eos is None else ignore_eos, n, bool)

    def __len__(self) -> int:
        return self.prompt_len.shape[0]

    def head(self, k: int) -> Candidates:
        """The first k candidates (views, no copy)."""
        out = Candidates.__new__(Candidates)
        out.prompt_len = self.prompt_len[:k]
        out.output_len = self.output_len[:k]
        out.max_new_tokens = self.max_new_tokens[:k]
        out.ignore_eos = self.ignore_eos[:k]
        return out
