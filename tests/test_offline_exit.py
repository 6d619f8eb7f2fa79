"""The exit of a script whose LLM is still generating (loop_thread._end_all), interrupted."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)


def test_ctrl_c_during_the_exits_wait_for_a_non_daemon_threads_call_ends_it():
    """A script whose main thread ended while a non-daemon thread's long LLM.generate ran,
    then Ctrl-C (a timer thread's signal.raise_signal, as a SIGINT the kernel hands to
    another thread): the exit's untimed join of that thread slept through the interrupt,
    to the end of the thread's call (minutes here). Now the exit stops the engine at once,
    the thread's call raises EngineStopped, and the engine is not started again under it
    (that raised CancelledError from the exit)."""
    script = ("import signal, threading, time\n"
              "from aiollm import LLM, SamplingParams\n"
              "llm = LLM(None, kv_tokens=4096)\n"
              "def endless():\n"
              "    llm.generate(['Tell'], SamplingParams(max_tokens=4000, ignore_eos=True),\n"
              "                 progress=False)\n"
              "threading.Thread(target=endless).start()\n"
              "time.sleep(0.3)\n"
              "threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()\n"
              "print('main ends', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=30, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the exit hung: {e.stderr}") from None
    assert time.monotonic() - t0 < 30
    assert done.stdout == "main ends\n", done.stderr
    assert "EngineStopped" in done.stderr, done.stderr
    assert "CancelledError" not in done.stderr and "destroyed" not in done.stderr, done.stderr


def test_ctrl_c_in_asyncio_run_ends_an_llm_call_of_its_main_task():
    """Async code that calls the blocking LLM.generate under asyncio.run, then Ctrl-C:
    asyncio.run's handler only cancels the main task (KeyboardInterrupt comes at a second
    press), and the task stayed blocked in the call to its end (minutes here). The call
    now ends at the cancellation, its requests aborted, and the script ends by its
    interrupt as asyncio.run ends it."""
    import signal

    script = ("import asyncio, signal, threading\n"
              "from aiollm import LLM, SamplingParams\n"
              "async def main():\n"
              "    llm = LLM(None, kv_tokens=4096)\n"
              "    threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()\n"
              "    llm.generate(['Tell'], SamplingParams(max_tokens=4000, ignore_eos=True),\n"
              "                 progress=False)\n"
              "    print('the call ran to its end', flush=True)\n"
              "asyncio.run(main())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=30, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the call ran on: {e.stderr}") from None
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stdout == "" and "KeyboardInterrupt" in done.stderr, done.stderr
    assert "destroyed" not in done.stderr and "cannot schedule" not in done.stderr, done.stderr
