"""Cache salts (vLLM's cache_salt; aiollm/engine/cache_salt.py, engine/prefix_cache.py): a
request reuses only cached KV that requests of its own salt computed (or of none, without
one), through the tree, the Engine API, prompt dicts and HTTP; bad salts are refused naming
the field; nothing leaks across salts (the invariants of test_prefix_cache after every step
of mixed traffic, and an empty pool after a flush)."""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest
from live_server import http, sse_events
from test_prefix_cache import assert_idle_and_flush, check_every_step

from aiollm import Engine, SamplingParams
from aiollm.engine.prefix_cache import RadixTree
from aiollm.errors import InvalidRequest
from conftest import run as run_with_timeout, tiny_llama

ONE = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)


def run(loop, coro):
    return run_with_timeout(loop, coro, 120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama (the default tokenizer's vocabulary, for chat): what the cache
    reuses, not what the model says, is tested."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2,
                      max_position_embeddings=512)


def test_tree_paths_of_one_salt_are_not_matched_by_another():
    t = RadixTree()
    a = np.arange(10, dtype=np.int32)
    t.insert(t.root, a, np.arange(100, 110), "A")
    assert t.match(a, salt="B")[1] == 0 and t.match(a)[1] == 0
    node, n, slots = t.match(a[:4], salt="A")  # splits A's edge: its halves stay A's
    assert n == 4 and slots.tolist() == [100, 101, 102, 103]
    assert t.match(a)[1] == t.match(a, salt="B")[1] == 0 and t.match(a, salt="A")[1] == 10
    # the same tokens unsalted and under B are paths of their own, with their own slots
    assert t.insert(t.root, a, np.arange(200, 210))[1] == 0
    assert t.insert(t.root, a[:6], np.arange(300, 306), "B")[1] == 0
    assert t.match(a)[2].tolist() == list(range(200, 210))
    assert t.match(a, salt="B")[2].tolist() == list(range(300, 306))
    assert t.insert(node, a[4:], np.arange(400, 406), "A")[1] == 6  # A's own: duplicates
    assert t.size == 26 and t.evictable == 26
    t.lock(node)  # A's first 4 tokens are in use: everything else goes
    freed = np.concatenate(t.evict(100))
    assert sorted(freed.tolist()) == [*range(104, 110), *range(200, 210), *range(300, 306)]
    assert t.size == 4 and t.protected == 4
    t.unlock(node)
    assert np.concatenate(t.evict(100)).tolist() == [100, 101, 102, 103] and t.size == 0
    assert not t.root.children


def test_engine_shares_kv_only_within_a_salt(loop, tiny):
    prompt = [(7 * i) % 250 + 1 for i in range(40)]

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=512, max_prefill_tokens=64)
        await eng.start()
        try:
            hits = []
            for salt in ["A", "B", "A", None, None, "B"]:
                hits.append((await eng.generate(prompt, ONE, cache_salt=salt)).cached_tokens)
            assert hits == [0, 0, 39, 0, 39, 39]
            # a prompt dict's salt, as vLLM's LLM.generate takes it (a batch, and alone)
            outs = await eng.generate_batch([{"prompt_token_ids": prompt, "cache_salt": "C"},
                                             {"prompt_token_ids": prompt, "cache_salt": "A"}],
                                            ONE, progress=False)
            assert [o.cached_tokens for o in outs] == [0, 39]
            out = await eng.generate({"prompt_token_ids": prompt, "cache_salt": "C"}, ONE)
            assert out.cached_tokens == 39
            # stream and chat take the keyword too
            async for d in eng.stream(prompt, ONE, cache_salt="D"):
                assert d.cached_tokens == 0
            chat = [{"role": "user", "content": "Hello there, how are you today?"}]
            first = await eng.chat(chat, ONE, cache_salt="E")
            assert first.cached_tokens == 0
            assert (await eng.chat(chat, ONE, cache_salt="F")).cached_tokens == 0
            again = await eng.chat(chat, ONE, cache_salt="E")
            assert again.cached_tokens == first.prompt_tokens - 1
            assert_idle_and_flush(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_no_wait_for_another_salts_prefill(loop, tiny):
    """A request whose prompt another request is prefilling waits for its chunks to reuse
    them, but not when their salts differ: it would reuse nothing, and its wait would tell
    its tenant that someone prefills that prompt now. So B is admitted while A prefills."""
    long = [(3 * i) % 200 + 5 for i in range(300)]

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=1024, max_prefill_tokens=256)
        await eng.start()
        step, together = eng._step, []

        async def watched_step():
            await step()
            together.append(len(eng.planner.running))

        eng._step = watched_step
        try:
            for salts, overlap in [(("A", "B"), True), ((None, "B"), True), (("A", "A"), False)]:
                together.clear()
                outs = await asyncio.gather(*(eng.generate(long, ONE, cache_salt=s)
                                              for s in salts))
                assert max(together) == (2 if overlap else 1)  # admitted together
                assert [o.cached_tokens for o in outs] == [0, 0 if overlap else 299]
                assert_idle_and_flush(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_bad_salts_are_refused_naming_the_field(loop, tiny):
    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=256)
        await eng.start()
        try:
            for bad in ["", 5, b"salt", ["a"]]:
                with pytest.raises(InvalidRequest, match="cache_salt must be a non-empty") as e:
                    await eng.generate([1, 2, 3], ONE, cache_salt=bad)
                assert e.value.param == "cache_salt"
            with pytest.raises(InvalidRequest) as e:
                eng.stream([1, 2, 3], ONE, cache_salt=7)
            assert e.value.param == "cache_salt" and "int 7" in str(e.value)
            with pytest.raises(InvalidRequest) as e:
                await eng.chat([{"role": "user", "content": "hi"}], ONE, cache_salt="")
            assert e.value.param == "cache_salt"
            with pytest.raises(InvalidRequest) as e:
                await eng.generate_batch([[1, 2], {"prompt_token_ids": [1, 2], "cache_salt": 3}],
                                         ONE, progress=False)
            assert e.value.param == "prompts[1].cache_salt"
            with pytest.raises(InvalidRequest) as e:
                await eng.generate({"prompt": "hi", "cache_salt": "a"}, ONE, cache_salt="b")
            assert e.value.param == "cache_salt"
            assert eng.table.n_free == eng.table.capacity and eng.kv_pool.n_used == 0
        finally:
            await eng.stop()

    run(loop, go())


