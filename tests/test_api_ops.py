"""The operations endpoints as a load balancer, an orchestrator's probes and a Prometheus
scraper use them: /health (and LightLLM's /healthz) must tell a server that cannot serve
from one that can. An app around a tiny random-weight model, served in-process."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.engine.step_health import FAILING_STEPS
from conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256)


def serve_tiny(tiny: str, check, **app_options):
    """check(client, engine) awaited against a started app around a tiny dummy engine."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)  # the default tokenizer
        app = create_app(engine, **app_options)
        async with TestClient(TestServer(app)) as client:
            return await check(client, engine)
    return asyncio.run(main())


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health_fails_once_the_engine_no_longer_serves(tiny, path):
    """A stopped engine refuses every request (503); /health said 200 "ok" all the same, so
    a load balancer kept sending traffic to a server that could serve none of it. vLLM's
    and LightLLM's health checks ask the engine."""
    async def check(client, engine):
        ok = await client.get(path)
        assert ok.status == 200, await ok.text()
        await engine.stop()
        gen = await client.post("/generate", json={"inputs": "hi"})
        assert gen.status == 503, await gen.text()
        down = await client.get(path)
        assert down.status == 503, await down.text()
        assert (await down.json())["status"] != "ok"
        head = await client.head(path)
        assert head.status == 503
    serve_tiny(tiny, check)


async def fail_steps_then_recover(client, engine, fault: Exception, answer_says: str,
                                  health_says: str) -> None:
    """Every model step raises `fault` for FAILING_STEPS requests, each a 500 whose message
    holds `answer_says`; then /health and /healthz are 503 with `health_says` in their error;
    with the fault gone a request is served, /health is 200 again and nothing is held."""
    body = {"inputs": [1, 2, 3], "parameters": {"max_new_tokens": 2}}

    def broken(batch):
        raise fault

    model = engine.runner.model
    model.forward = broken
    try:
        for _ in range(FAILING_STEPS):
            assert (await client.get("/health")).status == 200
            resp = await asyncio.wait_for(client.post("/generate", json=body), 30)
            assert resp.status == 500, await resp.text()
            assert answer_says in (await resp.json())["error"]["message"]
        for path in ("/health", "/healthz"):
            down = await client.get(path)
            assert down.status == 503, await down.text()
            got = await down.json()
            assert got["status"] == "engine failing", got
            assert health_says in got["error"], got
    finally:
        del model.forward  # the class's forward again
    resp = await client.post("/generate", json=body)
    assert resp.status == 200, await resp.text()
    assert (await client.get("/health")).status == 200
    assert engine.stats()["kv_used"] == engine.stats()["table_used"] == 0


def test_health_fails_while_every_model_step_fails(tiny):
    """A sticky device error (CUDA's illegal memory access stays for the process's life)
    fails every step, so every request got its 500, while /health said 200 "ok" and a load
    balancer kept sending it traffic it could only fail. One failed request is no dead
    engine; FAILING_STEPS failed steps in a row are: 503 naming the error, until a step
    completes again."""
    fault = RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    serve_tiny(tiny, lambda client, engine: fail_steps_then_recover(
        client, engine, fault, "illegal memory access", "illegal memory access"))


def test_health_fails_while_every_request_runs_out_of_memory_alone(tiny):
    """A device with no memory left for any step (another process took it) paused and
    resumed every request for ever: none ended, and /health said 200 as out-of-memory steps
    are no failed steps. A request out of memory alone in the smallest step fails (500
    naming out of memory); FAILING_STEPS of them in a row make the engine failing."""
    import torch

    fault = torch.OutOfMemoryError("CUDA out of memory (injected)")
    serve_tiny(tiny, lambda client, engine: fail_steps_then_recover(
        client, engine, fault, "out of device memory", "out of memory"))


