"""Rank 0's wait, once it has posted its node's start-up failure to the rendezvous
(Rendezvous.fail), for the ranks that arrived to read it before its store closes
(Rendezvous._linger): over nodes only. On one node every other rank is the lead's own,
which it ends at once. (That a node 1 waiting reads node 0's failure, not "node 0 ended":
test_tp_rendezvous.py, test_node_1_names_node_0_whose_checks_failed.)"""

from __future__ import annotations

import time
from datetime import timedelta


def test_node_0_alone_posts_its_failure_without_waiting_for_a_reader():
    """`-tp 2` on one node whose start failed before its rank 1 arrived (its import, its
    device): rank 0 kept its store up LINGER_S (1 s) for a reader that never comes, a
    second more on every failed start. It now posts the failure and returns at once."""
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import LINGER_S, PREFIX, Rendezvous

    place = Rendezvous(f"127.0.0.1:{_free_port()}", 0, 2, 1, timedelta(seconds=5))
    place.open()
    try:
        started = time.monotonic()
        place.fail(0, ValueError("its device failed"))
        assert time.monotonic() - started < LINGER_S / 2
        assert place.store.get(f"{PREFIX}failed/0") == b"ValueError: its device failed"
    finally:
        place.close()
