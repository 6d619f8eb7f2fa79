"""`aiollm` run as a script ends its process without the interpreter's teardown
(aiollm/cli/process_exit.py): its atexit handlers run and its output is all written, but
what is still alive is not torn down (0.7 s of CPU at every exit of a server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

_SITECUSTOMIZE = '''
import atexit, os

class _Teardown:  # freed only by the interpreter's teardown
    def __init__(self, write):
        self.write = write

    def __del__(self):
        self.write(2, b"torn down\\n")

_left = _Teardown(os.write)
atexit.register(lambda: os.write(2, b"atexit ran\\n"))
'''


def test_a_server_that_exits_runs_its_atexit_handlers_and_skips_the_teardown(tmp_path):
    """`python -m aiollm serve` on a port taken: it exits 1 having logged why (before the
    model loads), its atexit handlers run, and an object left alive at the end is never
    freed: the process ended at os._exit, not through CPython's teardown of every module."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "aiollm", "serve", "--device", "cpu",
                               "--port", str(port)], capture_output=True, text=True,
                              timeout=300, env={**os.environ,
                                                "PYTHONPATH": str(tmp_path)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "address already in use" in out, out
    assert out.rstrip().endswith("atexit ran"), out
    assert "torn down" not in out, out


def test_an_idle_thread_pool_neither_holds_nor_is_cut_from_the_exit():
    """exit_now as the interpreter's exit: a thread pool's idle worker (not a daemon) is told
    to end, not joined forever, and a task still running in a pool is waited for."""
    script = """
import concurrent.futures, sys, time
from aiollm.cli.process_exit import exit_now
idle = concurrent.futures.ThreadPoolExecutor(1)
idle.submit(int).result()
busy = concurrent.futures.ThreadPoolExecutor(1)
busy.submit(lambda: (time.sleep(0.5), print("task done", flush=True)))
exit_now(5)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert proc.stdout == "task done\n", proc.stdout + proc.stderr


def test_what_is_written_but_not_yet_flushed_comes_out():
    """exit_now flushes stdout and stderr before os._exit, as the interpreter's exit does:
    a print to a pipe (block-buffered) and a stderr line without its newline (line-buffered)
    were still in their buffers, which os._exit drops."""
    script = """
import sys
from aiollm.cli.process_exit import exit_now
print("printed")
sys.stderr.write("no newline")
exit_now(3)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (buffered)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "printed\n", "no newline")


def test_ctrl_c_while_the_exit_waits_for_a_thread_keeps_the_exit_status():
    """Ctrl-C while exit_now waits for a thread that is not a daemon: the interpreter's exit
    reports the KeyboardInterrupt, stops waiting, runs the atexit handlers and exits with
    the status it had (sys.exit(7): 7); exit_now let it out of the wait, and the process
    died by SIGINT (130)."""
    script = """
import atexit, os, signal, threading, time
from aiollm.cli.process_exit import exit_now
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=time.sleep, args=(30,)).start()
ctrl_c = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
ctrl_c.daemon = True
ctrl_c.start()
exit_now(7)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert proc.stdout == "atexit ran\n" and "KeyboardInterrupt" in proc.stderr, proc.stderr
