"""LoopThread: an asyncio event loop that runs on a daemon thread of its own, to which other
threads hand coroutines and wait for their ends. The offline LLM's engine lives there, so its
blocking calls work the same from plain code, from async code and from a notebook's cell
(whose thread already runs the kernel's loop, where a loop of the caller's thread cannot run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread  # its exit hook registered before ours: ours runs first
import signal
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# the LoopThreads whose loops still run: the interpreter's exit ends them (see _end_all)
_RUNNING: set[LoopThread] = set()


class LoopThread:
    """An event loop run by a daemon thread named `name` from construction until end().
    call() runs a coroutine on it and blocks its caller until the coroutine ends; one call
    at a time (the caller takes turns: calls do not queue here). last() (the engine's
    stop), when given, is awaited on the loop before it ends: by end() unless it is given
    its own, and by the interpreter's exit (see _end_all)."""

    def __init__(self, name: str, last: Callable[[], Coroutine] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.last = last
        # the threads that called it: the interpreter's exit waits for the non-daemon ones
        self._callers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        # the call under way: its task and the future its caller waits on (loop thread only)
        self._task: asyncio.Task | None = None
        self._result: concurrent.futures.Future | None = None
        self._ending = False  # end() has run
        self._ended = threading.Event()  # set as the thread ends, the loop closed
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        _RUNNING.add(self)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            while True:
                try:
                    self.loop.run_forever()
                    return
                except BaseException as e:
                    # a KeyboardInterrupt or SystemExit raised inside a task or a callback
                    # (the engine's step loop) leaves run_forever, as asyncio lets them out:
                    # the call under way ends with it, and the loop runs on (what was left to
                    # run is still queued)
                    if self._result is not None and not self._result.done():
                        self._result.set_exception(e)
        finally:
            try:
                # what still runs (a model load that Ctrl-C left behind) ends cancelled, as
                # asyncio.run ends it: else 'Task was destroyed but it is pending!'
                left = asyncio.all_tasks(self.loop)
                for task in left:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()
            finally:  # else join() waited for ever
                _RUNNING.discard(self)
                self._ended.set()

    def on_own_thread(self) -> bool:
        """Whether the caller runs on the loop's thread (where a call would wait for itself)."""
        return threading.current_thread() is self.thread

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """coro's result, run as a task on the loop while this thread waits; raises what it
        raises. Interrupted (KeyboardInterrupt: Ctrl-C in this thread, or one raised inside
        the loop), the task is cancelled and awaited to its end before the interrupt goes
        on. RuntimeError once the loop is closed. Never from the loop's own thread (see
        on_own_thread): it would wait forever."""
        assert not self.on_own_thread()
        self.add_caller()
        result: concurrent.futures.Future = concurrent.futures.Future()

        def begin() -> None:
            self._result = result
            self._task = self.loop.create_task(coro)
            self._task.add_done_callback(lambda task: _hand_over(task, result))

        try:
            self.loop.call_soon_threadsafe(begin)
        except BaseException:  # the loop is closed: the coroutine would never be awaited
            coro.close()
            raise
        try:
            wait_interruptibly(result)
            _abandon_if_exiting()
            return result.result()
        except BaseException:
            self._cancel_call()
            raise

    def add_caller(self) -> None:
        """Count the calling thread among those that called (or wait to call) the loop:
        the interpreter's exit waits for the non-daemon ones (see _end_all)."""
        self._callers.add(threading.current_thread())

    def _cancel_call(self) -> None:
        """Cancel the task of the call under way, if it still runs, and wait for its end,
        unless the loop ends first (the interpreter's exit ends it under a daemon thread's
        call). A callback, not a coroutine: one handed to a loop that then closed was never
        awaited, and asyncio warned of it."""
        ended = threading.Event()

        def cancel() -> None:
            task = self._task
            if task is None or task.done():
                ended.set()
            else:
                task.add_done_callback(lambda _: ended.set())
                task.cancel()

        try:
            self.loop.call_soon_threadsafe(cancel)
        except RuntimeError:  # the loop is closed: nothing of the call runs there
            return
        while not ended.wait(POLL_S) and not self._ended.is_set():
            pass

    def end(self, last: Callable[[], Coroutine] | None = None) -> None:
        """Stop the loop, after awaiting last() on it (else the LoopThread's own last(),
        when given); the thread then closes the loop and ends. Returns at once, from any
        thread (a finalizer's, the loop's own); nothing once the loop is closed."""
        if self._ending:
            return
        last = last or self.last

        async def ending() -> None:
            try:
                if last is not None:
                    await last()
            except asyncio.CancelledError:
                # by the loop's own end (_serve), which stopped it already: stopped again,
                # that end's cleanup raised, and its thread died with join() waiting
                return
            except BaseException:
                self.loop.stop()
                raise
            self.loop.stop()

        try:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(ending()))
            self._ending = True
        except RuntimeError:  # closed already
            pass

    @property
    def ending(self) -> bool:
        """Whether end() has run: the loop stops once last() has ended."""
        return self._ending

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after end()), at most `timeout` seconds; whether it
        has. Interrupted (Ctrl-C), it leaves the thread ending, and a later join() waits
        again: an interrupted Thread.join marked a thread that still ran as ended (CPython
        3.11), and the next join() returned at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended.wait(POLL_S):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True


