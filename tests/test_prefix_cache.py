"""The prefix cache (aiollm/engine/prefix_cache.py): greedy and seeded outputs are the same
with the cache on and off (conftest.sharp_tiny_llama, CPU, fp32: a cache that hands a
request one wrong key changes its tokens), a hit's prefill computes only the tokens past
it (a repeated 1,500-token system prompt; bench/prefix_cache_gpu.sh measures the speed this
gives on the GPU), hits are reported,
nothing leaks (a randomized run on a tiny random Llama checks the invariants after every
step), and the HTTP API reports cached tokens."""

from __future__ import annotations

import asyncio
import collections
import json
import random

import numpy as np
import pytest
from live_server import http, sse_events

from aiollm import Engine, SamplingParams
from aiollm.engine.prefix_cache import RadixTree
from aiollm.model import default_model_path
from conftest import load_bench, run as run_with_timeout, sharp_tiny_llama, tiny_llama

PROMPTS = load_bench("accuracy").PROMPTS
GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def run(loop, coro):
    return run_with_timeout(loop, coro, 600)


@pytest.fixture(scope="module")
def sharp(tmp_path_factory) -> dict:
    """Engine's model and tokenizer options for a sharp_tiny_llama of two layers and 2,048
    positions (text_ids fit) with the default tokenizer."""
    path = sharp_tiny_llama(tmp_path_factory.mktemp("sharp"), hidden_size=64,
                            intermediate_size=128, num_hidden_layers=2,
                            max_position_embeddings=2048)
    return dict(model=path, tokenizer=default_model_path())


@pytest.fixture(scope="module")
def engines(loop, sharp):
    """Cache on and off, small prefill chunks (a few hundred tokens span several)."""
    on = Engine(**sharp, kv_tokens=4096, max_prefill_tokens=128, prefix_cache=True)
    off = Engine(**sharp, kv_tokens=4096, max_prefill_tokens=128, prefix_cache=False)
    run(loop, on.start())
    run(loop, off.start())
    yield on, off
    run(loop, on.stop())
    run(loop, off.stop())


@pytest.fixture(scope="module")
def text_ids(engines):
    """A long text's token ids (about 1,700), for prefixes of any length."""
    return engines[0].tokenizer.encode(" ".join(PROMPTS) * 14)


def words(engines, text: str) -> list[int]:
    return engines[0].tokenizer.encode(text)


def check_invariants(eng: Engine) -> None:
    """The tree's counts and references agree with the running requests; every KV slot in
    use belongs to exactly one owner (the tree, or one request's private part)."""
    cache, tree, kv, r2t = eng.prefix_cache, eng.prefix_cache.tree, eng.kv_pool, eng.req_to_token
    nodes, stack = [], [tree.root]
    while stack:
        n = stack.pop()
        for c in n.children.values():
            assert c.parent is n and c.key.shape == c.slots.shape and c.key.shape[0] > 0
            nodes.append(c)
            stack.append(c)
    refs = collections.Counter()
    owned = [n.slots for n in nodes]
    for r in eng.planner.running:
        node, depth = r.cache_node, 0
        path = []
        while node is not tree.root:
            refs[id(node)] += 1
            depth += node.key.shape[0]
            path.append(node.slots)
            node = node.parent
        assert depth == r.cache_len <= r.kv_len
        if depth:
            assert np.array_equal(np.concatenate(path[::-1]), r2t.slots_of(r.row, 0, depth))
        owned.append(r2t.slots_of(r.row, r.cache_len, r.kv_len))
    for r in eng.planner.waiting:
        assert r.cache_node is None and r.cache_len == 0
    for n in nodes:
        assert n.ref == refs[id(n)]
    assert tree.size == sum(n.key.shape[0] for n in nodes)
    assert tree.evictable == sum(n.key.shape[0] for n in nodes if n.ref == 0)
    slots = np.concatenate(owned) if owned else np.zeros(0, np.int64)
    assert np.unique(slots).size == slots.size == kv.n_used, "a KV slot has two owners or none"
    assert eng.stats()["kv_used"] == kv.n_used - tree.evictable
    if not eng.planner.has_work():
        assert tree.protected == 0 and kv.n_used == cache.size


