"""The exit of a script whose LLM is still generating (loop_thread._end_all), interrupted.

Each script loads a tiny random model (`tiny4k`: its outputs are not what is checked) before
what it tests; a call of 4,000 tokens runs for seconds there (1-3 ms a step on 2 CPU cores),
long past the interrupt at 0.8 s. The faults these tests catch ran to a call's end or for ever,
hence the 90 s limits."""

import time

import pytest
from conftest import tiny_llama
from script_run import run_script
from test_tensor_parallel import _save_tokenizer


@pytest.fixture(scope="module")
def tiny4k(tmp_path_factory) -> str:
    """`LLM(...)`'s arguments, as Python source, for a tiny random Llama of 4,096 positions
    (a 4,000-token call fits) with a word-level tokenizer of its 161 tokens (the default
    model's takes seconds to parse from its GGUF file) and no end token (a call's length is
    its max_tokens)."""
    path = tiny_llama(tmp_path_factory.mktemp("tiny4k"), vocab_size=161,
                      max_position_embeddings=4096, eos_token_id=None)
    _save_tokenizer(path)
    return f"{path!r}, load_format='dummy'"


def test_ctrl_c_during_the_exits_wait_for_a_non_daemon_threads_call_ends_it(tiny4k):
    """A script whose main thread ended while a non-daemon thread's long LLM.generate ran,
    then Ctrl-C (a timer thread's signal.raise_signal, as a SIGINT the kernel hands to
    another thread): the exit's untimed join of that thread slept through the interrupt,
    to the end of the thread's call (seconds here). Now the exit stops the engine at once,
    the thread's call raises EngineStopped, and the engine is not started again under it
    (that raised CancelledError from the exit)."""
    script = ("import signal, threading, time\n"
              "from aiollm import LLM, SamplingParams\n"
              f"llm = LLM({tiny4k}, kv_tokens=4096)\n"
              "def endless():\n"
              "    llm.generate(['Tell'], SamplingParams(max_tokens=4000, ignore_eos=True),\n"
              "                 progress=False)\n"
              "threading.Thread(target=endless).start()\n"
              "time.sleep(0.3)\n"
              "threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()\n"
              "print('main ends', flush=True)\n")
    t0 = time.monotonic()
    done = run_script(script, timeout=90)
    assert time.monotonic() - t0 < 90
    assert done.stdout == "main ends\n", done.stderr
    assert "EngineStopped" in done.stderr, done.stderr
    assert "CancelledError" not in done.stderr and "destroyed" not in done.stderr, done.stderr


def test_ctrl_c_during_the_exits_wait_still_waits_for_the_threads_own_end(tiny4k):
    """The same exit and Ctrl-C, with a thread that goes on after its call ended: Python
    must still wait for it. The exit's wait was a Thread.join, and a KeyboardInterrupt
    inside it (CPython 3.11's _wait_for_tstate_lock) marks the joined thread as ended while
    it runs: the interpreter then finalized under the thread, whose work after the call
    (here a print; in CI a traceback) was cut off."""
    script = ("import signal, threading, time\n"
              "from aiollm import LLM, SamplingParams\n"
              f"llm = LLM({tiny4k}, kv_tokens=4096)\n"
              "def endless():\n"
              "    try:\n"
              "        llm.generate(['Tell'], SamplingParams(max_tokens=4000, ignore_eos=True),\n"
              "                     progress=False)\n"
              "    except Exception as e:\n"
              "        print(type(e).__name__, flush=True)\n"
              "    time.sleep(1)\n"
              "    print('thread ends', flush=True)\n"
              "threading.Thread(target=endless).start()\n"
              "time.sleep(0.3)\n"
              "threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()\n"
              "print('main ends', flush=True)\n")
    done = run_script(script, timeout=90)
    assert done.stdout == "main ends\nEngineStopped\nthread ends\n", done.stderr


def test_ctrl_c_in_asyncio_run_ends_an_llm_call_of_its_main_task(tiny4k):
    """Async code that calls the blocking LLM.generate under asyncio.run, then Ctrl-C:
    asyncio.run's handler only cancels the main task (KeyboardInterrupt comes at a second
    press), and the task stayed blocked in the call to its end (seconds here). The call
    now ends at the cancellation, its requests aborted, and the script ends by its
    interrupt as asyncio.run ends it."""
    import signal

    script = ("import asyncio, signal, threading\n"
              "from aiollm import LLM, SamplingParams\n"
              "async def main():\n"
              f"    llm = LLM({tiny4k}, kv_tokens=4096)\n"
              "    threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()\n"
              "    llm.generate(['Tell'], SamplingParams(max_tokens=4000, ignore_eos=True),\n"
              "                 progress=False)\n"
              "    print('the call ran to its end', flush=True)\n"
              "asyncio.run(main())\n")
    done = run_script(script, timeout=90)
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stdout == "" and "KeyboardInterrupt" in done.stderr, done.stderr
    assert "destroyed" not in done.stderr and "cannot schedule" not in done.stderr, done.stderr


def test_a_non_daemon_thread_waiting_for_its_turn_behind_a_daemon_threads_call_is_served(tiny4k):
    """A script whose daemon thread's LLM call was under way while a non-daemon thread
    waited for its turn, and whose main thread then ended: the exit did not wait for the
    waiting thread (it had not called yet), stopped the engine and parked the daemon
    thread's call, which kept the turn forever, and the interpreter waited for the
    non-daemon thread forever. It is waited for as a caller, and served.

    The daemon's call is surely under way as the main thread ends: its progress bar holds
    the engine's loop at the end of its first (one-token) prompt until the main thread's
    last statement, so its second prompt has 299 steps to run as the exit begins
    (microseconds later): a call of a fraction of a second, not of seconds."""
    script = ("import threading, time\n"
              "from aiollm import LLM, SamplingParams\n"
              f"llm = LLM({tiny4k}, kv_tokens=4096)\n"
              "under_way, main_ends = threading.Event(), threading.Event()\n"
              "class Bar:\n"
              "    def __init__(self, total, desc): pass\n"
              "    def update(self, n):\n"
              "        under_way.set()\n"
              "        main_ends.wait()  # (on the engine's loop: nothing runs meanwhile)\n"
              "    def close(self): pass\n"
              "def daemon():\n"
              "    llm.generate(['Tell', 'Tell'], [SamplingParams(max_tokens=1),\n"
              "                 SamplingParams(max_tokens=300, ignore_eos=True)], progress=Bar)\n"
              "def waiting():\n"
              "    out = llm.generate(['Hi'], SamplingParams(max_tokens=3), progress=False)\n"
              "    print('served', len(out[0].token_ids), flush=True)\n"
              "threading.Thread(target=daemon, daemon=True).start()\n"
              "under_way.wait()\n"
              "threading.Thread(target=waiting).start()\n"
              "time.sleep(0.2)  # (it waits for its turn)\n"
              "main_ends.set()\n")
    done = run_script(script, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "served 3\n", done.stderr
    assert "Traceback" not in done.stderr, done.stderr
