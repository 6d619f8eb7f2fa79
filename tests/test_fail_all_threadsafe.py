"""Engine._fail_all_threadsafe, the lost tensor-parallel rank's on_failure (a watchdog
thread calls it, then ends the process): it waits for the event loop to have failed the
requests in flight, up to hand_out.FAIL_WAIT_S. It must never hang its caller: not on the
loop's own thread, not when called twice at once, not when the loop has stopped or closed.
The loop runs in a thread, as an offline LLM's (aiollm/loop_thread.py) does."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from test_prefix_cache_step_failure import tiny  # noqa: F401 - a fixture

from aiollm import Engine, SamplingParams
from aiollm.engine import hand_out
from aiollm.errors import RequestFailed


def timed(fn, *args) -> float:
    t = time.monotonic()
    fn(*args)
    return time.monotonic() - t


def test_failing_all_from_any_thread_never_hangs(tiny, monkeypatch):
    monkeypatch.setattr(hand_out, "FAIL_WAIT_S", 1.0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    eng = Engine(tiny, load_format="dummy", kv_tokens=1024)
    on_loop(eng.start())
    try:
        # another thread, a request in flight: it has failed with the message on return
        many = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        call = asyncio.run_coroutine_threadsafe(eng.generate([5, 6, 7], many), loop)
        while not eng._requests:
            time.sleep(0.01)
        assert timed(eng._fail_all_threadsafe, "rank 1 lost") < 0.9
        with pytest.raises(RequestFailed, match="rank 1 lost"):
            call.result(5)
        # twice at once
        both = [threading.Thread(target=eng._fail_all_threadsafe, args=("again",))
                for _ in range(2)]
        t = time.monotonic()
        for th in both:
            th.start()
        for th in both:
            th.join(5)
        assert time.monotonic() - t < 0.9 and not any(th.is_alive() for th in both)

        async def from_the_loop():  # waiting here would hold the loop it waits for
            return timed(eng._fail_all_threadsafe, "on the loop")
        assert on_loop(from_the_loop()) < 0.5
        on_loop(eng.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    # stopped, not closed: nothing runs the failing; the wait ends at FAIL_WAIT_S
    assert 0.9 < timed(eng._fail_all_threadsafe, "stopped") < 3
    loop.close()
    assert timed(eng._fail_all_threadsafe, "closed") < 0.5
