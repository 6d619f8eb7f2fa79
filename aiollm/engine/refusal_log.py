"""The log of the requests the waiting queue turns away (Overloaded: a server's HTTP 503): a
full queue (--max-waiting-requests), a full request table (--table-capacity) and a wait past
--queue-timeout.

An operator must see them (the server is refusing clients: raise the limit, or add
capacity), but a refused client that retries in a loop must not fill the log with a line
per retry. So the first refusal is one WARNING at once, and the refusals that follow it
within INTERVAL_S are counted and told in one WARNING per kind at the interval's end (then
again after each interval while they go on; those counted when the engine stops are told by
its stop, not left on a timer of a loop that may close first). WARNING, not INFO: each is a
client's request that got no answer, which a server at the default level must show; not
ERROR: the server works as configured, the load is past what it was configured for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

log = logging.getLogger(__name__)

INTERVAL_S = 10.0  # the most a line per kind of refusal is logged, after the first at once


class RefusalLog:
    """One engine's refusals: refused() at each, on the engine's event loop `loop` (its
    timer tells the counted ones); close() when the engine stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[str, list] = {}  # kind -> [refusals not yet told, last detail]
        self._quiet_until = -math.inf  # time.monotonic() until which refusals are counted
        self._told_at = -math.inf  # time.monotonic() of the last line
        self._timer: asyncio.TimerHandle | None = None  # tells the pending ones

    def refused(self, kind: str, detail: str) -> None:
        """Note one request refused. `kind`: what refused it, as the operator reads it ("the
        waiting queue is full"); `detail`: the numbers and the setting behind it."""
        now = time.monotonic()
        if now >= self._quiet_until and self._timer is None:
            self._quiet_until, self._told_at = now + INTERVAL_S, now
            log.warning("a request was refused (Overloaded: a server's HTTP 503): %s: %s; "
                        "further refusals are counted, one line every %g s at most",
                        kind, detail, INTERVAL_S)
            return
        entry = self._pending.setdefault(kind, [0, detail])
        entry[0] += 1
        entry[1] = detail
        if self._timer is None:
            # on the engine's loop, also from a call outside it while it is not running (a
            # stream made there): the timer fires once it runs again, or close() tells them
            self._timer = self._loop.call_later(max(self._quiet_until - now, 0.0), self._tell)

    def close(self) -> None:
        """Tell the refusals counted so far and drop the timer (the engine stops: its loop
        may close before the timer would fire, and nothing is refused after)."""
        if self._timer is not None:
            self._timer.cancel()
            self._tell()

    def _tell(self) -> None:
        """Log the refusals counted since the last line, one line per kind."""
        self._timer = None
        now = time.monotonic()
        for kind, (count, detail) in self._pending.items():
            log.warning("%d more request%s refused (Overloaded: a server's HTTP 503) in the "
                        "last %.1f s: %s (the last: %s)", count, "s" if count != 1 else "",
                        now - self._told_at, kind, detail)
        self._pending.clear()
        self._quiet_until, self._told_at = now + INTERVAL_S, now
