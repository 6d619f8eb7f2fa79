"""What a test reads from the log of an `aiollm serve` it started as a subprocess."""

from __future__ import annotations

import re
from pathlib import Path

_SERVING = re.compile(r"serving .+ on (http://\S+) \(KV capacity")


def logged_base(log: Path) -> str | None:
    """The base URL that `aiollm serve` logged it serves on, in its log file `log`, or None
    until it has. Started with --port 0, it is given a free port by the kernel when it
    binds: a port the test only found free could be taken meanwhile (the server binds
    once its model has loaded, seconds later) by a connection of another test process."""
    found = _SERVING.search(log.read_text())
    return found[1] if found else None