def check_every_step(eng: Engine) -> list[int]:
    """Wraps the engine's step so that check_invariants runs after each; returns a one-item
    list counting the steps taken."""
    step, steps = eng._step, [0]

    async def checked_step():
        await step()
        check_invariants(eng)
        steps[0] += 1

    eng._step = checked_step
    return steps


def assert_idle_and_flush(eng: Engine) -> None:
    check_invariants(eng)
    assert eng.stats()["kv_used"] == 0
    eng.flush_cache()
    assert eng.kv_pool.n_used == 0 and eng.prefix_cache.size == 0


async def both(engines, prompts, params=GREEDY):
    """The same prompts on both engines, all at once on each."""
    on, off = engines
    a = await asyncio.gather(*(on.generate(p, params) for p in prompts))
    b = await asyncio.gather(*(off.generate(p, params) for p in prompts))
    return a, b


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids


# -- the tree alone -------------------------------------------------------------------------

def test_radix_tree_match_insert_split_lock_evict():
    t = RadixTree()
    a = np.arange(10, dtype=np.int32)
    leaf, there = t.insert(t.root, a, np.arange(100, 110))
    assert there == 0 and t.evictable == 10
    node, n, slots = t.match(np.array([0, 1, 2, 3, 9], np.int32))
    assert n == 4 and slots.tolist() == [100, 101, 102, 103]  # split inside the edge
    t.lock(node)
    assert t.protected == 4 and t.evictable == 6
    # a branch off the middle keeps its own slots; the shared part is not duplicated
    b = np.array([0, 1, 2, 3, 50, 51], np.int32)
    end, there = t.insert(t.root, b, np.arange(200, 206))
    assert there == 4 and t.size == 12
    assert t.match(b)[2].tolist() == [100, 101, 102, 103, 204, 205]
    assert t.match(b, limit=5)[1] == 5
    # eviction takes unreferenced leaves, least recently used first, never a locked path
    freed = np.concatenate(t.evict(1))
    assert freed.tolist() == [104, 105, 106, 107, 108, 109]  # a's tail: used before b
    assert sorted(np.concatenate(t.evict(100)).tolist()) == [204, 205]  # split at 5
    assert t.size == 4 and t.protected == 4
    t.unlock(node)
    assert np.concatenate(t.evict(100)).tolist() == [100, 101, 102, 103] and t.size == 0


def test_match_host_cost_for_an_8k_prompt_is_measured_in_bench():
    """Speed is a bench matter (bench/prefix_cache.py); here only that it runs and is right
    on a deep tree of many branches."""
    bench = load_bench("prefix_cache")
    res = bench.measure(prompt_len=8192, branches=64, repeats=3)
    assert res["hit_tokens"] == 8191 and res["match_us"] > 0


# -- the same outputs with the cache on and off ---------------------------------------------

def test_exact_repeat_reuses_all_but_the_last_token(loop, engines, text_ids):
    on, _ = engines
    prompt = text_ids[:150]  # two prefill chunks
    a, b = run(loop, both(engines, [prompt]))
    again = run(loop, on.generate(prompt, GREEDY))
    assert again.cached_tokens == 149
    assert_same(a, b)
    assert again.token_ids == b[0].token_ids
    assert_idle_and_flush(on)


def test_shared_prefix_of_any_length(loop, engines, text_ids):
    """The cache holds a 200-token prompt computed in 128-token chunks; prompts branch off
    it at every kind of place: inside the first chunk, at a chunk's end, one past it, and
    one token before its end. They come at once (each shares with the others only what the
    cache holds, so each hit is its own)."""
    on, off = engines
    base = text_ids[:200]
    run(loop, on.generate(base, GREEDY))
    tail = words(engines, " Xylophones, zebras and quokkas walk into a bar.")
    prompts = [base[:k] + tail for k in (1, 57, 128, 129, 199)]
    outs_on, outs_off = run(loop, both(engines, prompts))
    assert [o.cached_tokens for o in outs_on] == [1, 57, 128, 129, 199]
    assert_same(outs_on, outs_off)
    assert_idle_and_flush(on)


