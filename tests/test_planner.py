"""The planner's steps (aiollm/engine/planner.py), seen through the Engine on a tiny random
Llama: a burst of prompts fills every step's prefill budget, the last prompt a step admits
starting with a first chunk, and the outputs are those of each prompt alone."""

from __future__ import annotations

import asyncio
import random

import pytest

from aiollm import Engine, SamplingParams
from conftest import run, tiny_llama

BUDGET = 64
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256, num_hidden_layers=2,
                      max_position_embeddings=512)


@pytest.fixture(scope="module")
def engine(loop, tiny):
    eng = Engine(tiny, load_format="dummy", kv_tokens=4096, max_prefill_tokens=BUDGET)
    run(loop, eng.start())
    yield eng
    run(loop, eng.stop())


def prompt(first: int, n: int, seed: int) -> list[int]:
    """n token ids starting with `first`: prompts with different first tokens share no
    prefix, so none waits for another's prefill to reuse it."""
    rng = random.Random(seed)
    return [first] + [rng.randrange(1, 256) for _ in range(n - 1)]


def record_steps(eng: Engine) -> list[tuple]:
    """Every planned step as (tokens, requests waiting after it, running, [(request id,
    prompt length, prefix_len, extend_len)])."""
    steps: list[tuple] = []
    plan = eng.planner.plan

    def spy():
        step = plan()
        if step is not None:
            steps.append((step.num_tokens, len(eng.planner.waiting), len(eng.planner.running),
                          [(r.rid, len(r.prompt_ids), pre, ext) for r, pre, ext
                           in zip(step.reqs, step.prefix_lens, step.extend_lens)]))
        return step

    eng.planner.plan = spy
    return steps


async def collect(streams) -> list[list[int]]:
    out = []
    for s in streams:
        tokens = []
        async for d in s:
            tokens += d.token_ids
        out.append(tokens)
    return out


def test_burst_fills_each_step_with_a_first_chunk_of_the_next_prompt(loop, engine):
    """Three streams decode when six 40-token prompts arrive at once. A step of 64 tokens
    takes the three decodes, one prompt whole and a first chunk of the next, whose rest
    comes first in the next step: no step leaves budget unused while a prompt waits (the
    whole-prompt rule admitted one prompt a step, 43 tokens). Greedy outputs are those of
    each prompt alone, prefilled in one step."""
    burst = [prompt(10 + i, 40, i) for i in range(6)]
    engine.flush_cache()
    alone = [run(loop, engine.generate(p, GREEDY)).token_ids for p in burst]
    engine.flush_cache()
    steps = record_steps(engine)
    long = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def go():
        streams = [engine.stream(prompt(100 + i, 10, 50 + i), long) for i in range(3)]
        first = [await s.__anext__() for s in streams]  # all three decode now
        assert all(d.token_ids for d in first)
        n = len(steps)
        outs = await collect([engine.stream(p, GREEDY) for p in burst])  # arrive together
        await collect(streams)
        return outs, n

    try:
        outs, n = run(loop, go())
    finally:
        del engine.planner.plan
    assert outs == alone
    burst_steps = steps[n:]
    waited = [s for s in burst_steps if s[1]]
    assert len(waited) >= 2, burst_steps
    assert all(tokens == BUDGET for tokens, *_ in waited), burst_steps
    # the first chunks: a prompt started with fewer tokens than it has, and its next
    # chunk (the next step's) starts where the first ended
    first_chunks = [(rid, ext) for *_, chunks in burst_steps for rid, n, pre, ext in chunks
                    if n == 40 and pre == 0 and ext < 40]
    assert len(first_chunks) >= 2, burst_steps
    for (*_, chunks), (*_, after) in zip(burst_steps, burst_steps[1:]):
        for rid, ext in first_chunks:
            if (rid, 40, 0, ext) in chunks:
                assert (rid, 40, ext, 40 - ext) in after, (chunks, after)
    assert engine.stats()["kv_used"] == 0


