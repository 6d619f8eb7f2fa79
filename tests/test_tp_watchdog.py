"""The tensor parallel watchdog's thread ends within NodeRanks.stop() and abort(), so that the
thread that stops the ranks, not the watchdog, drops the last reference to them and to their
group. The watchdog is a daemon thread: when it dropped that reference while the interpreter
exited, the group's ProcessGroup was destroyed on it with the GIL released, the thread could
not take the GIL back, and the process aborted ("terminate called without an active
exception", rc -6) after all its work was done.

No rank is spawned: the watchdog watches none, which is all these tests need."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from aiollm.config import EngineConfig
from aiollm.distributed import NodeRanks


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aiollm-tp-watchdog"]


@pytest.mark.parametrize("end", ["stop", "abort"])
def test_the_watchdog_ends_within_stop_and_abort(end):
    others = set(_watchdogs())  # (an engine's of another test may be running)
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=2))
    ranks.watchdog.start(ranks)
    [watchdog] = set(_watchdogs()) - others
    gc.disable()  # the reference must go on this thread by counting, not by a collection
    try:
        getattr(ranks, end)()
        assert not watchdog.is_alive()
        gone = weakref.ref(ranks)
        del ranks, watchdog
        assert gone() is None  # freed here: the watchdog held no reference any more
    finally:
        gc.enable()