def test_a_burst_of_one_prompt_scored_takes_one_step(loop, engines, text_ids):
    """Requests that ask for prompt logprobs compute their whole prompt (no cache hit can
    give those logits), so a burst of them with one prompt (n choices, echo with logprobs)
    starts together: each waited a step for the one before it to fill the cache it would
    not use, one prefill step per request (k of them took k steps)."""
    on, off = engines
    prompt = text_ids[:20]
    scored = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)
    prefills = []
    real = on.runner.prepare

    def spy(step, table):
        prefills.append(sum(n > 1 for n in step.extend_lens))
        return real(step, table)

    on.runner.prepare = spy
    try:
        a, b = run(loop, both(engines, [prompt] * 4, scored))
    finally:
        on.runner.prepare = real
    assert [n for n in prefills if n] == [4], prefills  # all four prefilled in one step
    assert [o.cached_tokens for o in a] == [0] * 4
    assert_same(a, b)
    assert [o.prompt_logprobs for o in a] == [b[0].prompt_logprobs] * 4
    assert_idle_and_flush(on)


def test_chunked_prefill_over_a_cached_prefix(loop, engines, text_ids):
    on, off = engines
    run(loop, on.generate(text_ids[:150], GREEDY))
    long = text_ids[:150] + text_ids[1000:1300]  # 300 new tokens: 3 chunks after the hit
    a = run(loop, on.generate(long, GREEDY))
    b = run(loop, off.generate(long, GREEDY))
    assert a.cached_tokens >= 150 and a.token_ids == b.token_ids  # (+ an output token, maybe)
    assert_idle_and_flush(on)


def test_burst_with_one_system_prompt_computes_it_once(loop, engines, text_ids):
    """n choices (or a burst of requests) with one prompt: the first computes it, the others
    wait a step and reuse it (all but the last token). Also: seeded sampling is the same."""
    on, off = engines
    system = text_ids[:140]  # two prefill chunks: the others wait more than one step
    prompts = [system + words(engines, f" Quokka {i}?") for i in range(3)] + [system] * 2
    a, b = run(loop, both(engines, prompts))
    assert_same(a, b)
    cached = sorted(o.cached_tokens for o in a)
    assert cached[0] == 0 and cached[1] >= len(system) - 1, cached
    seeded = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.95, seed=7)
    a, b = run(loop, both(engines, [system] * 2 + prompts[:1], seeded))
    assert all(o.cached_tokens >= len(system) - 1 for o in a)
    assert_same(a, b)
    assert_idle_and_flush(on)


def test_abort_mid_prefill_of_a_shared_prompt(loop, engines, text_ids):
    """One request leaves in the middle of its 400-token prefill; another with the same
    prompt runs on and gives the same tokens as with no cache."""
    on, off = engines
    prompt = text_ids[:400]

    async def go():
        first = on.stream(prompt, SamplingParams(max_tokens=50, temperature=0))
        task = asyncio.ensure_future(first.__anext__())
        while on.kv_pool.n_used < 200:  # two chunks planned
            await asyncio.sleep(0.01)
        other = asyncio.ensure_future(on.generate(prompt, GREEDY))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await first.aclose()
        return await other

    a = run(loop, go())
    b = run(loop, off.generate(prompt, GREEDY))
    assert a.token_ids == b.token_ids and a.cached_tokens >= 256
    assert_idle_and_flush(on)


