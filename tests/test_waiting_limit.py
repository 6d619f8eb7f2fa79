"""--max-waiting-requests (EngineConfig.max_waiting_requests) bounds the requests that truly
wait: those the running batch has no room for. A burst at an idle engine that its running
batch takes (max_running_requests of it) plus the waiting limit is served whole; one request
more is refused with Overloaded (HTTP 503), at once, holding nothing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aiollm import Engine, SamplingParams
from aiollm.errors import Overloaded
from conftest import out_of_memory_once, run, tiny_llama

PARAMS = SamplingParams(max_tokens=3, temperature=0)
# a busy request, aborted once the test is done with it: on a tiny model (~ms a step) it must
# outlast the seconds a test waits beside it
LONG = SamplingParams(max_tokens=7000, ignore_eos=True)
SOME = SamplingParams(max_tokens=20, ignore_eos=True)
SOME_OF_FOUR = SamplingParams(max_tokens=20, ignore_eos=True, n=4)


@pytest.fixture(scope="module")
def long_tiny(tmp_path_factory) -> str:
    """A tiny random Llama (conftest.tiny_llama) with room for LONG: the limits here are about
    counting requests, not about what a model answers, so the default model's tens of ms a
    token bought nothing (test_generate_batch_fills_the_running_batch took 31 s on it)."""
    return tiny_llama(tmp_path_factory.mktemp("long_tiny"), max_position_embeddings=8192)


def tiny_engine(path: str, **kwargs) -> Engine:
    """An Engine on the tiny model at `path`, with its random weights and room for LONG."""
    return Engine(path, load_format="dummy", kv_tokens=8192, **kwargs)


async def drain(streams) -> list[str]:
    texts = []
    for s in streams:
        texts.append("".join([d.text async for d in s]))
    return texts


async def running_peak(eng: Engine, call) -> tuple[object, int]:
    """call's result, and the most requests the engine ran at once meanwhile (read at each
    turn of the loop: the step loop changes them between turns)."""
    task = asyncio.ensure_future(call)
    peak = 0
    while not task.done():
        peak = max(peak, eng.stats()["running"])
        await asyncio.sleep(0)
    return task.result(), peak


def assert_idle(eng: Engine) -> None:
    s = eng.stats()
    assert (s["running"], s["waiting"], s["table_used"], s["kv_used"]) == (0, 0, 0, 0), s


def test_a_burst_the_running_batch_takes_is_not_refused(loop, long_tiny):
    """At an idle engine with room for 3 running and a waiting limit of 2, a burst of 5
    requests submitted before the step loop turns once was refused from the third on
    (the running batch, empty, was not counted as room): all 5 are served; the sixth waits
    beyond the limit and is refused, holding nothing."""
    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=3, max_waiting_requests=2)
        await eng.start()
        try:
            streams = [eng.stream(f"Question {i}:", PARAMS) for i in range(5)]
            # the message says what the limit counts (it said only "too many waiting
            # requests (2)", though 5 were in); not the server's flag, which the 503's
            # client cannot see: the log names it
            with pytest.raises(Overloaded, match=r"^too many waiting requests: the request "
                               r"queue is full \(2 wait beyond the running batch's free "
                               r"places, the most this server lets wait\); retry later$"):
                eng.stream("One too many:", PARAMS)
            assert eng.stats()["table_used"] == 5
            texts = await drain(streams)
            assert len(texts) == 5
            assert_idle(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_a_busy_batch_leaves_only_the_waiting_limit(loop, long_tiny):
    """With the running batch full, the limit counts every waiting request: a real overload
    is still refused after max_waiting_requests of them."""
    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=1, max_waiting_requests=2)
        await eng.start()
        try:
            busy = eng.stream("Count:", LONG)
            first = await anext(busy)  # admitted: the batch is full now
            assert first is not None and eng.stats()["running"] == 1
            waiting = [eng.stream(f"Question {i}:", PARAMS) for i in range(2)]
            with pytest.raises(Overloaded, match="too many waiting requests"):
                eng.stream("One too many:", PARAMS)
            await busy.aclose()
            assert len(await drain(waiting)) == 2
            assert_idle(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_generate_batch_fills_the_running_batch(loop, long_tiny):
    """generate_batch (and generate with n > 1) keeps as many prompts in flight as the
    engine takes without refusing one: the running batch and the waiting queue. It held
    them to max_waiting_requests, so with a waiting limit of 1 a batch ran one prompt at a
    time, whatever room the running batch had."""
    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=3, max_waiting_requests=1)
        await eng.start()
        try:
            batch = eng.generate_batch([f"Question {i}:" for i in range(6)], SOME, progress=False)
            outs, peak = await running_peak(eng, batch)
            assert len(outs) == 6 and peak == 3, peak
            out, peak = await running_peak(eng, eng.generate("Question:", SOME_OF_FOUR))
            assert len(out.outputs) == 4 and peak == 3, peak
            assert_idle(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_generate_batch_is_not_refused_while_out_of_memory_halves_the_batch(tmp_path):
    """An out-of-memory step halves the requests a step may run (engine/oom.py) for a while.
    generate_batch keeps as many prompts in flight as the configured batch and the waiting
    queue take: the waiting limit must count the batch's configured places, or the batch's
    own next prompt was refused (Overloaded, and so the whole batch) while backed off."""
    tiny_llama(tmp_path, vocab_size=256)
    prompts = [[i + 1, i + 2, i + 3] for i in range(10)]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    failed = []

    async def main():
        async with Engine(str(tmp_path), load_format="dummy", kv_tokens=512,
                          max_running_requests=4, max_waiting_requests=1,
                          prefix_cache=False) as engine:
            out_of_memory_once(engine.runner.model, 4, failed)  # the first decode step of 4
            outs = await asyncio.wait_for(engine.generate_batch(prompts, params, False), 60)
            assert engine.planner.max_running < 4  # still backed off at the end
            assert_idle(engine)
            return outs

    outs = asyncio.run(main())
    assert failed == [4] and len(outs) == 10


async def failing_then_stuck(eng, entered: threading.Event, unstuck: threading.Event):
    """Fail the steps of FAILING_STEPS requests (the engine is then failing: a health check
    probes it), then make each step set `entered` and wait for `unstuck` before it runs.
    Returns a function that gives the model its own forward back."""
    from aiollm.engine.step_health import FAILING_STEPS
    from aiollm.errors import RequestFailed

    model = eng.runner.model

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access (injected)")

    def stuck(batch):
        entered.set()
        unstuck.wait(30)
        return type(model).forward(model, batch)

    model.forward = broken
    for _ in range(FAILING_STEPS):
        with pytest.raises(RequestFailed):
            await eng.generate([1, 2, 3], SamplingParams(max_tokens=2))
    assert eng.failing
    model.forward = stuck
    return lambda: setattr(model, "forward", type(model).forward.__get__(model))


@pytest.mark.parametrize("probe_first", [True, False])
def test_a_health_probe_takes_no_place_in_the_waiting_queue_nor_needs_one(tiny, probe_first):
    """While the engine is failing, a health check runs a probe request (health_probe.py).
    It was an ordinary request of the waiting queue: counted against --max-waiting-requests,
    a probe made a client's request a 503 in its place (probe_first), and with the queue
    full the probe itself was refused, /health naming the full queue instead of the engine's
    state (probe_last). vLLM's /health takes no queue place: here the probe counts in no
    limit and waits first in line."""
    entered, unstuck = threading.Event(), threading.Event()

    async def go():
        async with Engine(tiny, load_format="dummy", kv_tokens=512, max_running_requests=1,
                          max_waiting_requests=1, prefix_cache=False) as eng:
            restore = await failing_then_stuck(eng, entered, unstuck)
            running = eng.stream([4, 5, 6], PARAMS)
            first = asyncio.ensure_future(anext(running))
            while not entered.is_set():  # admitted, its step under way: the batch is full
                await asyncio.sleep(0.01)

            async def probe() -> asyncio.Future:
                check = asyncio.ensure_future(eng.check_health(timeout=60))
                while not any(not r.counted for r in eng.planner.waiting) and not check.done():
                    await asyncio.sleep(0.01)
                assert not check.done(), await check  # refused: "too many waiting requests"
                assert not eng.planner.waiting[0].counted  # first in line
                return check

            health = await probe() if probe_first else None
            waiting = eng.stream([7, 8, 9], PARAMS)  # the one place the limit leaves
            with pytest.raises(Overloaded, match=r"too many waiting requests: the "
                               r"request queue is full \(1 wait"):
                eng.stream([1, 2], PARAMS)
            if not probe_first:
                health = await probe()
            unstuck.set()
            assert await health is None  # the probe's step completed: the fault has passed
            await first
            assert len(await drain([running, waiting])) == 2
            assert_idle(eng)
            restore()

    try:
        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        unstuck.set()


def test_refusals_are_logged_once_then_counted(loop, caplog, monkeypatch, long_tiny):
    """A full queue's 503s were not logged: an operator saw clients turned away nowhere but
    in their own logs. The first refusal is one WARNING line at once, naming the limit; the
    refusals that follow within the interval (a client retrying in a loop) are one line at
    its end, counted, not one line each."""
    from aiollm.engine import refusal_log

    monkeypatch.setattr(refusal_log, "INTERVAL_S", 0.5)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == refusal_log.log.name]

    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=1, max_waiting_requests=1)
        await eng.start()
        try:
            busy = eng.stream("Count:", LONG)
            await anext(busy)
            waiting = eng.stream("Question:", PARAMS)
            with caplog.at_level("WARNING", logger=refusal_log.log.name):
                for _ in range(5):
                    with pytest.raises(Overloaded):
                        eng.stream("One too many:", PARAMS)
                [first] = lines()
                assert "refused" in first and "--max-waiting-requests" in first, first
                assert "(1)" in first and "1 request waits beyond" in first, first
                await asyncio.sleep(0.8)
                assert len(lines()) == 2, lines()
                assert lines()[1].startswith("4 more requests refused"), lines()
                await asyncio.sleep(0.8)  # nothing more refused: nothing more logged
                assert len(lines()) == 2, lines()
                with pytest.raises(Overloaded):  # after a quiet interval: told at once
                    eng.stream("One too many:", PARAMS)
                assert len(lines()) == 3 and "more" not in lines()[2], lines()
            await busy.aclose()
            await drain([waiting])
        finally:
            await eng.stop()

    run(loop, go())


def test_a_refusal_names_the_waiting_limit_as_typed(loop, caplog, long_tiny):
    """SGLang's --max-queued-requests is the waiting limit: the refusal's WARNING line,
    logged while serve runs (cli.log_config.messages_rewritten), said to raise
    --max-waiting-requests, a flag the operator never typed (it named it outside the
    brackets that serve's rewriting reads)."""
    from aiollm.cli import build_parser
    from aiollm.cli.log_config import messages_rewritten
    from aiollm.cli.serve_checks import typed_flags
    from aiollm.engine import refusal_log

    args = build_parser().parse_args(["serve", "--max-queued-requests", "1"])

    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=1,
                          max_waiting_requests=args.max_waiting_requests)
        await eng.start()
        try:
            busy = eng.stream("Count:", LONG)
            await anext(busy)
            waiting = eng.stream("Question:", PARAMS)
            with (caplog.at_level("WARNING", logger=refusal_log.log.name),
                  messages_rewritten(typed_flags(args))):
                with pytest.raises(Overloaded):
                    eng.stream("One too many:", PARAMS)
            said = [r.getMessage() for r in caplog.records if r.name == refusal_log.log.name]
            assert len(said) == 1 and "(--max-queued-requests) allows (1)" in said[0], said
            assert "--max-waiting-requests" not in said[0], said
            await busy.aclose()
            await drain([waiting])
        finally:
            await eng.stop()

    run(loop, go())


