"""The end of an `aiollm` command's process: its atexit handlers (logging's flush among them),
then os._exit, skipping the interpreter's teardown.

Past the atexit handlers, CPython's teardown clears every module and collects what is left:
for a server, torch, the model and the API, some 10^6 objects whose memory the OS takes back
anyway. It cost 0.7 s of CPU at every exit of `aiollm serve` (2.4 of its 3.1 s serving a tiny
model under tensor parallelism on 2 CPU cores: a quarter of the process), seconds of wall on
a loaded host, and the freed objects' native bindings (nanobind) logged themselves as
leaked when the collector had them frozen (api/server.py)."""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(status: int) -> None:
    """End the process with `status` (0-255) as the interpreter would, but for its teardown:
    wait for the threads that are not daemons (a Ctrl-C there reported and the wait given
    up, as the interpreter does), run the atexit handlers, flush stdout and stderr, then
    os._exit. Only for a process whose work is done:
    an `aiollm` command run as a script (cli.main with no argv), never a caller's process."""
    # CPython's own two calls at exit, in its order: the threads' (thread pools' workers are
    # told to end there, then every thread that is not a daemon is joined), then atexit's
    # (logging.shutdown among them)
    try:
        threading._shutdown()
    except KeyboardInterrupt:  # Ctrl-C in the wait: reported, the exit goes on, its status
        sys.excepthook(*sys.exc_info())  # kept (the interpreter's exit does the same)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or no stream
            pass
    os._exit(status)