def test_mixed_salts_keep_the_invariants_after_every_step(loop, tiny):
    """Shared prefixes under three salts (and none) on a pool that must evict and pause:
    the tree's counts and every KV slot's owner agree after each step, and a flush at the
    end leaves the pool empty."""
    rng = random.Random(5)
    prefixes = [[rng.randrange(256) for _ in range(rng.randrange(20, 90))] for _ in range(3)]

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=300, max_prefill_tokens=48,
                     max_running_requests=6)
        await eng.start()
        steps = check_every_step(eng)

        async def one():
            await asyncio.sleep(rng.random() * 0.3)
            p = rng.choice(prefixes) + [rng.randrange(256) for _ in range(rng.randrange(0, 20))]
            params = SamplingParams(max_tokens=rng.randrange(1, 12), temperature=0,
                                    ignore_eos=True)
            return await eng.generate(p, params, cache_salt=rng.choice([None, "x", "y", "z"]))

        try:
            await asyncio.gather(*(one() for _ in range(24)))
            assert steps[0] > 10
            assert eng.prefix_cache.hit > 0 and eng.prefix_cache.evicted > 0
            assert_idle_and_flush(eng)
        finally:
            await eng.stop()

    run(loop, go())


def test_http_cache_salt(server):
    system = "You are a terse assistant who answers in one word, salted. " * 6
    comp = {"prompt": system, "max_tokens": 1, "temperature": 0}

    def cached(path: str, body: dict) -> int:
        st, _, out = http(server, "POST", path, json=body)
        assert st == 200, out
        usage = json.loads(out)["usage"]
        return usage["prompt_tokens_details"]["cached_tokens"] if usage.get(
            "prompt_tokens_details") else 0

    salt = f"tenant-{random.random()}"  # the shared server's cache holds other tests' KV
    assert cached("/v1/completions", {**comp, "cache_salt": salt}) == 0
    assert cached("/v1/completions", {**comp, "cache_salt": salt + "2"}) == 0
    assert cached("/v1/completions", {**comp, "cache_salt": salt}) > 0
    assert cached("/v1/completions", comp) == 0
    assert cached("/v1/completions", comp) > 0
    chat = {"messages": [{"role": "user", "content": system}], "max_tokens": 1,
            "temperature": 0, "cache_salt": salt + "c"}
    assert cached("/v1/chat/completions", chat) == 0
    assert cached("/v1/chat/completions", {**chat, "cache_salt": salt + "d"}) == 0
    st, _, body = http(server, "POST", "/v1/chat/completions",
                       json={**chat, "stream": True, "stream_options": {"include_usage": True}})
    usage = json.loads(sse_events(body)[-2])["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    for path, body in [("/v1/completions", comp), ("/v1/chat/completions", chat)]:
        for bad in [123, "", ["a"]]:
            st, _, out = http(server, "POST", path, json={**body, "cache_salt": bad})
            assert st == 400, out
            err = json.loads(out)["error"]
            assert err["param"] == "cache_salt" and "cache_salt" in err["message"]
    assert cached("/v1/completions", {**comp, "cache_salt": None}) > 0  # null: no salt
    server.wait_idle()
    http(server, "POST", "/flush_cache")
    assert server.call(lambda: server.engine.kv_pool.n_used) == 0


def test_llm_generate_takes_a_prompt_dicts_salt(tiny):
    """vLLM's LLM.generate takes cache_salt in a prompt dict (TextPrompt, TokensPrompt)."""
    from aiollm import LLM

    llm = LLM(tiny, load_format="dummy", kv_tokens=256)
    try:
        prompt = "The quick brown fox jumps over the lazy dog, twice over."
        hits = [llm.generate({"prompt": prompt, "cache_salt": s}, ONE, use_tqdm=False)[0]
                .num_cached_tokens for s in ["a", "b", "a"]]
        assert hits[:2] == [0, 0] and hits[2] > 0
        with pytest.raises(InvalidRequest) as e:
            llm.generate([{"prompt": prompt, "cache_salt": ""}], ONE, use_tqdm=False)
        assert e.value.param == "prompts[0].cache_salt"
    finally:
        llm.close()


@pytest.mark.parametrize("body, param", [
    (b'{"inputs": "x", "cache_salt": "tenant-1"}', "cache_salt"),
    (b'{"inputs": "x", "parameters": {"cache_salt": "tenant-1"}}', "parameters.cache_salt"),
    (b'{"inputs": "x", "parameters": {"cache_salt": "none"}}', "parameters.cache_salt"),
])
def test_lightllm_generate_refuses_a_salt(body, param):
    """LightLLM's /generate and /generate_stream ignored a cache_salt (an unknown field):
    a tenant whose gateway salts every body got no isolation there, silently. It is
    refused, naming where it was sent; null is no salt, as on the OpenAI endpoints."""
    import msgspec

    from aiollm.api.generate_request import GenerateRequest

    with pytest.raises(InvalidRequest) as e:
        msgspec.json.decode(body, type=GenerateRequest).check_unserved()
    assert e.value.param == param and "/v1/completions" in str(e.value)
    for ok in (b'{"inputs": "x", "cache_salt": null}',
               b'{"inputs": "x", "parameters": {"cache_salt": null}}'):
        msgspec.json.decode(ok, type=GenerateRequest).check_unserved()
