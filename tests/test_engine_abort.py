"""Engine.abort(request_id): a request ended by the id its caller gave it (vLLM's
AsyncLLM.abort, SGLang's abort_request), from another task than the one awaiting it, at every
stage (waiting for its grammar, queued, decoding), for generate, its n choices, stream and
chat; calls may share an id, as vLLM lets them. Each test checks that nothing stays held."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from aiollm import Engine, SamplingParams
from aiollm.errors import InvalidRequest, Overloaded
from aiollm.sampling_params import Constraint, GrammarSpec
from conftest import run, tiny_llama

LONG = SamplingParams(max_tokens=200, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(loop, tmp_path_factory):
    """A started tiny random Llama (load_format="dummy": its tokens are noise; these tests
    read finish reasons and counts) with two requests running at most, so a third queues."""
    path = tiny_llama(tmp_path_factory.mktemp("abort"), max_position_embeddings=1024)

    async def start():
        eng = Engine(path, load_format="dummy", kv_tokens=2048, max_running_requests=2)
        await eng.start()
        return eng

    eng = run(loop, start())
    yield eng
    run(loop, eng.stop())


def assert_idle(eng: Engine) -> None:
    """Nothing held by a request, and no request id still claimed."""
    s = eng.stats()
    assert (s["running"], s["waiting"], s["table_used"], s["kv_used"]) == (0, 0, 0, 0), s
    assert eng.req_to_token.n_free_rows == eng.req_to_token.rows
    assert not eng._requests
    assert eng.prefix_cache is None or eng.prefix_cache.tree.protected == 0
    assert not eng._request_ids._calls


async def until(cond, timeout: float = 30.0) -> None:
    """Wait (on the loop) until cond() is true."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def started(eng: Engine, coro) -> asyncio.Task:
    """`coro` in a task, once it has produced a token (its request is decoding)."""
    before = {r.rid for r in eng._requests.values()}
    task = asyncio.ensure_future(coro)
    await until(lambda: any(r.rid not in before and r.output_ids
                            for r in eng._requests.values()))
    return task


def test_generate_ended_by_its_request_id_returns_what_it_made(loop, engine):
    """Before: generate() took no request_id and the Engine had no abort(): a request could
    be ended only by cancelling the task that awaited it. Now the id's call returns its
    tokens so far, finish_reason "abort", under the caller's id; another call runs on."""
    async def scenario():
        other = asyncio.ensure_future(engine.generate("Hi", SamplingParams(max_tokens=8)))
        # third, as vLLM's AsyncLLM.generate takes it
        task = await started(engine, engine.generate("Hello", LONG, "job-1"))
        await engine.abort("job-1")
        out = await asyncio.wait_for(task, 30)
        assert (out.request_id, out.finish_reason) == ("job-1", "abort")
        assert 0 < out.completion_tokens < 200
        assert (await asyncio.wait_for(other, 30)).finish_reason == "length"
        await engine.abort(["job-1", "never-was"])  # ended or unknown: passed over
        assert_idle(engine)

    run(loop, scenario())


def test_all_n_choices_of_an_id_end_together(loop, engine):
    async def scenario():
        task = await started(engine, engine.generate(
            "Hello", SamplingParams(max_tokens=200, ignore_eos=True, n=3, seed=1),
            request_id="three"))
        await engine.abort(["three"])
        out = await asyncio.wait_for(task, 30)
        assert [c.finish_reason for c in out.outputs] == ["abort"] * 3
        assert out.request_id == "three"
        assert_idle(engine)

    run(loop, scenario())


def test_a_queued_request_aborted_by_id_leaves_the_queue(loop, engine):
    """max_running_requests 2: the third request waits; aborted there it ends with no
    token and the two running go on."""
    async def scenario():
        running = [await started(engine, engine.generate("Hi", LONG)) for _ in range(2)]
        queued = asyncio.ensure_future(engine.generate("Hello", LONG, request_id="q"))
        await until(lambda: engine.stats()["waiting"] == 1)
        await engine.abort("q")
        out = await asyncio.wait_for(queued, 30)
        assert (out.finish_reason, out.completion_tokens) == ("abort", 0)
        for t in running:
            assert (await asyncio.wait_for(t, 60)).finish_reason == "length"
        assert_idle(engine)

    run(loop, scenario())


def test_a_stream_aborted_by_id_ends_with_an_abort_delta(loop, engine):
    async def scenario():
        stream = engine.stream("Hello", LONG, request_id="s")
        deltas = [await anext(stream)]
        await engine.abort("s")
        deltas += [d async for d in stream]
        assert deltas[-1].finish_reason == "abort"
        assert deltas[-1].completion_tokens < 200
        assert_idle(engine)
        # the id, its request ended, is free again
        out = await engine.chat([{"role": "user", "content": "Hi"}],
                                SamplingParams(max_tokens=2), request_id="s")
        assert (out.request_id, out.completion_tokens) == ("s", 2)
        assert_idle(engine)

    run(loop, scenario())