@pytest.mark.slow  # a third engine; the randomized test below covers a tiny pool quickly
def test_tiny_pool_eviction_and_pauses_keep_outputs(loop, engines, text_ids, sharp):
    """A pool of 450 tokens under traffic that needs more: cached prefixes are evicted,
    running requests paused (their KV goes to the cache) and resumed; the tokens are the
    same as with a roomy pool and no cache."""
    _, off = engines
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = [text_ids[:120] + words(engines, f" Quokka number {i} says") for i in range(4)]
    prompts += [text_ids[300 + 40 * i:400 + 40 * i] for i in range(2)]
    ref = [run(loop, off.generate(p, params)) for p in prompts]

    async def tight():
        eng = Engine(**sharp, kv_tokens=450, max_prefill_tokens=128, scheduler="aggressive")
        await eng.start()
        try:
            first = await asyncio.gather(*(eng.generate(p, params) for p in prompts))
            again = await asyncio.gather(*(eng.generate(p, params) for p in prompts[::-1]))
            assert eng.stats()["evictions"] > 0 and eng.prefix_cache.evicted > 0
            assert_idle_and_flush(eng)
            return first, again[::-1]
        finally:
            await eng.stop()

    first, again = run(loop, tight())
    assert_same(first, ref)
    assert_same(again, ref)


def test_a_repeated_1500_token_system_prompt_is_a_hit_whose_prefill_computes_only_new_tokens(
        loop, engines, text_ids):
    """What a hit's speed comes from, checked exactly: a request whose prompt repeats a
    1,500-token system prompt under a new question finds it cached (all of it) and its
    prefill gives the model only the tokens past the hit, where the first request's gave
    it every token of its prompt. (The speed itself is measured on the GPU, where a timed
    assertion cannot flake: bench/prefix_cache_gpu.sh.)"""
    on, _ = engines
    system = text_ids[:1500]
    computed = []  # the tokens each step gives the model
    real = on.runner.prepare

    def spy(step, table):
        computed.append(step.num_tokens)
        return real(step, table)

    def prefill(question: str) -> tuple[int, int, int]:
        """(prompt tokens, cached tokens, tokens computed) of a one-token request."""
        prompt = system + words(engines, question)
        computed.clear()
        out = run(loop, on.generate(prompt, SamplingParams(max_tokens=1, temperature=0)))
        assert len(out.token_ids) == 1
        return len(prompt), out.cached_tokens, sum(computed)

    on.runner.prepare = spy
    try:
        first = prefill(" What is a quokka?")
        second = prefill(" Where do quokkas live?")
    finally:
        on.runner.prepare = real
    assert first[1] == 0 and first[2] == first[0], first  # all of it, in 128-token chunks
    assert second[1] >= 1499, second
    assert second[2] == second[0] - second[1], second  # only the tokens past the hit
    assert_idle_and_flush(on)


def test_a_hit_with_no_slot_left_for_its_new_tokens_waits(loop, tmp_path):
    """A full pool: a running request's KV, and the cached prefix of a waiting one (paused
    under the pressure). While the running request's last token is in flight it plans no
    decode, so the waiting one was admitted: its hit locked every free slot, it got no chunk,
    the planner paused it to make room and admitted it again, until RecursionError failed
    every request. It waits for the running request to finish now."""
    tiny_llama(tmp_path, vocab_size=256, num_hidden_layers=2, max_position_embeddings=512)
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    prefix = [(7 * i) % 150 + 1 for i in range(30)]
    first = [(11 * i) % 140 + 3 for i in range(50)]  # 70 tokens with its output
    second = prefix + [(5 * i) % 130 + 9 for i in range(10)]

    async def go():
        eng = Engine(str(tmp_path), load_format="dummy", kv_tokens=100, max_prefill_tokens=128)
        await eng.start()
        try:
            # the second request arrives once the first holds k slots: its pauses, and the
            # free slots left at the first's last step, depend on k
            for k in range(58, 68):
                await eng.generate(prefix, SamplingParams(max_tokens=1))  # cached
                running = asyncio.ensure_future(eng.generate(first, params))
                while eng.stats()["kv_used"] < k and not running.done():
                    await asyncio.sleep(0.001)
                late = await eng.generate(second, SamplingParams(max_tokens=1))
                assert len((await running).token_ids) == 20 and len(late.token_ids) == 1
                assert_idle_and_flush(eng)
            assert eng.stats()["evictions"] > 0
        finally:
            await eng.stop()

    run(loop, go())


