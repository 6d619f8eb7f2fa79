"""The tensor parallel watchdog: a daemon thread of a node's lead process (launch.py's
NodeRanks) that polls the ranks it spawned and fails the group (NodeRanks.fail) when one
exits that should not (on one node: or has written its error file, NodeRanks.lost_rank).

While the caller still loads (start-up), a lost rank is first raised to it by start-up's
own path (NodeRanks.start_failed): the watchdog ends the group's making, so that a wait for
that rank inside init_process_group or new_group fails at once, and leaves the loss to that
path for START_GRACE_S before failing the group itself (rank 0 may be waiting in the
rendezvous for a rank that will never join).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiollm.distributed.launch import NodeRanks

log = logging.getLogger(__name__)

# a rank lost while rank 0 still loads: how long the watchdog leaves start-up's own path to
# raise it to the caller (rank 0's next collective fails at once) before ending the process
# itself (rank 0 may be waiting in the rendezvous for a rank that will never join)
START_GRACE_S = 5.0


class RankWatchdog:
    """The watchdog's thread of one NodeRanks: started by start(), ended and joined by
    end() (NodeRanks.stop, end_spawned and abort)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()

    def start(self, node: NodeRanks) -> None:
        """Start polling `node`'s spawned ranks. The thread holds `node` (its argument) only
        while it runs: end() joins it, so that the thread that stops the ranks drops the
        last reference to them (see end)."""
        self._thread = threading.Thread(target=_watch, args=(node, self._ended),
                                        name="aiollm-tp-watchdog", daemon=True)
        self._thread.start()

    def end(self) -> None:
        """End the watchdog's thread (woken from its poll at once) and wait for it, up to
        10 s. Left running, it dropped its reference to the node's ranks (its argument)
        up to 0.1 s after stop(): when that was the last one, the group's ProcessGroup was
        destroyed on that daemon thread, which releases the GIL meanwhile; had the
        interpreter begun to exit by then, the thread could not take the GIL back, and
        CPython ends such a thread by unwinding it through pybind11's noexcept destructor:
        std::terminate, the process aborted after all its work was done."""
        self._ended.set()
        watchdog = self._thread
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(timeout=10.0)
            if watchdog.is_alive():
                log.warning("the tensor parallel watchdog did not end in 10 s")


def _watch(node: NodeRanks, ended: threading.Event) -> None:
    while not node.stopping:
        lost = node.lost_rank()
        if lost is not None:
            _end_group_making(node)
            deadline = time.monotonic() + START_GRACE_S
            while node.starting and not node.stopping and time.monotonic() < deadline:
                ended.wait(0.05)  # start_failed raises it to the caller
            node.fail(lost)
            return
        ended.wait(0.1)


def _end_group_making(node: NodeRanks) -> None:
    """A spawned rank was lost while start-up makes the group (past the rendezvous):
    rank 0 stops hosting the store, so that the wait for that rank inside
    init_process_group or new_group fails at once and start_failed names it. Another
    node's lead holds a client only: the watchdog ends it after START_GRACE_S."""
    rdv = node.rendezvous
    if (node.starting and node.tp is None and node.cfg.node_rank == 0
            and rdv is not None and rdv.met):
        rdv.end_waits()