@contextlib.contextmanager
def held_compiles(eng: Engine, gate: threading.Event):
    """The engine's grammar compilations held (off the loop) until `gate` is set."""
    compile_ = eng.grammars.compile

    async def held(spec):
        await asyncio.to_thread(gate.wait, 30)
        return await compile_(spec)

    eng.grammars.compile = held
    try:
        yield
    finally:
        gate.set()
        eng.grammars.compile = compile_


def test_an_abort_before_submission_ends_the_request_as_it_is_submitted(loop, engine):
    """A call aborted while its grammar compiles (off the loop), before its request
    exists, is not submitted to run: it ends with "abort" as it is."""
    async def scenario():
        gate = threading.Event()
        with held_compiles(engine, gate):
            grammar = SamplingParams(max_tokens=50, constraint=Constraint(
                GrammarSpec("regex", "[ab]+x")))
            task = asyncio.ensure_future(engine.generate("Hello", grammar, request_id="g"))
            stream = engine.stream("Hello", grammar, "g")
            await asyncio.sleep(0.05)
            assert not engine._requests
            await engine.abort("g")
            gate.set()
            out = await asyncio.wait_for(task, 30)
            deltas = [d async for d in stream]
        assert (out.finish_reason, out.completion_tokens) == ("abort", 0)
        assert [(d.finish_reason, d.completion_tokens) for d in deltas] == [("abort", 0)]
        assert_idle(engine)

    run(loop, scenario())


def test_a_call_aborted_before_submission_is_not_refused_by_a_full_queue(loop, engine,
                                                                         monkeypatch):
    """Before: a call aborted while its grammar compiled raised Overloaded when the waiting
    queue was full at its submission, where an abort promises finish_reason "abort" (and
    its refusal was logged): its request ends as it is submitted and never waits."""
    monkeypatch.setattr(engine.config, "max_waiting_requests", 1)

    async def scenario():
        gate = threading.Event()
        grammar = SamplingParams(max_tokens=50, constraint=Constraint(
            GrammarSpec("regex", "[cd]+x")))
        with held_compiles(engine, gate):
            task = asyncio.ensure_future(engine.generate("Hello", grammar, request_id="full"))
            stream = engine.stream("Hello", grammar, "full")
            running = [await started(engine, engine.generate("Hi", LONG)) for _ in range(2)]
            queued = asyncio.ensure_future(engine.generate("Hello", LONG))
            await until(lambda: engine.stats()["waiting"] == 1)
            with pytest.raises(Overloaded):  # the queue is full
                await engine.generate("Hi", SamplingParams(max_tokens=2))
            await engine.abort("full")
            gate.set()
            out = await asyncio.wait_for(task, 30)
            deltas = [d async for d in stream]
        assert (out.finish_reason, out.completion_tokens) == ("abort", 0)
        assert [(d.finish_reason, d.completion_tokens) for d in deltas] == [("abort", 0)]
        for t in running + [queued]:
            t.cancel()
        await asyncio.gather(*running, queued, return_exceptions=True)
        assert_idle(engine)

    run(loop, scenario())


def test_n_choices_waiting_for_room_end_at_their_abort(loop, engine, monkeypatch):
    """Choices wait for a place (generate's n > 1, as generate_batch's prompts) while the
    table and the queue are full. Before: an abort of their id ended them only once
    unrelated requests had ended and freed places; now at once, the places untouched."""
    async def scenario():
        monkeypatch.setattr(engine, "_batch_room", room := asyncio.Semaphore(2))
        long = SamplingParams(max_tokens=1000, ignore_eos=True, n=2, seed=4)
        busy = asyncio.ensure_future(engine.generate("Hi", long))
        await until(lambda: room.locked())
        task = asyncio.ensure_future(engine.generate(
            "Hello", SamplingParams(max_tokens=5, n=2, seed=5), request_id="room"))
        await asyncio.sleep(0.05)
        await engine.abort("room")
        out = await asyncio.wait_for(task, 30)
        assert [(c.finish_reason, len(c.token_ids)) for c in out.outputs] == [
            ("abort", 0)] * 2
        assert not busy.done() and room.locked()  # the places stay the busy call's
        gone = asyncio.ensure_future(engine.generate(  # cancelled while it waits: takes none
            "Hello", SamplingParams(max_tokens=5, n=2, seed=6), request_id="gone"))
        await asyncio.sleep(0.05)
        gone.cancel()
        busy.cancel()
        await asyncio.gather(busy, gone, return_exceptions=True)
        assert room._value == 2
        assert_idle(engine)

    run(loop, scenario())


