"""The grammar compile threads: compilations with a deadline, shared by the requests that
wait for the same one.

A compilation cannot be interrupted (xgrammar compiles in C++), and some small schemas take
minutes (an object of 5,000 optional properties: ~10 min on a 2-core CPU). So a compilation
gets `timeout` seconds from its start (or from a request's arrival, for a request that joins
it later); a request whose grammar has not compiled by then gives up (Grammars turns that
into an InvalidRequest naming the grammar's field). Time spent queued for a slot is not the
grammar's: a request whose compilation no slot started within `timeout` seconds gets
Overloaded (the server is busy; a grammar queued behind slow ones got a 400 telling its
client to simplify a schema that compiles in a fraction of the timeout). A compilation
still running at its deadline stops holding one of the THREADS slots: it runs on,
unwaited, on a daemon thread of its own (one per compilation, so shutdown never waits for
it, and the interpreter's exit for EXIT_WAIT seconds at most), and its result still reaches
the process-wide cache. While MAX_OVERDUE such compilations run on, a new compilation is
refused at once (Overloaded), and the slots start one only while fewer than THREADS +
MAX_OVERDUE run (those queued before can take the overdue count past MAX_OVERDUE), so the
CPU they burn stays bounded. SGLang likewise fails a request whose grammar is not ready
within a timeout (SGLANG_GRAMMAR_TIMEOUT, 300 s) and leaves its thread running.

Concurrent requests for one key share one compilation; one that is still queued when its
last request leaves (timed out, cancelled) is dropped. close() drops the queued ones and
releases every waiting request with Overloaded.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aiollm.errors import Overloaded

log = logging.getLogger(__name__)
# Two slots, so one slow grammar does not hold up every other new one (xgrammar spreads
# each compilation over threads of its own)
THREADS = 2
MAX_OVERDUE = 2  # compilations past their deadline that may run on
# A compile thread that comes back from xgrammar's C++ while the interpreter finalizes is
# ended by pthread_exit, whose unwinding through C++ aborts the process ("terminate called
# without an active exception"). So the interpreter's exit waits for the compilations under
# way, up to this many seconds; one that runs longer is killed with the process (exit()
# ends every thread), unless it happens to end during the finalization (~1 s here)
EXIT_WAIT = 5.0
_NAME = "aiollm-grammar"
_compiling: set[threading.Thread] = set()  # every engine's compile threads now running


@dataclass(slots=True, eq=False)
class _Job:
    fn: Callable
    args: tuple
    future: concurrent.futures.Future
    # time.monotonic() when a slot started it, and `timeout` later; None while queued
    started: float | None = None
    deadline: float | None = None
    finished: bool = False
    overdue: bool = False


@dataclass(slots=True, eq=False)
class _Shared:
    """One compilation as the event loop sees it, and how many requests wait for it."""

    job: _Job
    done: asyncio.Future
    waiters: int = 0


class CompileThreads:
    """Runs fn(*args) off the event loop with a deadline of `timeout` seconds (see the
    module docstring). run() is called on the event loop; close() too."""

    def __init__(self, timeout: float, threads: int = THREADS, max_overdue: int = MAX_OVERDUE):
        assert timeout > 0 and threads >= 1 and max_overdue >= 0
        self.timeout, self.threads, self.max_overdue = timeout, threads, max_overdue
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._busy = 0  # slots running a compilation within its deadline
        self._overdue = 0  # compilations past their deadline, still running
        self._slots: list[threading.Thread] = []  # started at the first compilation
        self._closed = False
        self._shared: dict[Hashable, _Shared] = {}  # the event loop's side

    async def run(self, key: Hashable, fn: Callable, *args):
        """fn(*args)'s result, computed once for concurrent calls with one key. Raises what
        fn raises; TimeoutError when it has been running for `timeout` seconds, counted from
        this call or from its start, whichever is later (it runs on); Overloaded when no
        slot started it within `timeout` seconds of this call (the compilations under way
        hold them all), when closed (or closing meanwhile), or when max_overdue
        compilations run past their deadline. So a call waits at most 2 * timeout."""
        called = time.monotonic()
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = self._submit(key, fn, args)
        shared.waiters += 1
        try:
            while True:  # time in the queue is not the grammar's: its limit moves to its start
                started = shared.job.started
                limit = (called if started is None else max(called, started)) + self.timeout
                # asyncio.wait, not wait_for: woken by the result and a cancellation in one
                # turn, wait_for (Python 3.10, 3.11) returned the result and dropped the
                # cancellation; nor does it cancel what it waits for (shared by others)
                await asyncio.wait((shared.done,), timeout=max(0.0, limit - time.monotonic()))
                if shared.done.done():  # (also as the time ran out) fn's result or error
                    return shared.done.result()
                started = shared.job.started
                if started is None:
                    raise Overloaded(f"grammar compiler busy: no compile thread was free "
                                     f"within {self.timeout:g} s; retry later")
                if max(called, started) + self.timeout <= time.monotonic():
                    raise TimeoutError(f"not done within {self.timeout:g} s")
        except asyncio.CancelledError:
            if shared.done.cancelled():  # close() released it, not our caller
                raise Overloaded("the engine shut down before the grammar compiled") from None
            raise
        finally:
            shared.waiters -= 1
            if not shared.waiters and shared.job.future.cancel():  # queued, and unwanted
                self._forget(key, shared)

    def close(self) -> None:
        """Refuse new compilations, drop the queued ones and release their waiters with
        Overloaded. Running compilations finish unwaited on their daemon threads."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()  # the idle slots end
        for job in dropped:
            job.future.cancel()
        for shared in list(self._shared.values()):
            shared.done.cancel()

    def _submit(self, key: Hashable, fn: Callable, args: tuple) -> _Shared:
        with self._cond:
            if self._closed:
                raise Overloaded("the engine is shutting down")
            if self._overdue >= self.max_overdue:
                raise Overloaded(f"grammar compiler busy: {self._overdue} grammars are still "
                                 "compiling past their deadline; retry later")
            job = _Job(fn, args, concurrent.futures.Future())
            self._queue.append(job)
            if not self._slots:
                self._slots = [threading.Thread(target=self._slot, name=f"{_NAME}-{i}",
                                                daemon=True) for i in range(self.threads)]
                for t in self._slots:
                    t.start()
            self._cond.notify_all()
        shared = _Shared(job, asyncio.wrap_future(job.future))
        shared.done.add_done_callback(lambda _: self._forget(key, shared))
        return shared

    def _forget(self, key: Hashable, shared: _Shared) -> None:
        if self._shared.get(key) is shared:
            del self._shared[key]

    def _slot(self) -> None:
        """One slot: starts a queued compilation on a thread of its own and waits for it
        until its deadline (`timeout` after its start), when the slot takes the next one."""
        cond = self._cond
        while True:
            with cond:
                # the slot's own compilation and the overdue ones: at most threads + max_overdue
                cond.wait_for(lambda: self._closed or (
                    self._queue and self._busy + self._overdue < self.threads + self.max_overdue))
                if self._closed:
                    return
                job = self._queue.popleft()
                if not job.future.set_running_or_notify_cancel():  # dropped meanwhile
                    continue
                job.started = time.monotonic()
                job.deadline = job.started + self.timeout
                self._busy += 1
            thread = threading.Thread(target=self._compile, args=(job,),
                                      name=f"{_NAME}-compile", daemon=True)
            _compiling.add(thread)
            thread.start()
            with cond:
                cond.wait_for(lambda: job.finished or self._closed,
                              max(0.0, job.deadline - time.monotonic()))
                self._busy -= 1
                if not job.finished and not self._closed:
                    job.overdue = True
                    self._overdue += 1
                    log.warning("a grammar compilation ran past its %g s deadline: it runs on, "
                                "unwaited (%d do)", self.timeout, self._overdue)
                cond.notify_all()

    def _compile(self, job: _Job) -> None:
        try:
            result, error = job.fn(*job.args), None
        except BaseException as e:  # the waiters' to raise
            result, error = None, e
        with self._cond:
            job.finished = True
            if job.overdue:
                self._overdue -= 1
                log.info("a grammar compilation ended %.0f s past its deadline",
                         time.monotonic() - job.deadline)
            self._cond.notify_all()
        _compiling.discard(threading.current_thread())
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)


def compiling() -> int:
    """How many compilations (every engine's) run now, past their deadline or not."""
    return len(_compiling)


@atexit.register
def _wait_at_exit() -> None:
    deadline = time.monotonic() + EXIT_WAIT
    for thread in list(_compiling):
        thread.join(max(0.0, deadline - time.monotonic()))
    if _compiling:
        log.warning("exiting while %d grammar compilations run", len(_compiling))