def test_health_probes_a_failing_engine_until_the_fault_has_passed(tiny):
    """Another process held the device memory for a moment: FAILING_STEPS requests failed
    out of memory and /health turned 503. A load balancer then sends the server nothing,
    and only a completed step cleared the state: 503 for ever on a server that would
    serve. While the engine is failing, /health runs a one-token probe request (as TGI's
    does): still out of memory, 503 naming the probe's failure; memory back, 200 with no
    other traffic. Concurrent checks share one probe, a check within a second of the last
    probe runs none, and probes hold nothing nor count as requests."""
    import torch

    from aiollm.engine.health_probe import PROBE_INTERVAL_S
    from aiollm.engine.oom import SMALLEST_TRIES

    body = {"inputs": [1, 2, 3], "parameters": {"max_new_tokens": 2}}
    fault = {"on": True}
    forwards = []

    async def check(client, engine):
        model = engine.runner.model

        def forward(batch):
            forwards.append(batch)
            if fault["on"]:
                raise torch.OutOfMemoryError("CUDA out of memory (injected: another process)")
            return type(model).forward(model, batch)

        model.forward = forward
        try:
            for _ in range(FAILING_STEPS):
                resp = await asyncio.wait_for(client.post("/generate", json=body), 30)
                assert resp.status == 500, await resp.text()
            before = len(forwards)
            sample = engine.metrics.registry.get_sample_value
            looked_up = sample("aiollm_prefix_cache_queried_tokens_total")
            assert looked_up  # the clients' prompts
            downs = await asyncio.gather(*(client.get("/health") for _ in range(4)))
            # one probe for the four checks: a request alone out of memory SMALLEST_TRIES
            # times, one forward each
            assert len(forwards) - before == SMALLEST_TRIES
            for down in downs:
                assert down.status == 503, await down.text()
                error = (await down.json())["error"]
                assert "health probe" in error and "out of memory" in error, error
            again = await client.get("/healthz")  # within a second of that probe: none
            assert again.status == 503
            assert len(forwards) - before == SMALLEST_TRIES
            fault["on"] = False  # the other process let the memory go
            await asyncio.sleep(PROBE_INTERVAL_S)
            before = len(forwards)
            up = await client.get("/health")
            assert up.status == 200, await up.text()
            assert len(forwards) - before == 1  # the probe's prefill gave its one token
            assert engine.failing is None
            stats = engine.stats()
            assert stats["kv_used"] == stats["table_used"] == 0, stats
            finished = engine.metrics.registry.get_sample_value
            assert finished("aiollm_requests_finished_total", {"finish_reason": "error"}) \
                == FAILING_STEPS  # the clients' requests (failed: vLLM's "error"), no probe
            assert not finished("aiollm_requests_finished_total", {"finish_reason": "length"})
            assert sample("aiollm_prefix_cache_queried_tokens_total") == looked_up
            assert engine.prefix_cache.queried == looked_up  # (its hit rate's log)
        finally:
            del model.forward  # the class's forward again
    serve_tiny(tiny, check)


def test_health_probe_that_times_out_is_aborted_and_holds_nothing(tiny):
    """A probe whose step does not end within the check's timeout answers naming the
    timeout and is aborted: its KV and table slot are given back at once, and the late
    end of its step frees nothing twice. A stopped engine is not probed."""
    from aiollm import SamplingParams
    from aiollm.errors import RequestFailed

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    unstuck, step_ended = threading.Event(), threading.Event()

    def stuck(batch):  # until the test lets it end (a loaded CPU's timer is no bound)
        try:
            unstuck.wait(30)
            broken(batch)
        finally:
            step_ended.set()

    async def main():
        async with Engine(tiny, load_format="dummy", kv_tokens=512) as engine:
            model = engine.runner.model
            model.forward = broken
            for _ in range(FAILING_STEPS):
                with pytest.raises(RequestFailed):
                    await engine.generate([1, 2, 3], SamplingParams(max_tokens=2))
            model.forward = stuck
            t0 = time.monotonic()
            why = await asyncio.wait_for(engine.check_health(timeout=0.2), 10)
            assert not step_ended.is_set()  # it answered while the step was stuck
            assert time.monotonic() - t0 < 3.0  # by its own timeout, not the default 5 s
            assert "did not complete within 0.2 s" in why, why
            stats = engine.stats()
            assert stats["kv_used"] == stats["table_used"] == 0, stats
            unstuck.set()  # the stuck step ends, failing
            deadline = time.monotonic() + 30  # until the loop has counted its failure
            while f"last {FAILING_STEPS + 1} model steps failed" not in engine.failing:
                assert time.monotonic() < deadline, engine.failing
                await asyncio.sleep(0.01)
            stats = engine.stats()
            assert stats["kv_used"] == stats["table_used"] == 0, stats
            assert "illegal memory access" in engine.failing
            await engine.stop()
            assert await engine.check_health() == "the engine is not serving"
    asyncio.run(main())


