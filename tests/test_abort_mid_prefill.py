"""A request whose client goes away while its long prompt is prefilled in chunks costs the
other requests at most the step already in flight: no step planned after its abort holds a
chunk of it. Seen on a tiny random Llama through the Engine (generate() cancelled, a
stream's consumer cancelled or the stream closed by another task; also a request paused
mid-prefill, cancelled while paused or after it resumed) and through HTTP (the client's
socket closed, streamed or not).

The step holding the chunk in flight when the client goes is kept running (the spy's
launch waits for the request's abort, as a long chunk on a loaded CPU would), so the test
does not depend on how fast the loop notices: any chunk of the request that a later step
computes is one too many."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Callable

import pytest

from aiollm import Engine, SamplingParams
from aiollm.engine.request import Phase, Request
from conftest import run, tiny_llama

BUDGET = 32  # prefill tokens a step: a 600-token prompt takes about 20 steps
PROMPT_LEN = 600
HOLD_AT = 4 * BUDGET  # the client goes while the first chunk from this position on runs
DECODE = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256, num_hidden_layers=2,
                      max_position_embeddings=1024)


def long_prompt(seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 256) for _ in range(PROMPT_LEN)]


class ChunkSpy:
    """The chunks (prefix_len, extend_len) that the engine's planned steps give the target
    request (is_target), in plan order. The first step whose chunk hold_when(prefix_len)
    accepts calls client_goes() (on the loop's thread, as it is planned) and its launch, on
    the model thread, waits until the target has ended (at most 10 s): that is the step in
    flight when the client goes. held_at: how many chunks were planned up to and with it."""

    def __init__(self, eng: Engine, is_target: Callable[[Request], bool],
                 hold_when: Callable[[int], bool], client_goes: Callable[[], None]):
        self.chunks: list[tuple[int, int]] = []
        self.held_at: int | None = None
        self.target: Request | None = None
        self.held_for_s = 0.0
        plan, launch = eng.planner.plan, eng.runner.launch
        holds: list[Request | None] = []  # per planned step: the request its launch waits for

        def spy_plan():
            step = plan()
            if step is None:
                return None
            hold = None
            for r, pre, ext in zip(step.reqs, step.prefix_lens, step.extend_lens):
                if is_target(r):
                    self.target = r
                    self.chunks.append((pre, ext))
                    if self.held_at is None and hold_when(pre):
                        self.held_at = len(self.chunks)
                        hold = r
                        client_goes()
            holds.append(hold)
            return step

        def spy_launch(inputs):
            hold = holds.pop(0)
            if hold is not None:
                t0 = time.monotonic()
                while not hold.done and time.monotonic() < t0 + 10:
                    time.sleep(0.002)
                self.held_for_s = time.monotonic() - t0
            return launch(inputs)

        eng.planner.plan, eng.runner.launch = spy_plan, spy_launch

    @property
    def after(self) -> list[tuple[int, int]]:
        """The target's chunks planned after the one in flight when its client went."""
        assert self.held_at is not None, f"the client never went: chunks {self.chunks}"
        return self.chunks[self.held_at:]


def assert_all_free(eng: Engine) -> None:
    s = eng.stats()
    assert (s["kv_used"], s["running"], s["waiting"], s["table_used"]) == (0, 0, 0, 0), s


@pytest.mark.parametrize("how", ["generate", "stream", "aclose"])
def test_a_request_whose_caller_goes_mid_prefill_gets_no_chunk_after_the_step_in_flight(
        loop, tiny, how):
    """generate()'s task cancelled, a stream's consumer task cancelled, or the stream closed
    by another task, while a chunk of the prompt past its first HOLD_AT tokens runs: the
    next step goes on without it,
    and a request decoding beside it finishes."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=4096, max_prefill_tokens=BUDGET,
                     device="cpu")
        await eng.start()
        try:
            other = asyncio.ensure_future(eng.generate([5, 6, 7], DECODE))
            while eng.stats()["running"] == 0:
                await asyncio.sleep(0.005)
            prompt = long_prompt()
            if how == "generate":
                task = asyncio.ensure_future(eng.generate(prompt, SamplingParams(max_tokens=4)))
                goes = task.cancel
            else:
                stream = eng.stream(prompt, SamplingParams(max_tokens=4))

                async def read():
                    return [d async for d in stream]
                task = asyncio.ensure_future(read())
                goes = task.cancel if how == "stream" else (
                    lambda: asyncio.ensure_future(stream.aclose()))
            loop_ = asyncio.get_running_loop()
            spy = ChunkSpy(eng, lambda r: len(r.prompt_ids) == PROMPT_LEN,
                           lambda pre: pre >= HOLD_AT, lambda: loop_.call_soon(goes))
            try:
                deltas = await task
            except asyncio.CancelledError:
                deltas = None
            out = await other
            await asyncio.sleep(0.05)  # a turn for the loop to free the last step's KV
            assert_all_free(eng)
            return spy, deltas, out
        finally:
            await eng.stop()

    spy, deltas, out = run(loop, go())
    assert spy.after == [], spy.chunks
    assert spy.chunks[spy.held_at - 1][0] >= HOLD_AT  # it went mid-prefill
    assert spy.target.finish_reason == "abort"
    assert spy.held_for_s < 5  # the abort came while its step ran
    if how == "aclose":  # the reader's stream ends with the abort's delta
        assert deltas is not None and deltas[-1].finish_reason == "abort"
    assert len(out.token_ids) == DECODE.max_tokens


@pytest.mark.parametrize("when", ["paused", "resumed"])
def test_a_request_paused_mid_prefill_gets_no_chunk_after_its_caller_goes(loop, tiny, when):
    """An 80-token prompt admitted beside a decoding request (a pool of 100 tokens,
    aggressive admission) is paused mid-prefill when the decodes take its KV slots, and
    resumed by recomputation once the other has finished. Its caller goes while it waits
    paused (no chunk of it runs after), or once it has resumed, while its third chunk since
    runs (only that chunk completes)."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=100, max_prefill_tokens=8,
                     scheduler="aggressive", prefix_cache=False, device="cpu")
        await eng.start()
        try:
            first = eng.stream(long_prompt(1)[:10], SamplingParams(
                max_tokens=89, temperature=0, ignore_eos=True))
            await anext(first)  # decoding now
            prompt = long_prompt(2)[:80]
            task = asyncio.ensure_future(eng.generate(prompt, SamplingParams(max_tokens=4)))
            loop_ = asyncio.get_running_loop()
            spy = ChunkSpy(eng, lambda r: len(r.prompt_ids) == 80,
                           lambda pre: when == "resumed" and eng.planner.evictions > 0
                           and pre >= 16,
                           lambda: loop_.call_soon(task.cancel))
            if when == "paused":
                while spy.target is None or spy.target.phase is not Phase.PAUSED:
                    assert not task.done(), spy.chunks
                    await asyncio.sleep(0)
                spy.held_at = len(spy.chunks)
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len([d async for d in first]) > 0
            await asyncio.sleep(0.05)
            assert eng.stats()["evictions"] > 0
            assert_all_free(eng)
            return spy
        finally:
            await eng.stop()

    spy = run(loop, go())
    assert spy.after == [], spy.chunks
    assert spy.target.finish_reason == "abort"
    # it was paused with part of its prompt prefilled (then ran again from its start)
    starts = [i for i, (pre, _) in enumerate(spy.chunks) if pre == 0]
    assert len(starts) == (2 if when == "resumed" else 1), spy.chunks
    paused_at = sum(ext for _, ext in spy.chunks[:starts[1] if when == "resumed" else None])
    assert 16 <= paused_at < 80, spy.chunks


