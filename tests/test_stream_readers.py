"""Engine.stream()'s iterator read by more than one task at once: the second reader is told
at once (RuntimeError, as Python's async generators answer a second `anext()`), and the
first reads the whole stream. Two tasks reading one stream hung: the stream's single end
marker went to one of them and the other waited on the queue forever."""

from __future__ import annotations

import asyncio

import pytest

from aiollm import Engine, SamplingParams
from conftest import run


@pytest.fixture(scope="module")
def engine(loop):
    eng = Engine(None, kv_tokens=2048, max_model_len=512)
    loop.run_until_complete(eng.start())
    yield eng
    loop.run_until_complete(eng.stop())


def _all_free(engine: Engine) -> bool:
    s = engine.stats()
    return s["kv_used"] == s["running"] == s["waiting"] == s["table_used"] == 0


@pytest.mark.parametrize("chat", [False, True])
def test_a_second_reader_is_refused_and_the_first_reads_to_the_end(loop, engine, chat):
    params = SamplingParams(max_tokens=12, ignore_eos=True)

    async def go():
        stream = (engine.stream_chat([{"role": "user", "content": "Hi"}], params) if chat
                  else engine.stream("Hi", params))

        async def read():
            return [d async for d in stream]

        first = asyncio.ensure_future(read())
        await asyncio.sleep(0)  # the first reader waits for its first delta
        with pytest.raises(RuntimeError, match="already"):
            await read()
        return await asyncio.wait_for(first, 60)

    deltas = run(loop, go(), timeout=90)
    assert deltas[-1].finish_reason == "length"
    assert sum(len(d.token_ids) for d in deltas) == 12
    assert _all_free(engine), engine.stats()


def test_readers_one_after_another_are_served(loop, engine):
    """Reading a stream in turns (one task, then another once the first has its delta) is
    not concurrent: each read gets the next delta, and a read after the end stops."""
    async def go():
        stream = engine.stream("Hi", SamplingParams(max_tokens=6, ignore_eos=True))
        got = [await stream.__anext__()]
        got += await asyncio.ensure_future(_rest(stream))
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return got

    async def _rest(stream):
        return [d async for d in stream]

    deltas = run(loop, go(), timeout=90)
    assert sum(len(d.token_ids) for d in deltas) == 6 and deltas[-1].finish_reason == "length"
    assert _all_free(engine), engine.stats()


def test_a_stream_whose_last_reader_has_ended_ends_when_closed(loop, engine):
    """aclose() ends the stream at once unless another task is still reading it: whether a
    read after the close got the deltas queued meanwhile and the abort's, or the end,
    depended on whether the collector had freed the task that read last (held weakly),
    though that task had ended either way."""
    async def go():
        stream = engine.stream("Hi", SamplingParams(max_tokens=400, ignore_eos=True))
        reader = asyncio.ensure_future(stream.__anext__())  # reads one delta, then ends
        await reader
        await asyncio.sleep(0.2)  # more deltas are queued meanwhile
        await stream.aclose()
        return reader, [d async for d in stream]

    reader, after = run(loop, go(), timeout=90)
    assert after == [], [(len(d.token_ids), d.finish_reason) for d in after]
    assert _all_free(engine), engine.stats()
