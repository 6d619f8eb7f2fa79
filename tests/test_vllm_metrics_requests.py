"""vLLM's families of a request as a whole and of its prompt's sources on /metrics: the n
choices of one prompt (each an engine request of its own here) measured once, as vLLM
measures its parent request (vllm:request_params_n, vllm:request_max_num_generation_tokens),
also for n 1, not when the client went away; each ended request's mean time per output
token and prompt tokens computed; prompt tokens by source; the waiting requests by reason
and the sleep state a vLLM deployment reads. A tiny random-weight model served in-process."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
# the letters model (a letter a token, a chat template within its vocabulary: it can chat)
from test_api_letters_vocab import model_dir  # noqa: F401
from test_vllm_metrics import NAME, families, serve_tiny, tiny, value  # noqa: F401

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams

LONG = {"max_tokens": 200, "ignore_eos": True, "stream": True}


def bounds(fams: dict, name: str) -> list[str]:
    return [s.labels["le"] for s in fams[name].samples if s.name == name + "_bucket"]


async def ended(client, reason: str, count: int) -> dict:
    """The families once `count` requests ended with `reason`."""
    for _ in range(200):
        fams = await families(client)
        if value(fams, "vllm:request_success_total", finished_reason=reason) == count:
            return fams
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} requests never ended with {reason}")


def test_n_and_the_longest_choice_are_measured_once_per_request(tiny):
    """Each prompt's n choices count once in vllm:request_params_n (n 1 too), with the most
    tokens one of them generated in vllm:request_max_num_generation_tokens, whether they
    ran as a completion (of one prompt or several), a stream or Engine.generate's n; a
    request whose client left (n 1 or 2) is not measured, as vLLM measures only the
    requests its engine ended. vLLM's bounds."""
    async def check(client, engine):
        three = await client.post("/v1/completions", json={
            "prompt": [4, 5], "n": 3, "max_tokens": 5, "ignore_eos": True})
        assert three.status == 200, await three.text()
        two = await client.post("/v1/completions", json={  # two prompts, n 2 each
            "prompt": [[5, 6, 7], [8, 9]], "n": 2, "max_tokens": 3, "ignore_eos": True})
        assert two.status == 200, await two.text()
        one = await client.post("/v1/completions", json={
            "prompt": [5, 6, 7], "max_tokens": 7, "ignore_eos": True})
        assert one.status == 200, await one.text()
        streamed = await client.post("/v1/completions", json={
            "prompt": [5, 6, 7], "n": 2, "max_tokens": 4, "ignore_eos": True, "stream": True})
        assert [line async for line in streamed.content if line.strip()][-1].strip() == (
            b"data: [DONE]")
        # sampled choices of different lengths (a third of the vocabulary stops them)
        out = await engine.generate([5, 6, 7], SamplingParams(
            n=3, seed=3, temperature=1.0, max_tokens=12, stop_token_ids=list(range(0, 256, 3))))
        lengths = [o.completion_tokens for o in (out, *out.other_choices)]
        assert len(set(lengths)) > 1, lengths
        # clients that leave: n 2 and n 1, mid-stream
        for n in (2, 1):
            gone = await client.post("/v1/completions", json={"prompt": [5, 6, 7], "n": n,
                                                              **LONG})
            await gone.content.readline()
            gone.close()
        fams = await ended(client, "abort", 3)
        assert value(fams, "vllm:request_params_n_count") == 1 + 2 + 1 + 1 + 1
        assert value(fams, "vllm:request_params_n_sum") == 3 + 2 * 2 + 1 + 2 + 3
        assert value(fams, "vllm:request_params_n_bucket", le="2.0") == 4
        assert bounds(fams, "vllm:request_params_n") == ["1.0", "2.0", "5.0", "10.0", "20.0",
                                                         "+Inf"]
        assert value(fams, "vllm:request_max_num_generation_tokens_count") == 6
        assert value(fams, "vllm:request_max_num_generation_tokens_sum") == (
            5 + 3 + 3 + 7 + 4 + max(lengths))
        assert bounds(fams, "vllm:request_max_num_generation_tokens") == [
            "1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "+Inf"]
        assert fams["vllm:request_params_n"].type == "histogram"
    serve_tiny(tiny, check)


def test_chat_and_lightllm_choices_are_measured_once(model_dir):
    """A chat's n choices (answered whole or streamed) and LightLLM's /generate n count once
    each in vllm:request_params_n."""
    async def main():
        engine = Engine(model_dir, load_format="dummy", kv_tokens=512)
        async with TestClient(TestServer(create_app(engine, served_model_name=[NAME]))) as c:
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                    "ignore_eos": True}
            whole = await c.post("/v1/chat/completions", json={**chat, "n": 3})
            assert whole.status == 200, await whole.text()
            streamed = await c.post("/v1/chat/completions", json={**chat, "n": 2,
                                                                  "stream": True})
            assert [x async for x in streamed.content if x.strip()][-1].strip() == (
                b"data: [DONE]")
            generated = await c.post("/generate", json={"inputs": "hi", "parameters": {
                "n": 2, "max_new_tokens": 3, "ignore_eos": True}})
            assert generated.status == 200, await generated.text()
            return await families(c)

    fams = asyncio.run(main())
    assert value(fams, "vllm:request_params_n_count") == 3
    assert value(fams, "vllm:request_params_n_sum") == 3 + 2 + 2
    assert value(fams, "vllm:request_max_num_generation_tokens_sum") == 3 * 3