def test_a_queue_timeout_is_logged(loop, caplog, long_tiny):
    """A request that waited past --queue-timeout gets a 503 too: logged as a refusal."""
    from aiollm.engine import refusal_log

    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=1, queue_timeout=0.2)
        await eng.start()
        try:
            busy = eng.stream("Count:", LONG)
            await anext(busy)
            with caplog.at_level("WARNING", logger=refusal_log.log.name):
                with pytest.raises(Overloaded, match="waited more than"):
                    await drain([eng.stream("Question:", PARAMS)])
            said = [r.getMessage() for r in caplog.records if r.name == refusal_log.log.name]
            assert len(said) == 1 and "--queue-timeout" in said[0], said
            await busy.aclose()
        finally:
            await eng.stop()

    run(loop, go())


def test_refusals_counted_when_the_engine_stops_are_told_once(loop, caplog, monkeypatch,
                                                              long_tiny):
    """Refusals counted but not yet told when the engine stops are logged by its stop(),
    once: they waited on a timer of the event loop, which stop() left behind, so a server
    shut down (its loop closed) within the interval after a burst of 503s never logged
    them, and a loop that ran on logged them after the engine was gone."""
    from aiollm.engine import refusal_log

    monkeypatch.setattr(refusal_log, "INTERVAL_S", 2.0)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == refusal_log.log.name]

    async def go():
        eng = tiny_engine(long_tiny, max_running_requests=1, max_waiting_requests=1)
        await eng.start()
        with caplog.at_level("WARNING", logger=refusal_log.log.name):
            try:
                busy = eng.stream("Count:", LONG)
                await anext(busy)
                eng.stream("Question:", PARAMS)
                for _ in range(3):
                    with pytest.raises(Overloaded):
                        eng.stream("One too many:", PARAMS)
                assert len(lines()) == 1, lines()
            finally:
                await eng.stop()  # within the interval: the two counted are told now
            assert len(lines()) == 2 and lines()[1].startswith("2 more requests"), lines()
            await asyncio.sleep(2.2)  # and not again when the interval ends
        assert len(lines()) == 2, lines()

    run(loop, go())


