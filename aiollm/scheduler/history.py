"""The past: output lengths of recently finished requests, and predictions drawn from them.

A request that has produced g tokens has, by definition, an output longer than g, so its
final length is predicted from the past lengths that exceed g (the distribution conditioned
on length > g), at a configurable quantile, capped by its max_new_tokens. ignore_eos
requests always run to max_new_tokens, so they are predicted exactly and never recorded.

Outputs are censored by max_new_tokens: a request capped at 64 that stopped at 64 says only
"at least 64". With `bucketed`, samples remember the power-of-two bucket of their cap and a
request is predicted from samples whose bucket is at least its own, once there are enough
of them, so small caps do not drag down the predictions of requests with large ones. With
fewer, a request's prediction also takes the natural lengths (those that stopped below their
cap) of smaller caps, never their censored ones: after a run of max_tokens 1 requests, a
request with max_tokens 512 is not predicted to stop after 1 token.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from aiollm.scheduler.batch import as_column


def cap_bucket(max_new_tokens: np.ndarray) -> np.ndarray:
    """floor(log2(cap)): caps 64..127 share bucket 6."""
    return np.frexp(np.maximum(max_new_tokens, 1))[1].astype(np.int64) - 1


def conditional_quantile(
    sorted_lengths: np.ndarray, output_len: np.ndarray, q: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each g in output_len, the q-quantile of the lengths that exceed g.

    Returns (value, found); found is False where no length exceeds g (value is then 0).
    The quantile is the inverted-CDF one: the ceil(q * m)-th smallest of the m lengths > g.
    """
    n = sorted_lengths.shape[0]
    first = np.searchsorted(sorted_lengths, output_len, side="right")
    above = n - first
    found = above > 0
    idx = first + np.maximum(np.ceil(q * above).astype(np.int64) - 1, 0)
    value = np.where(found, sorted_lengths[np.minimum(idx, n - 1)] if n else 0, 0)
    return value, found


class OutputLengthHistory:
    """A bounded window of finished output lengths (the newest `window`), with predictions."""

    def __init__(
        self,
        window: int = 1000,
        min_history: int = 8,
        prior: tuple[int, ...] = (),
        quantile: float = 0.25,
        bucketed: bool = True,
    ):
        self.window = window
        self.min_history = min_history
        self.prior = np.asarray(prior, dtype=np.int64)
        self.quantile = quantile
        self.bucketed = bucketed
        # A ring buffer: slot `_next % window` is overwritten next.
        self._length = np.zeros(window, dtype=np.int64)
        self._bucket = np.zeros(window, dtype=np.int64)
        self._censored = np.zeros(window, dtype=bool)  # stopped at its cap: a lower bound
        self._next = 0
        # Sorted sample sets by minimum bucket, rebuilt lazily after new records.
        self._sorted: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return min(self._next, self.window)

    def record(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> None:
        """Remember finished requests (scalars or arrays). ignore_eos ones carry no
        information about natural lengths and are skipped; so are zero-length outputs."""
        length = as_column(output_len)
        cap = as_column(max_new_tokens, length.shape[0])
        keep = ~as_column(ignore_eos, length.shape[0], bool) & (length > 0)
        length, cap = length[keep][-self.window :], cap[keep][-self.window :]
        if length.shape[0] == 0:
            return
        idx = (self._next + np.arange(length.shape[0])) % self.window
        self._length[idx] = length
        self._bucket[idx] = cap_bucket(cap)
        self._censored[idx] = length >= cap
        self._next += length.shape[0]
        self._sorted.clear()

    def samples(self, min_bucket: int | None = None) -> np.ndarray | None:
        """Sorted past lengths to predict from for requests of cap bucket `min_bucket`
        (None: all buckets), or None when there is too little past and no prior."""
        key = -1 if min_bucket is None else int(min_bucket)
        if key in self._sorted:
            return self._sorted[key]
        n = len(self)
        lengths, buckets = self._length[:n], self._bucket[:n]
        if min_bucket is not None:
            mine = buckets >= min_bucket
            if np.count_nonzero(mine) >= self.min_history:
                out = np.sort(lengths[mine])
            else:
                # Too few samples from requests with caps this large: add the natural
                # lengths of smaller caps. Their censored ones only say "at least a cap
                # below this request's": taken as lengths, a run of max_tokens 1 requests
                # would predict 1 token for every larger cap.
                out = self._trusted(lengths[mine | ~self._censored[:n]])
        else:
            out = self._trusted(lengths)
        self._sorted[key] = out
        return out

    def _trusted(self, lengths: np.ndarray) -> np.ndarray | None:
        """lengths sorted when there are min_history of them; too few: with the prior, or
        None without one."""
        if lengths.shape[0] >= self.min_history:
            return np.sort(lengths)
        if self.prior.shape[0]:
            return np.sort(np.concatenate([self.prior, lengths]))
        return None

    def predict(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> np.ndarray:
        """Predicted total output length of each request: int64, in [g + 1, cap] (g + 1
        for a request already at its cap, which the engine is about to finish)."""
        g = as_column(output_len)
        cap = as_column(max_new_tokens, g.shape[0])
        exact = as_column(ignore_eos, g.shape[0], bool)
        # Without any past, or beyond every length seen, assume the cap: the safe guess.
        pred = cap.copy()
        groups: list[tuple[int | None, np.ndarray | slice]] = [(None, slice(None))]
        if self.bucketed and g.shape[0]:
            buckets = cap_bucket(cap)
            lo, hi = int(buckets.min()), int(buckets.max())
            if lo == hi:  # the common case: one cap for everyone
                groups = [(lo, slice(None))]
            else:
                groups = [(b, buckets == b) for b in np.unique(buckets)]
        for b, sel in groups:  # a handful of buckets, not one pass per request
            hist = self.samples(b)
            if hist is None:
                continue
            value, found = conditional_quantile(hist, g[sel], self.quantile)
            pred[sel] = np.where(found, value, cap[sel])
        pred = np.minimum(pred, cap)
        pred = np.where(exact, cap, pred)
        # A running request produces at least one more token.
        return np.maximum(pred, g + 1)
