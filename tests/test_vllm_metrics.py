"""/metrics as a deployment set up for vLLM reads it: its Grafana dashboard, a KEDA or HPA
autoscaler on vllm:num_requests_waiting, alerts on vllm:kv_cache_usage_perc. The families
must carry vLLM's names, types and labels (model_name: the served name, engine), and stay
right when requests are cancelled, fail, stream, or ask for n > 1 choices. A tiny
random-weight model served in-process."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from aiollm.api import create_app
from aiollm.engine import Engine
from conftest import tiny_llama

NAME = "served-name"
LABELS = {"model_name": NAME, "engine": "0"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256)


def serve_tiny(tiny: str, check, **engine_options):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512, **engine_options)
        app = create_app(engine, served_model_name=[NAME, "alias"])
        async with TestClient(TestServer(app)) as client:
            return await check(client, engine)
    return asyncio.run(main())


async def families(client) -> dict:
    """The scraped families by name, parsed as Prometheus parses them."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {f.name: f for f in text_string_to_metric_families(await resp.text())}


def value(fams: dict, sample: str, **labels: str) -> float:
    """The value of `sample` (a sample name) carrying LABELS and `labels`."""
    want = {**LABELS, **labels}
    for fam in fams.values():
        for s in fam.samples:
            if s.name == sample and s.labels == want:
                return s.value
    raise AssertionError(f"no sample {sample}{want}")


def test_vllm_families_have_vllms_names_types_and_labels(tiny):
    """Each family a vLLM dashboard or autoscaler reads is there, of vLLM's type, labelled
    with the served name (the first of --served-model-name) and engine "0"; every finish
    reason is a series from the start (a rate() over a missing series is no 0)."""
    kinds = {"vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
             "vllm:kv_cache_usage_perc": "gauge", "vllm:gpu_cache_usage_perc": "gauge",
             "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter",
             "vllm:request_success": "counter", "vllm:num_preemptions": "counter",
             "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter",
             "vllm:gpu_prefix_cache_queries": "counter", "vllm:gpu_prefix_cache_hits": "counter",
             "vllm:time_to_first_token_seconds": "histogram",
             "vllm:time_per_output_token_seconds": "histogram",
             "vllm:inter_token_latency_seconds": "histogram",
             "vllm:e2e_request_latency_seconds": "histogram",
             "vllm:request_queue_time_seconds": "histogram",
             "vllm:request_prompt_tokens": "histogram",
             "vllm:request_generation_tokens": "histogram",
             "vllm:request_prefill_time_seconds": "histogram",
             "vllm:request_decode_time_seconds": "histogram",
             "vllm:request_inference_time_seconds": "histogram",
             "vllm:time_per_prefill_token_request_seconds": "histogram",
             "vllm:request_params_max_tokens": "histogram",
             "vllm:iteration_tokens_total": "histogram",
             "vllm:cache_config_info": "gauge"}

    async def check(client, engine):
        fams = await families(client)
        for name, kind in kinds.items():
            assert name in fams, name
            assert fams[name].type == kind, (name, fams[name].type)
        for reason in ("stop", "length", "abort", "error"):
            assert value(fams, "vllm:request_success_total", finished_reason=reason) == 0
        assert value(fams, "vllm:num_requests_running") == 0
        assert value(fams, "vllm:kv_cache_usage_perc") == 0
        assert value(fams, "vllm:time_to_first_token_seconds_count") == 0
        assert "aiollm_requests_running" in fams  # aiollm's own stay
    serve_tiny(tiny, check)


