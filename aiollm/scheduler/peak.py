"""The future: peak KV occupancy of a batch whose remaining lengths are known (or predicted).

Request i holds held[i] tokens now and runs remaining[i] >= 1 more steps, holding
held[i] + t after step t and nothing after step remaining[i]. The pool needs

    M(t) = sum over {i : remaining[i] >= t} of (held[i] + t)

at step t. Between two finishes the alive set is fixed and M grows with t, so the peak is
reached at some t = remaining[k], just before request k frees its tokens. Sorting by
remaining length, the requests alive at t = remaining[k] are the suffix from k, so every
candidate peak is a suffix sum plus remaining[k] times the suffix size: a sort and a
cumulative sum, O(n log n), independent of how many steps lie ahead. (With ties, the first
of the tied entries sees the whole alive set; the others see a subset, so the maximum is
unaffected.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def future_peak(held: np.ndarray, remaining: np.ndarray) -> int:
    """max over t >= 1 of M(t); 0 for an empty batch."""
    n = held.shape[0]
    if n == 0:
        return 0
    order = np.argsort(remaining, kind="stable")
    r = remaining[order]
    suffix_held = np.cumsum(held[order][::-1])[::-1]
    alive = np.arange(n, 0, -1)
    return int((suffix_held + r * alive).max())


def largest_fitting_prefix(k_max: int, fits: Callable[[int], bool]) -> int:
    """The largest k in [0, k_max] with fits(k), for a monotone fits (true up to some k,
    false after). Exponential then binary search: one call when nothing more fits, about
    2 log2(k) calls otherwise."""
    if k_max <= 0 or not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= k_max and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, k_max + 1)  # hi does not fit, or lies past k_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
