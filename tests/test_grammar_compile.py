"""CompileThreads (aiollm/engine/grammar_compile.py) on its own: functions that stand in for
xgrammar's compilations, held on events or sleeping, so the timings are the test's."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aiollm.engine.grammar_compile import CompileThreads
from aiollm.errors import Overloaded


def _held(event: threading.Event) -> str:
    event.wait(30)
    return "held"


async def _until(condition, limit: float = 20.0) -> None:
    """Polls condition() every 10 ms; fails the test after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the compile threads never reached the state"
        await asyncio.sleep(0.01)


def test_time_in_the_queue_is_not_the_grammars():
    """A grammar's deadline counts from the start of its compilation: one queued behind a
    slow compilation got only what was left of its deadline when a thread took it (here
    0.5 s of 1), and its request a TimeoutError (a 400 saying "simplify the schema") for
    a grammar that compiles in 0.7 s, as a 400-property schema queued behind two slow ones
    did. The quick one joins 0.5 s after the slow one started (not after it was submitted:
    on a loaded 2-core machine the thread took the slow one late, its deadline came after
    the quick one's wait for a thread, and the quick one was Overloaded)."""
    release = threading.Event()

    async def scenario():
        threads = CompileThreads(1.0, threads=1, max_overdue=1)
        slow = asyncio.ensure_future(threads.run("slow", _held, release))
        await _until(lambda: threads._busy == 1)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        quick = await threads.run("quick", lambda: time.sleep(0.7) or "quick")
        took = time.monotonic() - t0
        with pytest.raises(TimeoutError):
            await slow
        threads.close()
        return quick, took

    try:
        quick, took = asyncio.run(scenario())
    finally:
        release.set()
    assert quick == "quick" and 0.7 < took < 5, took


def test_a_grammar_no_thread_started_is_overloaded():
    """A grammar that never got a thread within the timeout is the server's fault:
    Overloaded (a 503 with Retry-After), not a TimeoutError (a 400 naming its field)."""
    release = threading.Event()

    async def scenario():
        # the slow ones, the first past its deadline and the second running, take all the
        # room there is (a thread and one overdue), then both run past their deadlines
        threads = CompileThreads(1.0, threads=1, max_overdue=1)
        slow = [asyncio.ensure_future(threads.run(0, _held, release))]
        # the second joins the queue 0.3 s after the first started, so the slot takes it
        # (at the first's deadline) before its own second in the queue runs out, even with
        # the 2-core CI machine's thread wake-ups lagging (both joining at once raced)
        await _until(lambda: threads._busy == 1)
        await asyncio.sleep(0.3)
        slow.append(asyncio.ensure_future(threads.run(1, _held, release)))
        await asyncio.sleep(0.05)
        assert len(threads._queue) == 1 and not threads._overdue
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match="no compile thread was free within 1 s"):
            await threads.run("queued", lambda: "queued")
        took = time.monotonic() - t0
        for s in slow:
            with pytest.raises(TimeoutError):
                await s
        threads.close()
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        release.set()
    assert 0.9 < took < 5, took


def test_a_timeout_the_function_raises_is_raised_at_once():
    """fn's own TimeoutError is not taken for the deadline (the wait would spin on the
    finished compilation until the deadline)."""

    def fails():
        raise TimeoutError("fn's")

    async def scenario():
        threads = CompileThreads(5.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="fn's"):
            await threads.run("k", fails)
        threads.close()
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 1.0


def test_a_cancel_in_the_turn_the_compilation_ends_is_not_lost():
    """A waiter cancelled in the loop turn its compilation ends (its client gone as the
    grammar compiled) is cancelled. asyncio.wait_for (Python 3.10, 3.11), woken by the
    result and the cancellation at once, returned the result and dropped the cancellation:
    the request was submitted and ran to its max_tokens for nobody. Here the other waiter
    of the same grammar, woken first, cancels it in that turn."""
    release = threading.Event()

    async def scenario():
        threads = CompileThreads(5.0)
        victim = None

        async def first():
            result = await threads.run("k", _held, release)
            victim.cancel()
            return result

        other = asyncio.ensure_future(first())
        await asyncio.sleep(0)  # it waits first, so it is woken first
        victim = asyncio.ensure_future(threads.run("k", _held, release))
        await asyncio.sleep(0)
        release.set()
        assert await other == "held"
        with pytest.raises(asyncio.CancelledError):
            await victim
        threads.close()

    try:
        asyncio.run(scenario())
    finally:
        release.set()


def test_a_compilation_that_ends_as_the_time_runs_out_is_the_result(monkeypatch):
    """The wait's timer and the compilation's end can come in one turn of the event loop:
    the wait times out with the result there (here made so: the wait sees the end and
    still reports it pending). That was a 400 for a grammar already compiled."""
    real = asyncio.wait

    async def ends_as_time_runs_out(fs, timeout):
        await real(fs)
        return set(), set(fs)

    async def scenario():
        threads = CompileThreads(5.0)
        monkeypatch.setattr(asyncio, "wait", ends_as_time_runs_out)
        try:
            return await threads.run("k", lambda: "compiled")
        finally:
            monkeypatch.undo()
            threads.close()

    assert asyncio.run(scenario()) == "compiled"


def test_the_deadline_is_a_timeout_error_on_python_3_10_too(monkeypatch):
    """Python 3.10 (which pyproject.toml accepts) has asyncio.TimeoutError apart from the
    builtin TimeoutError: the deadline's asyncio.TimeoutError slipped past `except
    TimeoutError` (Grammars' 400), a 500. The deadline is the builtin TimeoutError where
    asyncio's is another class (3.10's, imitated here on 3.11)."""

    class AsyncioTimeout(Exception):  # 3.10's asyncio.TimeoutError: not a TimeoutError
        pass

    release = threading.Event()

    async def scenario():
        threads = CompileThreads(0.2)
        monkeypatch.setattr(asyncio, "TimeoutError", AsyncioTimeout)
        try:
            with pytest.raises(TimeoutError):
                await threads.run("k", _held, release)
        finally:
            monkeypatch.undo()
            release.set()
            threads.close()

    asyncio.run(scenario())


def test_a_compilation_uses_half_the_cpus_at_most_eight(monkeypatch):
    """xgrammar's compiler defaults to 8 threads: on a 2-core machine a slow grammar then took
    the CPU from the event loop and the model thread. The engine's compiler gets half the
    CPUs this process may run on, 1 to 8."""
    import os

    import torch
    import xgrammar as xgr

    from aiollm.engine import grammar
    from aiollm.engine.grammar import Grammars, compiler_threads

    for cpus, want in ((1, 1), (2, 1), (6, 3), (16, 8), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, n=cpus: set(range(n)),
                            raising=False)
        assert compiler_threads() == want, cpus
    made = []

    class Tok:  # what Grammars reads of a tokenizer before xgrammar takes it
        name_or_path, eos_token_id = "tiny", 0

        def __len__(self):
            return 100

    monkeypatch.setattr(xgr.TokenizerInfo, "from_huggingface", lambda *a, **k: "info")
    monkeypatch.setattr(xgr, "GrammarCompiler", lambda info, **kw: made.append((info, kw)))
    monkeypatch.setattr(grammar, "_CACHE", grammar._Cache())  # no compiler built before
    Grammars(Tok(), 100, [0], torch.device("cpu"), compile_timeout=1.0)._compiler()
    assert made == [("info", {"max_threads": 8, "cache_enabled": False})]