def _end_all() -> None:
    """At the interpreter's exit, end the loops still running (an LLM never closed: a script
    that ends without close(), as vLLM's examples do), each after its last() (the engine's
    stop: its requests' slots and KV given back, its model threads and tensor-parallel
    ranks ended, its step log written), within _EXIT_WAIT_S in all. Left to die with the
    process, a loop's tasks were destroyed pending ('Task was destroyed but it is
    pending!').

    It runs once the main thread's code has ended and before concurrent.futures shuts
    every thread pool down (threading runs its exit hooks in reverse order of
    registration): the engine's model thread, its event waits and asyncio.to_thread are
    such pools, and a step loop that met them shut logged 'cannot schedule new futures
    after shutdown' and failed the calls still under way. So the non-daemon threads that
    called a loop, which the interpreter would wait for anyway, end their calls first; a
    daemon thread's call under way is left waiting (see _abandon_if_exiting)."""
    global _exiting
    _wait_for_callers()  # returns at once at a Ctrl-C: the engines then stop now
    # only now: a daemon thread's call that ends while a non-daemon one waits for its turn
    # returns (parked, it kept its turn, and the waiting thread and the exit waited forever)
    _exiting = True
    for loop_thread in list(_RUNNING):
        loop_thread.end()
    # Ctrl-C does not cut this wait short: the interpreter then finalized beside a model
    # thread still in torch, which aborted the process ('terminate called without an
    # active exception'); raised on, it also kept the thread pools' own exit from running
    deadline = time.monotonic() + _EXIT_WAIT_S
    for loop_thread in list(_RUNNING):
        while True:
            try:
                loop_thread.join(max(0.0, deadline - time.monotonic()))
                break
            except KeyboardInterrupt:
                pass


def _wait_for_callers() -> None:
    """The exit's wait for the non-daemon threads that called a loop, ended by a Ctrl-C.

    While it waits, SIGINT sets a flag instead of raising: a KeyboardInterrupt inside
    Thread.join (CPython 3.11's _wait_for_tstate_lock) releases the lock of a thread that
    still runs and marks it ended, so the interpreter then finalized under that thread (its
    work after the call, a traceback, was cut off). In slices: an untimed wait slept through
    a Ctrl-C whose signal another thread took (see wait_interruptibly)."""
    interrupted = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    except ValueError:  # not the main thread (an exit hook run elsewhere): no handler
        previous = _NO_HANDLER
    try:
        for loop_thread in list(_RUNNING):
            for caller in list(loop_thread._callers):
                if not caller.daemon and caller is not threading.current_thread():
                    while caller.is_alive() and not interrupted.wait(POLL_S):
                        pass
    except KeyboardInterrupt:  # no handler of ours could be set
        pass
    finally:
        if previous is not _NO_HANDLER:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


_NO_HANDLER = object()


threading._register_atexit(_end_all)  # (CPython's hook before thread pools shut down)
_exiting = False  # set once _end_all stops the engines

# how long the exit waits for the loops' threads to stop their engines (a step under way)
_EXIT_WAIT_S = 5.0


def _abandon_if_exiting() -> None:
    """A daemon thread's call ended by the interpreter's exit never returns: the thread
    waits here until the process ends it, as Python ends daemon threads at exit. Returning,
    it raised the engine's EngineStopped, printed as the thread's traceback at every such
    exit, or started the engine again (LLM._run's recovery)."""
    if _exiting and threading.current_thread().daemon:
        threading.Event().wait()


# how long a waiting caller sleeps before it looks for an interrupt (see wait_interruptibly)
POLL_S = 0.05


def wait_interruptibly(future: concurrent.futures.Future) -> None:
    """Return once `future` is done; a KeyboardInterrupt for this thread raises here within
    POLL_S. An untimed wait sleeps through an interrupt whose signal another thread took
    (signal.raise_signal or _thread.interrupt_main there, a SIGINT the kernel handed to
    another thread): Python runs the handler only when the waiting thread returns to its
    bytecode, which an untimed wait does once the future is done, at the end of the call.

    Called from a task of an event loop (async code that calls the blocking LLM), a
    cancellation of that task requested meanwhile raises asyncio.CancelledError here:
    asyncio.run's Ctrl-C only cancels its main task (KeyboardInterrupt at the second
    press), which waited for the whole call."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop runs on this thread
        task = None
    cancels = task.cancelling() if task is not None else 0
    while not done.wait(POLL_S):
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError


def _hand_over(task: asyncio.Task, result: concurrent.futures.Future) -> None:
    """The end of a call's task to the future its caller waits on, unless an interrupt
    inside the loop has ended the call first."""
    # retrieved in any case: asyncio logs a task's exception nobody retrieved
    error = None if task.cancelled() else task.exception()
    if result.done():
        return
    if task.cancelled():
        result.cancel()
    elif error is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())