def test_a_probe_alone_in_a_step_is_no_step_of_the_step_histograms(tiny):
    """The health probe is kept out of the request metrics, but a step of nothing but the
    probe was still observed in aiollm_step_model_seconds and aiollm_step_host_seconds, as
    though it were traffic. A step that carries a client's request beside the probe is real
    work and counts: every such step is observed once."""
    from aiollm import SamplingParams
    from aiollm.engine.health_probe import PROBE_INTERVAL_S
    from aiollm.errors import RequestFailed

    forwards = []  # the number of requests of each forward, failed ones too

    def broken(batch):
        forwards.append(len(batch.req_rows))
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    async def main():
        async with Engine(tiny, load_format="dummy", kv_tokens=512) as engine:
            model = engine.runner.model

            def forward(batch):
                forwards.append(len(batch.req_rows))
                return type(model).forward(model, batch)

            def steps() -> tuple[float, float]:
                sample = engine.metrics.registry.get_sample_value
                return (sample("aiollm_step_model_seconds_count"),
                        sample("aiollm_step_host_seconds_count"))

            async def fail() -> None:
                model.forward = broken
                for _ in range(FAILING_STEPS):
                    with pytest.raises(RequestFailed):
                        await engine.generate([1, 2, 3], SamplingParams(max_tokens=2))
                model.forward = forward

            await fail()
            before, n = steps(), len(forwards)
            assert await engine.check_health() is None  # the probe's one step completed
            assert forwards[n:] == [1] and steps() == before

            await fail()  # a client's request runs while the next probe joins it
            await asyncio.sleep(PROBE_INTERVAL_S)
            before, n = steps(), len(forwards)
            params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
            client = asyncio.ensure_future(engine.generate([5, 6, 7], params))
            assert await engine.check_health() is None
            await client
            assert 2 in forwards[n:]  # a step of both
            assert steps() == tuple(c + len(forwards) - n for c in before)
    asyncio.run(main())


def test_probes_metrics_and_version_need_no_api_key(tiny):
    """What a probe, a Prometheus scraper or a deploy script reads carries no secrets and
    runs no model: /health, /healthz, /metrics and /version are open, as vLLM leaves all but
    its /v1 routes open (a scraper set up for vLLM sends no key and got 401 here), and so
    are LightLLM's probes /liveness and /readiness, and its /token_load, a router's load
    signal as vLLM's open /load is. The routes that take input or change
    state stay behind the key, and so do unknown paths."""
    async def check(client, engine):
        for path in ("/health", "/healthz", "/healthz/", "/metrics", "/metrics/", "/version",
                     "/version/", "/liveness", "/readiness/", "/token_load"):
            resp = await client.get(path)
            assert resp.status == 200, (path, await resp.text())
        assert "aiollm_" in await (await client.get("/metrics")).text()
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"),
                             ("POST", "/generate"), ("POST", "/generate_stream"),
                             ("POST", "/tokenize"), ("POST", "/detokenize"),
                             ("POST", "/flush_cache"), ("GET", "/nowhere"),
                             ("GET", "/metrics/x"), ("GET", "/get_model_name"),
                             ("POST", "/tokens"), ("POST", "/")):
            resp = await client.request(method, path, json={})
            assert resp.status == 401, (method, path, await resp.text())
    serve_tiny(tiny, check, api_key="secret")


