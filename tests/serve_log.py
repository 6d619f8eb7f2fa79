"""What a test reads from the log of an `aiollm serve` it started as a subprocess."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

_SERVING = re.compile(r"serving .+ on (http://\S+) \(KV capacity")


def logged_base(log: Path) -> str | None:
    """The base URL that `aiollm serve` logged it serves on, in its log file `log`, or None
    until it has. Started with --port 0, it is given a free port by the kernel when it
    binds: a port the test only found free could be taken meanwhile (the server binds
    once its model has loaded, seconds later) by a connection of another test process."""
    found = _SERVING.search(log.read_text())
    return found[1] if found else None


def wait_for_base(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    """The base URL `proc`, an `aiollm serve` logging to `log`, serves on, once it logs it
    (logged_base); the test fails with the log where the server exits first or has not
    started within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"aiollm serve exited with {proc.returncode}:\n{log.read_text()}")
        if (base := logged_base(log)) is not None:
            return base
        time.sleep(0.1)
    pytest.fail(f"aiollm serve did not start:\n{log.read_text()}")