def test_vllm_counters_follow_requests_streamed_cancelled_and_n(tiny):
    """Tokens and finished requests counted as the responses' usage says, a cancelled
    stream as 'abort', n=2 as two requests; the gauges are back at 0 once idle."""
    async def check(client, engine):
        body = {"model": "alias", "prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
        one = await (await client.post("/v1/completions", json={**body, "n": 2})).json()
        stream = await client.post("/v1/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}})
        assert stream.status == 200
        streamed = [line async for line in stream.content if line.strip()]
        assert streamed[-1].strip() == b"data: [DONE]"
        # a long stream the client leaves after its first event
        gone = await client.post("/v1/completions", json={
            **body, "max_tokens": 200, "stream": True})
        await gone.content.readline()
        gone.close()
        for _ in range(200):
            fams = await families(client)
            if value(fams, "vllm:request_success_total", finished_reason="abort") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(fams, "vllm:request_success_total", finished_reason="length") == 3
        assert value(fams, "vllm:request_success_total", finished_reason="abort") == 1
        assert value(fams, "vllm:prompt_tokens_total") == 4 * 3
        generated = value(fams, "vllm:generation_tokens_total")
        assert generated >= one["usage"]["completion_tokens"] + 4 + 1
        assert value(fams, "vllm:request_generation_tokens_count") == 4
        assert value(fams, "vllm:request_generation_tokens_sum") == generated
        assert value(fams, "vllm:request_prompt_tokens_sum") == 4 * 3
        assert value(fams, "vllm:e2e_request_latency_seconds_count") == 4
        assert value(fams, "vllm:time_to_first_token_seconds_count") == 4
        for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                      "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            assert value(fams, gauge) == 0, gauge
    serve_tiny(tiny, check)


def test_vllm_kv_cache_usage_is_a_fraction_while_requests_run(tiny):
    """kv_cache_usage_perc is vLLM's fraction (1 means full), not a percentage nor a
    token count, and rises while requests hold KV."""
    async def check(client, engine):
        body = {"prompt": list(range(1, 60)), "max_tokens": 150, "ignore_eos": True,
                "stream": True}
        resps = await asyncio.gather(*[client.post("/v1/completions", json=body)
                                       for _ in range(3)])
        for r in resps:
            await r.content.readline()
        fams = await families(client)
        used = value(fams, "vllm:kv_cache_usage_perc")
        assert 0 < used <= 1
        assert value(fams, "vllm:gpu_cache_usage_perc") == used
        assert value(fams, "vllm:num_requests_running") >= 1
        for r in resps:
            r.close()
    serve_tiny(tiny, check)


def test_prompt_scoring_generates_no_tokens_in_the_metrics(tiny):
    """A request scoring its prompt (echo with max_tokens 0 and logprobs: the engine runs its
    prefill and samples nothing it returns) generates no token: the counter agreed with the
    response's usage (0), not with the prefill's discarded sample."""
    async def check(client, engine):
        body = {"prompt": [5, 6, 7], "max_tokens": 0, "echo": True, "logprobs": 1}
        resp = await client.post("/v1/completions", json=body)
        out = await resp.json()
        assert resp.status == 200, out
        assert out["usage"]["completion_tokens"] == 0
        fams = await families(client)
        assert value(fams, "vllm:request_success_total", finished_reason="length") == 1
        assert value(fams, "vllm:generation_tokens_total") == 0
        assert value(fams, "vllm:request_generation_tokens_sum") == 0
    serve_tiny(tiny, check)


def test_a_request_left_while_queued_processed_no_prompt_tokens(tiny):
    """vllm:prompt_tokens counts prefill tokens processed: a request whose client leaves
    while it waits for admission (overload, the moment this counter is read for prefill
    throughput) processed none, and was counted in full at its arrival."""
    async def check(client, engine):
        body = {"prompt": [5, 6, 7], "max_tokens": 200, "ignore_eos": True, "stream": True}
        first = await client.post("/v1/completions", json=body)
        await first.content.readline()  # running: the only request the engine admits
        queued = asyncio.ensure_future(client.post("/v1/completions",
                                                   json={**body, "prompt": [9] * 20}))
        for _ in range(200):
            if value(await families(client), "vllm:num_requests_waiting") == 1:
                break
            await asyncio.sleep(0.01)
        queued.cancel()
        first.close()
        for _ in range(200):
            fams = await families(client)
            if value(fams, "vllm:request_success_total", finished_reason="abort") == 2:
                break
            await asyncio.sleep(0.02)
        assert value(fams, "vllm:request_success_total", finished_reason="abort") == 2
        assert value(fams, "vllm:prompt_tokens_total") == 3
        assert value(fams, "vllm:request_prompt_tokens_sum") == 3 + 20  # each ended request
    serve_tiny(tiny, check, max_running_requests=1)


def test_request_phases_step_tokens_max_tokens_and_cache_config(tiny):
    """vLLM's per-phase families split each request's time at its first admission and its
    first and last tokens (prefill + decode = inference, within e2e); a request that never
    got a token (prompt scoring) has no phases and no max_tokens; vllm:iteration_tokens_total
    counts each step's computed tokens (two 3-token prompts, then one decode token per
    request per step); vllm:cache_config_info gives the pool as one-token blocks."""
    async def check(client, engine):
        body = {"max_tokens": 4, "ignore_eos": True}
        for prompt in ([5, 6, 7], [8, 9, 10]):  # one after the other: known steps
            resp = await client.post("/v1/completions", json={**body, "prompt": prompt})
            assert resp.status == 200, await resp.text()
        scored = await client.post("/v1/completions", json={
            "prompt": [11, 12, 13], "max_tokens": 0, "echo": True, "logprobs": 1})
        assert scored.status == 200, await scored.text()
        fams = await families(client)
        phases = {p: value(fams, f"vllm:request_{p}_time_seconds_sum")
                  for p in ("prefill", "decode", "inference")}
        for p in phases:
            assert value(fams, f"vllm:request_{p}_time_seconds_count") == 2, p
            assert phases[p] > 0, p
        assert phases["inference"] == pytest.approx(phases["prefill"] + phases["decode"])
        assert phases["inference"] <= value(fams, "vllm:e2e_request_latency_seconds_sum")
        per_token = value(fams, "vllm:time_per_prefill_token_request_seconds_sum")
        assert per_token * 3 == pytest.approx(phases["prefill"])
        assert value(fams, "vllm:request_params_max_tokens_count") == 2
        assert value(fams, "vllm:request_params_max_tokens_sum") == 8
        # 3 prompt tokens and 3 decode steps each, then the scoring request's 3
        assert value(fams, "vllm:iteration_tokens_total_sum") == 2 * (3 + 3) + 3
        assert value(fams, "vllm:iteration_tokens_total_count") == 2 * (1 + 3) + 1
        info = [s for s in fams["vllm:cache_config_info"].samples]
        assert len(info) == 1 and info[0].value == 1
        assert info[0].labels == {"block_size": "1", "num_gpu_blocks": "512",
                                  "enable_prefix_caching": "True", "engine": "0"}
    serve_tiny(tiny, check)


def test_a_request_the_engine_failed_counts_as_error_not_abort(tiny):
    """A request that failed inside the engine (its model step raised: HTTP 500) is vLLM's
    finished_reason "error", not "abort" (a client that went away, a shutdown): an alert on
    the rate of server errors read it as cancellations. The server serves on."""
    async def check(client, engine):
        model = engine.runner.model

        def broken(batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered "
                               "(injected)")

        body = {"prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
        model.forward = broken
        try:
            failed = await client.post("/v1/completions", json=body)
            assert failed.status == 500, await failed.text()
        finally:
            del model.forward  # the class's forward again
        served = await client.post("/v1/completions", json=body)
        assert served.status == 200, await served.text()
        fams = await families(client)
        assert value(fams, "vllm:request_success_total", finished_reason="error") == 1
        assert value(fams, "vllm:request_success_total", finished_reason="abort") == 0
        assert value(fams, "vllm:request_success_total", finished_reason="length") == 1
        assert value(fams, "vllm:e2e_request_latency_seconds_count") == 2  # each ended one
    serve_tiny(tiny, check)