async def scrape(client) -> dict[str, float]:
    """The /metrics samples: {"name{labels}": value}."""
    text = await (await client.get("/metrics")).text()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                      if line and not line.startswith("#"))}


def test_metrics_time_each_request_end_to_end(tiny):
    """A request's latency from arrival to its end (vLLM's e2e_request_latency_seconds),
    the figure latency objectives are set on: TTFT and inter-token latency alone do not
    give it (queueing, a long output). Concurrent requests are each counted once."""
    name = "aiollm_e2e_request_latency_seconds"

    async def check(client, engine):
        before = await scrape(client)
        body = {"inputs": [1, 2, 3], "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
        t0 = time.monotonic()
        resps = await asyncio.gather(*[client.post("/generate", json=body) for _ in range(3)])
        wall = time.monotonic() - t0
        assert [r.status for r in resps] == [200] * 3
        after = await scrape(client)
        assert after[name + "_count"] - before.get(name + "_count", 0) == 3
        spent = after[name + "_sum"] - before.get(name + "_sum", 0)
        assert 0 < spent <= 3 * wall
        assert after[name + '_bucket{le="+Inf"}'] == after[name + "_count"]
    serve_tiny(tiny, check)


async def exchange(client, head: bytes, body: bytes = b"") -> bytes:
    """The response heads `head` gets on a raw connection; `body` is sent only after a
    100 Continue."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head)
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if body and first.startswith(b"HTTP/1.1 100"):
        writer.write(body)
        first += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    writer.close()
    return first


def test_expect_100_continue_refuses_a_body_too_large_before_it_is_sent(tiny):
    """curl asks `Expect: 100-continue` before a large body. A Content-Length past the
    limit was answered "100 Continue", and the client sent megabytes only to get a 413;
    RFC 9110 (10.1.1) asks for the final status at once. A body within it still gets 100."""
    async def check(client, engine):
        big = await exchange(client, b"POST /generate HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                             b"Content-Length: %d\r\n\r\n" % (17 * 2**20))
        assert big.startswith(b"HTTP/1.1 413"), big
        assert b"Connection: close" in big, big
        body = b'{"inputs": [1, 2], "parameters": {"max_new_tokens": 1}}'
        small = await exchange(client, b"POST /generate HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body), body)
        assert small.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), small
    serve_tiny(tiny, check)


def test_a_body_past_its_content_length_limit_is_413_and_closes(tiny):
    """A body whose bytes pass the limit is refused before it is read to its end: the 413
    says Connection: close (as the 100-continue one and the 408 do), and the connection
    ends after it. Without it, aiohttp read on and kept the connection for a next request,
    or closed it unannounced after its lingering time, where a client's pool had sent one."""
    async def check(client, engine):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        body = b'{"inputs": "' + b"x" * 4096 + b'"}'
        writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined after it
        await writer.drain()
        got = b""
        try:  # until the server closes, or says nothing for 2 s
            while chunk := await asyncio.wait_for(reader.read(65536), 2):
                got += chunk
        except asyncio.TimeoutError:
            pass
        writer.close()
        head = got.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 413"), got
        assert b"Connection: close" in head, got
        assert got.count(b"HTTP/1.1 ") == 1, got  # the pipelined request was not taken
        ok = await client.get("/health")  # the server serves on
        assert ok.status == 200
    serve_tiny(tiny, check, max_body_bytes=1024)


def test_expect_100_continue_without_the_api_key_is_refused_before_the_body(tiny):
    """The API key is in the headers: a request without it was told 100 Continue (aiohttp
    asks the expect handler before the auth middleware) and sent its body only to get a
    401. It gets the 401 at once; with the key, 100 Continue as before."""
    body = b'{"inputs": [1, 2], "parameters": {"max_new_tokens": 1}}'
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(body))

    async def check(client, engine):
        for auth in (b"", b"Authorization: Bearer wrong\r\n"):
            got = await exchange(client, head + auth + b"\r\n", body)
            assert got.startswith(b"HTTP/1.1 401"), got
            assert b"Connection: close" in got, got
        ok = await exchange(client, head + b"Authorization: Bearer secret\r\n\r\n", body)
        assert ok.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), ok
        probe = await exchange(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                               b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n", b"{}")
        assert probe.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), probe
    serve_tiny(tiny, check, api_key="secret")


