"""Past-Future's own estimate (Gong et al., ASPLOS'25, arXiv 2507.10150, section 4): sampled
output lengths and the largest of a few sampled future peaks.

For a request that has generated d tokens, with cap c = max_new_tokens, the past lengths that
exceed d, with d below them and c above them, form the points

    x_0 = d < x_1 <= ... <= x_m < x_{m+1} = c        (past lengths > d, clipped to c)

of a piecewise-linear inverse CDF of its total length given that it is longer than d. A draw
takes u uniform in [0, 1), the position p = u * (m + 1), and interpolates between x_floor(p)
and x_floor(p)+1. Waiting candidates are drawn the same way from d = 0 (the whole history); a
paused one from what it had generated. The peak of each draw is peak.future_peak; the batch is
drawn n = min(5, floor(200 / batch) + 1) times and admission takes the largest of the n
peaks: a small batch, whose peak one unlucky draw can move most, gets more draws.

The draws for one `admit` call are fixed before its search over queue prefixes, so a longer
prefix never looks lighter than a shorter one (the search needs that monotony).
"""

from __future__ import annotations

import numpy as np

from aiollm.scheduler.batch import as_column
from aiollm.scheduler.history import OutputLengthHistory, cap_bucket


def n_draws(batch: int, most: int = 5, per: int = 200) -> int:
    """How many futures to draw for a batch of `batch` requests: min(5, floor(200 / batch) + 1),
    so 5 up to 50 requests, 2 from 101 to 200, 1 above."""
    return max(1, min(most, per // max(batch, 1) + 1))


def conditional_draw(
    sorted_lengths: np.ndarray, output_len: np.ndarray, cap: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Total output lengths drawn by inverse-CDF interpolation (module docstring).

    sorted_lengths: int64 [m], past lengths ascending. output_len (d), cap (c): int64 [n].
    u: float64 [s, n] in [0, 1): one column of draws per request. Returns float64 [s, n] in
    [d, c] (c where d >= c). Vectorised: the points above d are the tail of sorted_lengths
    from searchsorted(d), so x_i for i in 1..m is sorted_lengths[first + i - 1].
    """
    d = output_len.astype(np.float64)
    c = np.maximum(cap, output_len).astype(np.float64)
    first = np.searchsorted(sorted_lengths, output_len, side="right")  # [n]
    above = sorted_lengths.shape[0] - first  # m per request
    p = u * (above + 1)  # position in [0, m + 1)
    i = np.floor(p).astype(np.int64)  # segment x_i .. x_{i+1}
    frac = p - i

    def point(j: np.ndarray) -> np.ndarray:
        # x_j: d at 0, c at m + 1, the (j-1)-th past length above d in between (clipped to c)
        idx = np.clip(first + j - 1, 0, max(sorted_lengths.shape[0] - 1, 0))
        past = sorted_lengths[idx].astype(np.float64) if sorted_lengths.shape[0] else c
        x = np.where(j <= 0, d, np.where(j >= above + 1, c, past))
        return np.minimum(x, c)

    lo, hi = point(i), point(i + 1)
    return lo + (hi - lo) * frac


class SampledFuture:
    """Draws of the remaining steps of a batch from a history (the paper's estimator)."""

    def __init__(self, history: OutputLengthHistory, seed: int = 0, bucketed: bool = True):
        self.history = history
        self.bucketed = bucketed
        self.rng = np.random.default_rng(seed)

    def total(
        self, output_len: np.ndarray, max_new_tokens: np.ndarray, ignore_eos: np.ndarray,
        u: np.ndarray,
    ) -> np.ndarray:
        """int64 [s, n]: drawn total output lengths at the uniforms u (float [s, n]), in
        [g + 1, cap]. ignore_eos requests, and any request while the history is too thin
        (OutputLengthHistory.samples is None), run to their cap: the safe guess, as for the
        quantile estimator."""
        g = as_column(output_len)
        cap = as_column(max_new_tokens, g.shape[0])
        exact = as_column(ignore_eos, g.shape[0], bool)
        out = np.repeat(np.maximum(cap, g + 1).astype(np.float64)[None], u.shape[0], axis=0)
        groups: list[tuple[int | None, np.ndarray | slice]] = [(None, slice(None))]
        if self.bucketed and g.shape[0]:
            buckets = cap_bucket(cap)
            groups = [(int(b), buckets == b) for b in np.unique(buckets)]
        for b, sel in groups:  # a handful of cap buckets, not one pass per request
            hist = self.history.samples(b)
            if hist is not None:
                out[:, sel] = conditional_draw(hist, g[sel], cap[sel], u[:, sel])
        out[:, exact] = cap[exact]
        # The draw is continuous; a request runs whole steps, and at least one more.
        return np.maximum(np.ceil(out).astype(np.int64), g + 1)

    def remaining(
        self, output_len: np.ndarray, max_new_tokens: np.ndarray, ignore_eos: np.ndarray,
        draws: int,
    ) -> np.ndarray:
        """int64 [draws, n]: steps each request still runs in each of `draws` futures, >= 1."""
        g = as_column(output_len)
        u = self.rng.random((draws, g.shape[0]))
        return self.total(g, max_new_tokens, ignore_eos, u) - g

    def median(
        self, output_len: np.ndarray, max_new_tokens: np.ndarray, ignore_eos: np.ndarray
    ) -> np.ndarray:
        """int64 [n]: the draw at u = 0.5 (what the engine shows as a predicted length)."""
        g = as_column(output_len)
        return self.total(g, max_new_tokens, ignore_eos, np.full((1, g.shape[0]), 0.5))[0]
