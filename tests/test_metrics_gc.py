"""The garbage-collection pause histogram's callback (EngineMetrics.watch_gc)."""

import gc
import sys

from aiollm.metrics import EngineMetrics


def _depth() -> int:
    f, n = sys._getframe(), 0
    while f is not None:
        n, f = n + 1, f.f_back
    return n


def test_a_collection_near_the_recursion_limit_is_no_unraisable_error():
    """A collection that starts a few frames short of the recursion limit (a deeply nested
    request body being decoded) ran the callback into a RecursionError, which Python reported
    as unraisable on stderr (and pytest turned into a failure of whichever test was running:
    test_very_deep_schema_is_400). That collection goes untimed instead."""
    metrics = EngineMetrics(dict)
    metrics.watch_gc()
    seen = []
    hook, sys.unraisablehook = sys.unraisablehook, seen.append

    def deep(left: int) -> None:
        if left > 0:
            return deep(left - 1)
        gc.collect(0)  # the youngest generation: the callback runs as for any, at no cost

    try:
        for k in range(2, 40):  # the collection at each depth a few frames short of the limit
            try:
                deep(sys.getrecursionlimit() - _depth() - k)
            except RecursionError:
                pass
    finally:
        sys.unraisablehook = hook
        metrics.watch_gc(False)
    assert not seen, [repr(s.exc_value) for s in seen]
    assert metrics.gc_pause.labels("0")._sum.get() > 0  # those with room were timed