def test_cache_hit_candidate_takes_budget_for_its_new_tokens_only(loop, engine):
    """Three prompts arrive at an idle engine: A (30 new tokens), B (70, of which a cached
    50-token prefix) and C (30 new). B's 20 new tokens leave C 14 of the 64: all three start
    in one step, C with a first chunk. Outputs as each prompt's alone, with no hit."""
    prefix = prompt(200, 50, 7)
    a, b, c = prompt(201, 30, 8), prefix + prompt(202, 20, 9), prompt(203, 30, 10)
    engine.flush_cache()
    alone = [run(loop, engine.generate(p, GREEDY)).token_ids for p in (a, b, c)]
    engine.flush_cache()
    run(loop, engine.generate(prefix, SamplingParams(max_tokens=1)))  # now in the cache
    steps = record_steps(engine)
    try:
        outs = run(loop, collect([engine.stream(p, GREEDY) for p in (a, b, c)]))
    finally:
        del engine.planner.plan
    assert outs == alone
    first = [(n, pre, ext) for _, n, pre, ext in steps[0][3]]
    assert first == [(30, 0, 30), (70, 50, 20), (30, 0, 14)], steps[0]
    assert steps[0][0] == BUDGET
    assert engine.stats()["kv_used"] == 0


def test_scoring_request_whose_chunk_leaves_one_prompt_token_finishes(loop, engine):
    """A request that only scores its prompt (max_tokens 0, prompt logprobs; the API's echo
    with max_tokens 0) starts with a first chunk behind a 10-token prompt: 54 of its 55
    tokens. Its last prompt token was neither a prefill chunk (one token left reads as a
    decode) nor a decode (max_tokens 0 counted it as done): it stayed running, its stream
    waiting for ever. So did a prompt of the budget plus one, alone. Now both finish, with
    the scores of the prompt prefilled in one step."""
    scoring = SamplingParams(max_tokens=0, prompt_logprobs=0)
    short, scored = prompt(30, 10, 20), prompt(31, 55, 21)
    engine.flush_cache()
    alone = run(loop, engine.generate(scored, scoring))
    engine.flush_cache()
    steps = record_steps(engine)

    async def go():
        burst = [engine.generate(short, GREEDY), engine.generate(scored, scoring)]
        outs = await asyncio.wait_for(asyncio.gather(*burst), 30)
        longer = await asyncio.wait_for(engine.generate(prompt(32, BUDGET + 1, 22), scoring), 30)
        return outs[1], longer

    try:
        out, longer = run(loop, go())
    finally:
        del engine.planner.plan
    assert [(n, pre, ext) for _, n, pre, ext in steps[0][3]] == [(10, 0, 10), (55, 0, 54)]
    assert out.token_ids == [] and out.finish_reason == "length"
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == 55
    assert [lp.token_id for lp in out.prompt_logprobs[1:]] == scored[1:]
    assert [lp.logprob for lp in out.prompt_logprobs[1:]] == pytest.approx(
        [lp.logprob for lp in alone.prompt_logprobs[1:]], abs=1e-5)
    assert longer.finish_reason == "length" and len(longer.prompt_logprobs) == BUDGET + 1
    assert engine.stats()["kv_used"] == 0


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_conservative_admission_pauses_no_one_while_a_prompt_is_chunked(loop, tiny,
                                                                          prefix_cache):
    """The conservative policy never pauses a request, chunked prompts included. A
    10-token prompt asks for 30 tokens, a 200-token one behind it for 10: prefilled at
    once, the two would peak at 228 tokens, the pool's size. With 64 prefill tokens a step
    the long prompt takes 4 steps and ends 3 later, past the pool: the policy must count
    that (it waits until the short one is done) instead of pausing a request."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=228, max_prefill_tokens=BUDGET,
                     scheduler="conservative", prefix_cache=prefix_cache)
        await eng.start()
        try:
            outs = await asyncio.gather(
                eng.generate(prompt(1, 10, 0), SamplingParams(max_tokens=30, ignore_eos=True)),
                eng.generate(prompt(2, 200, 1), SamplingParams(max_tokens=10, ignore_eos=True)))
            return [len(o.token_ids) for o in outs], eng.stats()
        finally:
            await eng.stop()

    lengths, stats = run(loop, go())
    assert lengths == [30, 10]
    assert stats["evictions"] == 0
    assert stats["kv_used"] == 0


def test_conservative_admission_counts_cached_tokens_a_hit_locks(loop, tiny):
    """A prompt whose 100-token prefix sits unused in the prefix cache (evictable, so
    counted as free) arrives while another request decodes: its hit locks those 100 tokens
    without prefilling them. The conservative policy counted only the 5 new tokens: it
    admitted the request, the two then outgrew the 300-token pool and one was paused. It
    must count the tokens the hit takes from the free pool, and wait instead."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=300, max_prefill_tokens=BUDGET,
                     scheduler="conservative")
        await eng.start()
        try:
            cached = prompt(1, 100, 0)
            await eng.generate(cached, SamplingParams(max_tokens=1))  # now cached, unused
            first = eng.stream(prompt(2, 100, 1), SamplingParams(max_tokens=60, ignore_eos=True))
            await first.__anext__()  # decoding now
            hit = eng.generate(cached + prompt(3, 5, 2),
                               SamplingParams(max_tokens=90, ignore_eos=True))
            outs = await asyncio.gather(hit, collect([first]))
            return len(outs[0].token_ids), eng.stats()
        finally:
            await eng.stop()

    n, stats = run(loop, go())
    assert n == 90
    assert stats["evictions"] == 0
    assert stats["kv_used"] == 0