@pytest.fixture(scope="module")
def tiny_server(tiny):
    from live_server import LiveServer

    srv = LiveServer(model=tiny, load_format="dummy", max_model_len=1024, kv_tokens=4096,
                     max_prefill_tokens=BUDGET, device="cpu").start()
    yield srv
    srv.close()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_mid_prefill_gets_no_chunk_after_the_step_in_flight(
        tiny_server, stream):
    """The client of a 600-token prompt closes its connection while a chunk past the
    prompt's first HOLD_AT tokens runs: aiohttp cancels its handler, which aborts the
    request before the next step."""
    went = threading.Event()
    spies: list[ChunkSpy] = []
    prompt = long_prompt(3 + stream)
    tiny_server.call(lambda: spies.append(ChunkSpy(tiny_server.engine,
                                                   lambda r: r.prompt_ids == prompt,
                                                   lambda pre: pre >= HOLD_AT, went.set)))
    try:
        body = json.dumps({"prompt": prompt, "max_tokens": 4, "stream": stream}).encode()
        host, port = tiny_server.base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert went.wait(60), "the prompt's chunks never reached the held one"
        tiny_server.wait_idle()
    finally:
        def unspy():
            del tiny_server.engine.planner.plan, tiny_server.engine.runner.launch
        tiny_server.call(unspy)
    spy = spies[0]
    assert spy.after == [], spy.chunks
    assert spy.target.finish_reason == "abort"
    assert spy.held_for_s < 5