def test_calls_sharing_an_id_end_together_and_a_bad_id_is_named(loop, engine):
    """vLLM makes each request's own id unique and aborts every request of a caller's id:
    a second call under an id in use runs, and one abort ends both. A bad id is an
    InvalidRequest naming it (and an abort refused so aborts nothing)."""
    async def scenario():
        first = await started(engine, engine.generate("Hello", LONG, request_id="dup"))
        stream = engine.stream("Hi", LONG, "dup")
        for bad in ("", 7):
            with pytest.raises(InvalidRequest, match="request_id must be a non-empty string"
                               ) as e:
                await engine.generate("Hi", SamplingParams(max_tokens=2), request_id=bad)
            assert e.value.param == "request_id"
        with pytest.raises(InvalidRequest, match=r"request_id\[1\] must be a string, got 3"):
            await engine.abort(["dup", 3])
        for bad in (5, b"dup"):  # (bytes: was "request_id[0] must be a string, got 100")
            with pytest.raises(InvalidRequest, match="request_id must be a string or an"):
                await engine.abort(bad)
        assert not first.done()  # a refused abort aborted nothing
        await engine.abort("dup")
        assert (await asyncio.wait_for(first, 30)).finish_reason == "abort"
        assert [d async for d in stream][-1].finish_reason == "abort"
        assert_idle(engine)

    run(loop, scenario())


def test_a_stream_dropped_before_its_grammar_compiled_frees_its_id(loop, engine):
    """A stream closed in the turn it was made never runs its submission (nor the code
    that forgets its id): its id is dropped all the same once many more were given."""
    async def scenario():
        grammar = SamplingParams(max_tokens=5, constraint=Constraint(
            GrammarSpec("regex", "(yes|no)[0-9]z")))
        for i in range(200):
            stream = engine.stream("Hi", grammar, request_id=f"later-{i}")
            await stream.aclose()
        assert len(engine._request_ids._calls) < 70
        out = await engine.generate("Hi", SamplingParams(max_tokens=2), request_id="x")
        assert out.completion_tokens == 2
        await asyncio.sleep(0.05)
        for i in range(200):  # an abort of one of them finds it ended
            await engine.abort(f"later-{i}")
        assert_idle(engine)

    run(loop, scenario())


def test_streams_sharing_an_id_dropped_before_their_grammar_compiled_are_swept(loop, engine):
    """Before: the sweep counted ids, not calls: streams under one id (an application's
    fixed id), each closed before its grammar compiled, piled up under it without end."""
    async def scenario():
        grammar = SamplingParams(max_tokens=5, constraint=Constraint(
            GrammarSpec("regex", "(si|non)[0-9]w")))
        for _ in range(200):
            stream = engine.stream("Hi", grammar, request_id="fixed")
            await stream.aclose()
        assert len(engine._request_ids._calls["fixed"]) < 70
        await engine.abort("fixed")  # finds them all ended
        assert_idle(engine)

    run(loop, scenario())


def test_abort_is_a_usage_error_before_start_and_from_another_loop(loop, engine):
    """As the engine's other calls: before start() it says to start the engine; from
    another event loop (another thread's) it changes nothing under the running one."""
    with pytest.raises(RuntimeError, match="not started: use `async with Engine"):
        asyncio.run(Engine(None).abort("a"))

    async def scenario():
        task = await started(engine, engine.generate("Hello", LONG, request_id="here"))
        errors = []

        def other_thread():
            try:
                asyncio.run(engine.abort("here"))
            except RuntimeError as e:
                errors.append(e)

        await asyncio.to_thread(other_thread)
        assert len(errors) == 1 and "another event loop" in str(errors[0])
        assert not task.done()
        await engine.abort("here")
        assert (await asyncio.wait_for(task, 30)).finish_reason == "abort"
        assert_idle(engine)

    run(loop, scenario())


def test_a_call_from_another_loop_leaves_the_id_table_alone(loop, engine, monkeypatch):
    """The id table is the engine loop's (a sweep there rebuilds it): a call under an id
    from another thread's event loop raises the usage error before it claims the id. Before:
    it claimed it on that thread and held it while its prompt tokenized (generate) or its
    conversation rendered (chat), refused only at submission: two threads changed one
    table at once."""
    for name in ("_prompt_ids", "_chat_ids"):  # each held where the other thread runs it
        def held(*args, _tokenize=getattr(engine, name)):
            tokenizing.set()
            gate.wait(30)
            return _tokenize(*args)

        monkeypatch.setattr(engine, name, held)
    calls = (lambda: engine.generate("Hi", SamplingParams(max_tokens=2), "there"),
             lambda: engine.chat([{"role": "user", "content": "Hi"}], request_id="there"))
    for call in calls:
        gate, tokenizing, errors = threading.Event(), threading.Event(), []

        def other_thread():
            try:
                asyncio.run(call())
            except RuntimeError as e:
                errors.append(str(e))

        async def scenario():
            thread = threading.Thread(target=other_thread)
            thread.start()
            try:
                await until(lambda: tokenizing.is_set() or not thread.is_alive())
                assert "there" not in engine._request_ids._calls
            finally:
                gate.set()
                await asyncio.to_thread(thread.join, 30)
            assert len(errors) == 1 and "another event loop" in errors[0], errors
            assert_idle(engine)

        run(loop, scenario())