@pytest.mark.parametrize("scheduler", ["conservative", "past_future"])
def test_burst_on_an_unused_cached_prefix_counts_it_once(loop, tiny, scheduler):
    """Three prompts share a 40-token prefix that sits unused in the cache. Admitting the
    first locks it; the two behind it lock nothing more: the peak policies count it once,
    and all three start in one step, as with the pool to spare they should."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=400, max_prefill_tokens=BUDGET,
                     scheduler=scheduler)
        await eng.start()
        try:
            shared = prompt(1, 40, 0)
            await eng.generate(shared, SamplingParams(max_tokens=1))  # cached, unused
            steps = record_steps(eng)
            params = SamplingParams(max_tokens=100, ignore_eos=True)
            await collect([eng.stream(shared + prompt(2 + i, 5, i), params) for i in range(3)])
            return steps, eng.stats()
        finally:
            await eng.stop()

    steps, stats = run(loop, go())
    assert [(n, pre, ext) for _, n, pre, ext in steps[0][3]] == [(45, 40, 5)] * 3, steps[0]
    assert stats["evictions"] == 0


def test_queue_timeout_spares_a_request_paused_mid_prefill(loop, tiny):
    """The queue timeout is for a wait for admission. A long prompt admitted at once,
    paused mid-prefill (a running request's decodes took its slots), was failed with 503
    "waited more than 0.5s in the queue" once its arrival was that old: it had been
    served the whole time. It resumes now and finishes with its output alone's."""
    first = prompt(1, 30, 1)
    second = prompt(2, 68, 2)

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=100, max_prefill_tokens=16,
                     scheduler="aggressive", prefix_cache=False, queue_timeout=0.5)
        await eng.start()
        step = eng._step

        async def slow_step():
            # steps of 0.2 s until the pause: the prefill spans more than the queue timeout
            # (~0.8 s), but not the step that admits it: a loaded CPU's late forward plus
            # that 0.2 s reached the timeout before the admission
            stats = eng.stats()
            if stats["evictions"] == 0 and stats["waiting"] == 0:
                await asyncio.sleep(0.2)
            await step()

        eng._step = slow_step
        try:
            running = asyncio.ensure_future(eng.generate(first, SamplingParams(
                max_tokens=60, temperature=0, ignore_eos=True)))
            while eng.stats()["running"] == 0:
                await asyncio.sleep(0.01)
            late = await eng.generate(second, GREEDY)
            await running
            assert eng.stats()["evictions"] > 0  # it was paused
        finally:
            await eng.stop()
        async with Engine(tiny, load_format="dummy", kv_tokens=4096) as ref:
            assert late.token_ids == (await ref.generate(second, GREEDY)).token_ids

    run(loop, go())


def test_a_request_paused_mid_prefill_is_queued_once_in_the_metrics(loop, tiny):
    """vLLM's request_queue_time_seconds is each request's wait for its first admission. A
    request paused mid-prefill (before its first token) was observed again when resumed,
    with its arrival-to-resumption time (its first run included): a third observation of
    two requests."""
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=100, max_prefill_tokens=16,
                     scheduler="aggressive", prefix_cache=False)
        await eng.start()
        step = eng._step

        async def slow_step():  # steps of 0.05 s until the pause, as in the test above
            if eng.stats()["evictions"] == 0:
                await asyncio.sleep(0.05)
            await step()

        eng._step = slow_step
        try:
            running = asyncio.ensure_future(eng.generate(prompt(1, 30, 1), SamplingParams(
                max_tokens=60, temperature=0, ignore_eos=True)))
            while eng.stats()["running"] == 0:
                await asyncio.sleep(0.01)
            await eng.generate(prompt(2, 68, 2), GREEDY)
            await running
            assert eng.stats()["evictions"] > 0  # it was paused
            return eng.metrics.registry.get_sample_value("aiollm_queue_time_seconds_count")
        finally:
            await eng.stop()

    assert run(loop, go()) == 2