def test_a_request_the_engine_failed_is_measured(tiny):
    """vLLM measures a request its engine ended with an error (its finished_reason "error"):
    n 1, and the tokens it generated (none)."""
    async def check(client, engine):
        model = engine.runner.model

        def broken(batch):
            raise RuntimeError("an illegal memory access was encountered (injected)")

        model.forward = broken
        try:
            failed = await client.post("/v1/completions", json={"prompt": [5, 6, 7],
                                                                "max_tokens": 4})
            assert failed.status == 500, await failed.text()
        finally:
            del model.forward
        fams = await families(client)
        assert value(fams, "vllm:request_success_total", finished_reason="error") == 1
        assert value(fams, "vllm:request_params_n_count") == 1
        assert value(fams, "vllm:request_max_num_generation_tokens_sum") == 0
    serve_tiny(tiny, check)


def test_time_per_output_token_and_prompt_tokens_by_source(tiny):
    """vllm:request_time_per_output_token_seconds: each ended request's decode time over
    its tokens after the first (none for a request of one token); the prompt tokens the
    prefix cache gave a request are vllm:prompt_tokens_by_source's local_cache_hit and
    vllm:prompt_tokens_cached, the rest local_compute (the sources add up to
    vllm:prompt_tokens), and vllm:request_prefill_kv_computed_tokens each request's
    computed ones."""
    async def check(client, engine):
        prompt = list(range(1, 40))
        for max_tokens in (4, 4, 1):  # the second and third find the first's prompt cached
            resp = await client.post("/v1/completions", json={
                "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True})
            assert resp.status == 200, await resp.text()
        fams = await families(client)
        kinds = {"vllm:request_time_per_output_token_seconds": "histogram",
                 "vllm:request_prefill_kv_computed_tokens": "histogram",
                 "vllm:prompt_tokens_by_source": "counter",
                 "vllm:prompt_tokens_cached": "counter"}
        assert {name: fams[name].type for name in kinds} == kinds
        assert value(fams, "vllm:request_time_per_output_token_seconds_count") == 2
        assert value(fams, "vllm:request_time_per_output_token_seconds_sum") == pytest.approx(
            value(fams, "vllm:request_decode_time_seconds_sum") / 3)
        hits = value(fams, "vllm:prefix_cache_hits_total")
        assert hits >= 2 * 30  # (the cache holds all but the prompt's last token)
        assert value(fams, "vllm:prompt_tokens_cached_total") == hits
        by_source = {s: value(fams, "vllm:prompt_tokens_by_source_total", source=s)
                     for s in ("local_compute", "local_cache_hit", "external_kv_transfer")}
        assert by_source == {"local_compute": 3 * 39 - hits, "local_cache_hit": hits,
                             "external_kv_transfer": 0}
        assert sum(by_source.values()) == value(fams, "vllm:prompt_tokens_total")
        assert value(fams, "vllm:request_prefill_kv_computed_tokens_count") == 3
        assert value(fams, "vllm:request_prefill_kv_computed_tokens_sum") == 3 * 39 - hits
    serve_tiny(tiny, check)


def test_waiting_by_reason_and_sleep_state(tiny):
    """vllm:num_requests_waiting_by_reason: every waiting request waits for capacity, none
    is deferred (their sum is vllm:num_requests_waiting); vllm:engine_sleep_state: awake."""
    async def check(client, engine):
        first = await client.post("/v1/completions", json={"prompt": [5, 6, 7], **LONG})
        await first.content.readline()  # running: the only request the engine admits
        queued = asyncio.ensure_future(client.post("/v1/completions", json={
            "prompt": [8, 9], **LONG}))
        for _ in range(200):
            fams = await families(client)
            if value(fams, "vllm:num_requests_waiting") == 1:
                break
            await asyncio.sleep(0.01)
        assert value(fams, "vllm:num_requests_waiting_by_reason", reason="capacity") == 1
        assert value(fams, "vllm:num_requests_waiting_by_reason", reason="deferred") == 0
        assert fams["vllm:num_requests_waiting_by_reason"].type == "gauge"
        states = {s: value(fams, "vllm:engine_sleep_state", sleep_state=s)
                  for s in ("awake", "weights_offloaded", "discard_all")}
        assert states == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
        queued.cancel()
        first.close()
        await ended(client, "abort", 2)
    serve_tiny(tiny, check, max_running_requests=1)
