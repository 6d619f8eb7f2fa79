"""SIGTERM (a supervisor's stop: systemd, Kubernetes, `kill`) during start-up, raised as
Ctrl-C's KeyboardInterrupt is: Terminated is a KeyboardInterrupt, so that every path that
ends start-up at Ctrl-C (a node's rendezvous, its ranks, telling the other nodes) ends it
alike at SIGTERM, and the process exits with 128 + the signal's number (130 at Ctrl-C, 143
at SIGTERM), as a shell, torchrun and vLLM's processes report a stop by signal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Start-up was stopped by SIGTERM (KeyboardInterrupt: by SIGINT, Ctrl-C)."""

    signum = signal.SIGTERM


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a process stopped by `interrupt`: 128 + its signal's number."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def describe(interrupt: KeyboardInterrupt) -> str:
    """How a stopped node tells the others: "interrupted (Ctrl-C)" or "terminated
    (SIGTERM)"."""
    return "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted (Ctrl-C)"


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside: SIGTERM raises Terminated in the main thread, once (the handler puts
    the one before it back, so that a second SIGTERM during the clean-up ends the process
    as that one does: Python's default, at once). Outside the main thread: nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