# -- nothing leaks: a randomized run --------------------------------------------------------

def test_randomized_traffic_keeps_the_invariants_after_every_step(loop, tmp_path):
    tiny_llama(tmp_path, vocab_size=256, num_hidden_layers=2, max_position_embeddings=512)
    rng = random.Random(3)
    prefixes = [[rng.randrange(256) for _ in range(rng.randrange(10, 120))] for _ in range(4)]
    finished = []  # (prompt, params, tokens) of greedy requests that ran to the end

    async def go():
        eng = Engine(str(tmp_path), load_format="dummy", kv_tokens=400, max_prefill_tokens=48,
                     max_running_requests=8)
        await eng.start()
        steps = check_every_step(eng)

        async def one(i):
            # each request's own choices, whatever order the requests interleave in (one
            # shared generator gave another mix each run: 5 greedy ones finished in one)
            r = random.Random(1000 + i)
            await asyncio.sleep(r.random() * 0.5)
            p = r.choice(prefixes)[: r.randrange(1, 120)]
            p = p + [r.randrange(256) for _ in range(r.randrange(0, 30))] or [1]
            params = SamplingParams(max_tokens=r.randrange(1, 24), temperature=r.choice(
                [0, 1.0]), ignore_eos=r.random() < 0.8)
            leave_after = r.randrange(1, 12) if r.random() < 0.3 else None  # tokens
            stream = eng.stream(p, params)
            tokens = []
            async for d in stream:
                tokens += d.token_ids
                if leave_after is not None and len(tokens) >= leave_after:
                    break
                if d.finish_reason is not None and params.temperature == 0:
                    finished.append((p, params, tokens))
            await stream.aclose()

        try:
            await asyncio.gather(*(one(i) for i in range(30)))
            await asyncio.sleep(0.2)
            assert steps[0] > 20
            assert eng.prefix_cache.hit > 0 and eng.prefix_cache.evicted > 0
            assert_idle_and_flush(eng)
        finally:
            await eng.stop()
        # the greedy ones give the same tokens alone, on a roomy pool without the cache
        ref = Engine(str(tmp_path), load_format="dummy", kv_tokens=4096, prefix_cache=False)
        await ref.start()
        try:
            for p, params, tokens in finished:
                assert (await ref.generate(p, params)).token_ids == tokens
        finally:
            await ref.stop()

    run(loop, go())
    assert len(finished) >= 11  # the greedy requests that stay past their last token


# -- HTTP ------------------------------------------------------------------------------------

def test_http_usage_reports_cached_tokens(server):
    system = "You are a terse assistant who answers in one word. " * 8
    chat = {"messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "Capital of Italy?"}],
            "max_tokens": 3, "temperature": 0}
    st, _, body = http(server, "POST", "/v1/chat/completions", json=chat)
    assert st == 200
    st, _, body = http(server, "POST", "/v1/chat/completions",
                       json={**chat, "stream": True, "stream_options": {"include_usage": True}})
    usage = json.loads(sse_events(body)[-2])["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1

    comp = {"prompt": system, "max_tokens": 2, "temperature": 0}
    http(server, "POST", "/v1/completions", json=comp)
    st, _, body = http(server, "POST", "/v1/completions", json={**comp, "n": 2})
    usage = json.loads(body)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1

    for _ in range(2):
        st, _, body = http(server, "POST", "/generate",
                           json={"inputs": system, "parameters": {"max_new_tokens": 2}})
    out = json.loads(body)
    assert out["prompt_cache_len"] == out["prompt_tokens"] - 1

    st, _, body = http(server, "GET", "/metrics")
    text = body.decode()
    assert "aiollm_prefix_cache_hit_tokens_total" in text
    server.wait_idle()
    st, _, body = http(server, "POST", "/flush_cache")
    assert st == 200 and json.loads(body)["flushed_tokens"] > 0
    assert server.call(lambda: server.engine.kv_pool.n_used) == 0