def test_version_says_which_aiollm_serves(tiny):
    """vLLM's GET /version: which build a server runs, for the operator rolling one out."""
    import aiollm

    async def check(client, engine):
        resp = await client.get("/version")
        assert resp.status == 200 and await resp.json() == {"version": aiollm.__version__}
    serve_tiny(tiny, check)


@pytest.mark.parametrize("timeout", [None, "30", -1.0, float("nan")])
def test_a_shutdown_timeout_that_is_no_number_of_seconds_is_refused_by_create_app(tiny,
                                                                                 timeout):
    """create_app(shutdown_timeout=None) was taken, and failed only at SIGTERM, inside the
    engine's shutdown (a TypeError), leaving a server that refused every request as
    shutting down. It is refused where it is given, as --shutdown-timeout's are."""
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds >= 0"):
        create_app(Engine(tiny, load_format="dummy"), shutdown_timeout=timeout)


def test_serve_help_names_every_endpoint(capsys):
    """`aiollm serve --help` lists the endpoints it serves; /healthz and /version were
    added to the routes and not to the list, so an operator reading it missed them."""
    from aiollm.api import lightllm, lightllm_routes, openai, ops
    from aiollm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    listed = set(re.findall(r"(/[\w/{}]*)[,.]", capsys.readouterr().out))
    served = {r.path.replace(":.+", "") for r in ops.ROUTES + openai.ROUTES + lightllm.ROUTES
              + lightllm_routes.ROUTES}
    assert served - listed == set(), served - listed


def test_a_health_probe_is_no_request_of_the_gauges_nor_the_load(tiny):
    """While /health's probe request ran (a failing engine, whose step is slow), it was
    counted in vllm:num_requests_running, aiollm_requests_running and /load's server_load:
    a dashboard showed traffic on a server a load balancer had taken out of rotation, and a
    router read it as loaded. The probe is no client's request: none of them counts it."""
    from aiollm.engine.health_probe import PROBE_TIMEOUT_S

    unstuck = threading.Event()

    def broken(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    def stuck(batch):  # the probe's step, until the test has read the gauges
        unstuck.wait(30)
        broken(batch)

    async def check(client, engine):
        model = engine.runner.model
        model.forward = broken
        try:
            body = {"inputs": [1, 2, 3], "parameters": {"max_new_tokens": 2}}
            for _ in range(FAILING_STEPS):
                assert (await client.post("/generate", json=body)).status == 500
            model.forward = stuck
            health = asyncio.ensure_future(client.get("/health"))
            deadline = time.monotonic() + 10
            while not engine.planner.running:  # the probe admitted, its step under way
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            text = await (await client.get("/metrics")).text()
            for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                assert re.search(rf"^{gauge}\{{[^}}]*\}} 0\.0$", text, re.M), gauge
            for gauge in ("aiollm_requests_running", "aiollm_requests_waiting"):
                assert re.search(rf"^{gauge} 0\.0$", text, re.M), gauge
            assert await (await client.get("/load")).json() == {"server_load": 0}
            unstuck.set()
            resp = await asyncio.wait_for(health, PROBE_TIMEOUT_S + 30)
            assert resp.status == 503
        finally:
            unstuck.set()
            del model.forward
    serve_tiny(tiny, check)