def test_a_running_health_probe_takes_no_clients_row(tiny):
    """A probe admitted into the running batch held a row that the waiting limit counted as
    no room: while its step ran (a slow or hung device is why the engine probes), a client's
    request was a 503 in its place. Its row counts as room, as it would without the probe:
    the batch's one row and the one waiting place are the clients' (two served, the third
    refused)."""
    entered, unstuck = threading.Event(), threading.Event()

    async def go():
        async with Engine(tiny, load_format="dummy", kv_tokens=512, max_running_requests=1,
                          max_waiting_requests=1, prefix_cache=False) as eng:
            restore = await failing_then_stuck(eng, entered, unstuck)
            health = asyncio.ensure_future(eng.check_health(timeout=60))
            while not entered.is_set():  # the probe runs: the batch's one row is its
                await asyncio.sleep(0.01)
            assert not any(r.counted for r in eng.planner.running)
            clients = [eng.stream([4, 5, 6], PARAMS), eng.stream([7, 8, 9], PARAMS)]
            with pytest.raises(Overloaded, match=r"too many waiting requests: the "
                               r"request queue is full \(1 wait"):
                eng.stream([1, 2], PARAMS)
            unstuck.set()
            assert await health is None
            restore()
            assert len(await drain(clients)) == 2
            assert_idle(eng)

    try:
        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        unstuck.set()


def test_a_full_request_table_is_logged_as_a_refusal(tiny, caplog):
    """A request table with no free slot (--table-capacity, below what the running batch and
    --max-waiting-requests allow) refuses a request with the same 503: it was not logged,
    unlike the waiting limit's."""
    from aiollm.engine import refusal_log

    async def go():
        async with Engine(tiny, load_format="dummy", kv_tokens=512, max_running_requests=1,
                          max_waiting_requests=100, table_capacity=3,
                          prefix_cache=False) as eng:
            with caplog.at_level("WARNING", logger=refusal_log.log.name):
                streams = [eng.stream([1, 2, 3], PARAMS) for _ in range(3)]
                with pytest.raises(Overloaded):
                    eng.stream([1, 2, 3], PARAMS)
                said = [r.getMessage() for r in caplog.records
                        if r.name == refusal_log.log.name]
                assert len(said) == 1 and "--table-capacity" in said[0], said
                assert len(await drain(streams)) == 3
            assert_idle(eng)

    asyncio.run(asyncio.wait_for(go(), 120))
