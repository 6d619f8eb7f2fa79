"""Soak: several clients send mixed traffic for a while (OpenAI and LightLLM, streaming and not,
some invalid) and leave at random moments: before the answer starts (queued or prefilling),
mid-stream, or by timing out. Afterwards the engine must hold nothing (every KV slot, table
slot and req_to_token row free), the event loop must be back to its tasks, and the process's
memory must not have grown past a bound.

`make test` runs it until its traffic has had each kind of leaving (a few seconds);
`make soak` for two minutes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import aiohttp
import pytest
from live_server import LiveServer, rss_bytes, sse_events

CLIENTS = 6
RSS_GROWTH_BOUND = 48 * 2**20  # after warm-up; a leak of ~100 KB per request passes this
                               # bound within the long soak (~400 requests)


def random_request(rng: random.Random) -> tuple[str, dict, bool]:
    """(path, body, stream) of one random request; about one in ten is invalid."""
    max_tokens = rng.randint(1, 24)
    common = {"max_tokens": max_tokens, "temperature": rng.choice([0, 0.7, 1.0]),
              "ignore_eos": rng.random() < 0.5}
    stream = rng.random() < 0.5
    kind = rng.choice(["completion", "chat", "generate", "bad"])
    if kind == "completion":
        body = {**common, "prompt": rng.choice(["Once upon a time", "1, 2, 3,",
                                                [rng.randrange(1000, 9000) for _ in range(40)]]),
                "n": rng.choice([1, 1, 2]), "stream": stream}
        if stream:  # stream_options without a stream is a 400
            body["stream_options"] = {"include_usage": rng.random() < 0.5}
        return "/v1/completions", body, stream
    if kind == "chat":
        body = {**common, "messages": [{"role": "user", "content": rng.choice(
            ["Hi!", "What is the capital of France?", "Write a haiku about rain."])}],
            "stream": stream, "logprobs": rng.random() < 0.2}
        return "/v1/chat/completions", body, stream
    if kind == "generate":
        body = {"inputs": rng.choice(["What is AI?", "Count:"]), "parameters": {
            "max_new_tokens": max_tokens, "do_sample": rng.random() < 0.5,
            "ignore_eos": common["ignore_eos"]}}
        return ("/generate_stream" if stream else "/generate"), body, stream
    return "/v1/completions", {"prompt": "x", "max_tokens": rng.choice([0, 10**6]),
                               "stream": stream}, stream


async def one_request(session: aiohttp.ClientSession, base: str, rng: random.Random,
                      tally: Counter) -> None:
    path, body, stream = random_request(rng)
    leave = rng.random()
    if leave < 0.2:  # gone before the answer starts: queued, prefilling, or mid-generation
        task = asyncio.ensure_future(session.post(base + path, json=body))
        await asyncio.sleep(rng.uniform(0, 0.5))
        task.cancel()
        try:
            (await task).close()
        except asyncio.CancelledError:
            pass
        tally["left before the answer"] += 1
        return
    async with session.post(base + path, json=body) as resp:
        if stream and resp.status == 200 and leave < 0.4:  # gone mid-stream
            for _ in range(rng.randint(1, 4)):
                await resp.content.readline()
            resp.close()
            tally["left mid-stream"] += 1
            return
        raw = await resp.read()
    tally[f"status {resp.status}"] += 1
    assert resp.status in (200, 400), raw
    if resp.status == 400:
        assert json.loads(raw)["error"]["param"] == "max_tokens"
    elif stream:
        events = sse_events(raw)
        # an error event has an "error" key (the generated text may well contain "error")
        errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
        assert not errors, errors
        if path.startswith("/v1/"):
            assert events[-1] == "[DONE]"
    else:
        assert "error" not in json.loads(raw)


def covered(tally: Counter) -> bool:
    """Whether the traffic so far holds what soak() asserts it had: answers, and clients
    that left mid-stream and before the answer."""
    return (tally["status 200"] > 10 and tally["left mid-stream"] > 0
            and tally["left before the answer"] > 0)


async def clients(server: LiveServer, seconds: float, seed: int,
                  until_covered: bool = False) -> Counter:
    """The tally of CLIENTS clients' traffic for `seconds`, or, with until_covered, until it
    is covered() (each client finishes the request it is in), `seconds` at the most."""
    tally: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and not (until_covered and covered(tally)):
                await one_request(session, server.base, rng, tally)

    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    return tally


def fault_in_kv_pool(server: LiveServer) -> None:
    """Make every page of the KV pool resident. On the CPU the pool comes zeroed from calloc
    (kv_pool._zeros): a slot's pages become resident when first written, and with the prefix
    cache keeping finished requests' KV, a long soak keeps writing slots never used before,
    so RSS grows towards the pool's size (377 MB here) without anything leaking. x * 1 leaves
    every value, cached ones included, as it was."""
    def touch():
        pool = server.engine.kv_pool
        for cache in (*pool.k_cache, *pool.v_cache):
            cache.mul_(1)
    server.call(touch)


def soak(server: LiveServer, seconds: float, seed: int, warm_up: float | None = None,
         until_covered: bool = False) -> None:
    """Mixed traffic for `seconds` (with until_covered: until it has had what is asserted
    below, `seconds` at the most) after `warm_up` seconds of it (a quarter of `seconds`, 10
    at the most, by default), then the checks of the module's docstring."""
    server.wait_idle()
    tasks_before = server.stats()["tasks"]
    if warm_up is None:
        warm_up = min(10.0, seconds / 4)
    asyncio.run(clients(server, warm_up, seed))  # warm-up: allocator pools
    server.wait_idle()
    fault_in_kv_pool(server)
    rss_before = rss_bytes()
    t0 = time.monotonic()
    tally = asyncio.run(clients(server, seconds, seed + 1, until_covered))
    took = time.monotonic() - t0
    stats = server.wait_idle(timeout=10)
    growth = rss_bytes() - rss_before
    print(f"soak {took:.0f}s: {dict(tally)}; RSS growth {growth / 2**20:.1f} MiB")

    assert covered(tally), dict(tally)
    assert stats["kv_used"] == stats["running"] == stats["waiting"] == stats["table_used"] == 0
    assert stats["free_rows"] == stats["rows"]
    # the handlers, streams and per-choice tasks of every request are gone
    deadline = time.monotonic() + 5
    while server.stats()["tasks"] > tasks_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.stats()["tasks"] <= tasks_before
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_soak_short(server):
    """Until the traffic has had more than ten answers and clients leaving mid-stream and
    before the answer (the clients' first four requests, with these seeds: 11 s on this
    loaded 2-core machine, where the fixed 15 s it ran for had 83 requests), 60 s at the
    most: on a slower machine it runs longer rather than failing for lack of them."""
    soak(server, 60, seed=1, warm_up=2.0, until_covered=True)


@pytest.mark.slow
def test_soak(server):
    soak(server, 120, seed=2)
