"""bench/serve.py, the serving benchmark client, against fake OpenAI and LightLLM streaming
servers on loopback (test fixtures standing in for real servers), plus the arithmetic of its
report on hand-made inputs: percentiles, TTFT/TPOT/ITL, goodput, roofline, workload lengths."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from aiohttp import web

from conftest import load_bench

serve = load_bench("serve")

FIRST = 0.03  # the fakes' time to first token, seconds
GAP = 0.004  # and between stream chunks


def sse(obj: dict, prefix: bytes = b"data: ") -> bytes:
    return prefix + json.dumps(obj).encode() + b"\n\n"


def fake_openai(bodies: list[dict], fail_every: int = 0) -> web.Application:
    """Streams max_tokens tokens two to a chunk, so the count must come from usage."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        if fail_every and len(bodies) % fail_every == 0:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        n = body["max_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(FIRST)
        sent = 0
        while sent < n:
            k = min(2, n - sent)
            sent += k
            await resp.write(sse({"choices": [{"index": 0, "text": "ab" * k,
                                               "finish_reason": "length" if sent == n else None}]}))
            if sent < n:
                await asyncio.sleep(GAP)
        await resp.write(sse({"choices": [], "usage": {"prompt_tokens": 7,
                                                       "completion_tokens": n}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models)])
    return app


def fake_lightllm(bodies: list[dict]) -> web.Application:
    """One `data:` event per token and no token counts: the client must count events."""

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        n = body["parameters"]["max_new_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(FIRST)
        for i in range(n):
            last = i == n - 1
            await resp.write(sse({"token": {"id": 100 + i, "text": "x", "special": False},
                                  "generated_text": "x" * n if last else None, "finished": last,
                                  "finish_reason": "length" if last else None}, prefix=b"data:"))
            if not last:
                await asyncio.sleep(GAP)
        return resp

    app = web.Application()
    app.add_routes([web.post("/generate_stream", generate_stream)])
    return app


def hanging() -> web.Application:
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.add_routes([web.post("/v1/completions", never)])
    return app


def closed_port() -> socket.socket:
    """A socket bound to a loopback port and not listening: a connection to that port is
    refused for as long as the socket is open (a port only found free could be taken
    meanwhile, by another test process's server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def bench(app: web.Application | None, quiet: bool = True, **kw) -> dict:
    """serve.run against `app` on a free loopback port (None: a port nobody listens on)."""

    async def go() -> dict:
        if app is None:
            with closed_port() as closed:
                url = f"http://127.0.0.1:{closed.getsockname()[1]}"
                return await serve.run(serve.BenchConfig(url=url, **kw), quiet=quiet)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            cfg = serve.BenchConfig(url=f"http://127.0.0.1:{runner.addresses[0][1]}", **kw)
            return await serve.run(cfg, quiet=quiet)
        finally:
            await runner.cleanup()

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_openai_closed_loop(tmp_path, capsys):
    bodies: list[dict] = []
    hw = {"copy_bw_bytes_per_s": 3e12, "matmul_flops_per_s": 8e14, "weight_bytes": 2.7e8,
          "kv_bytes_per_token": 9.2e4, "flops_per_token": 2.7e8}
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    out = tmp_path / "r.json"
    rep = bench(fake_openai(bodies, fail_every=4), num_requests=6, concurrency=3, input_len=16,
                output_len=5, out=str(out), plot=True, label="t", device_name="test-device",
                roofline_json=str(tmp_path / "hw.json"), slo_ttft=10.0, slo_tpot=10.0,
                quiet=False)
    table = capsys.readouterr().out
    assert "completed 5  failed 1" in table and "TTFT" in table and "roofline" in table
    m = rep["metrics"]
    assert (m["completed"], m["failed"]) == (5, 1)
    assert list(m["errors"]) == ['HTTP 500: {"error": {"message": "boom"}}']
    # 3 chunks per request, but usage says 5 tokens and 7 prompt tokens: usage wins
    assert m["total_output_tokens"] == 25 and m["short_outputs"] == 0
    assert m["total_input_tokens"] == 35
    assert m["output_throughput"] * m["duration_s"] == pytest.approx(25)
    assert m["total_token_throughput"] * m["duration_s"] == pytest.approx(60)
    assert m["ttft_s"]["p50"] >= FIRST * 0.9
    assert m["itl_s"]["p50"] >= GAP * 0.9  # two gaps of >= GAP per request
    assert m["tpot_s"]["p50"] >= 2 * GAP / 4 * 0.9  # (e2e - ttft) / (5 - 1)
    for r in rep["requests"]:
        if r["error"] is None:
            assert 0 < r["ttft_s"] < r["e2e_s"] and r["n_output"] == 5
    assert m["goodput"]["requests_per_s"] == pytest.approx(m["request_throughput"])
    assert m["goodput"]["attained"] == pytest.approx(5 / 6)
    assert rep["roofline"]["achieved_fraction"] == pytest.approx(
        m["output_throughput"] / rep["roofline"]["output_tokens_per_s"])
    assert rep["roofline"]["batch"] == 3
    # every request asked for exactly its length, ignoring EOS, with the listed model
    assert all(b["max_tokens"] == 5 and b["ignore_eos"] and b["stream"] for b in bodies)
    assert {b["model"] for b in bodies} == {"fake-model"}
    saved = json.loads(out.read_text())
    assert saved["device"] == "test-device" and saved["label"] == "t"
    assert {"bench", "date", "commit", "config", "metrics", "roofline", "requests"} <= set(saved)
    assert saved["config"]["num_requests"] == 6
    assert out.with_suffix(".png").stat().st_size > 1000


def test_lightllm_poisson_gaussian_lengths(tmp_path):
    bodies: list[dict] = []
    rep = bench(fake_lightllm(bodies), backend="lightllm", num_requests=8, concurrency=4,
                request_rate=200.0, input_len=32, output_len_mean=6, output_len_std=3,
                out=str(tmp_path / "r.json"))
    m = rep["metrics"]
    assert (m["completed"], m["failed"]) == (8, 0)
    asked = sorted(b["parameters"]["max_new_tokens"] for b in bodies)
    assert sorted(r["output_len"] for r in rep["requests"]) == asked
    assert all(r["n_output"] == r["output_len"] for r in rep["requests"])
    assert m["total_output_tokens"] == sum(asked)
    assert all(b["parameters"]["ignore_eos"] and not b["parameters"]["do_sample"]
               for b in bodies)
    assert m["ttft_s"]["mean"] >= FIRST * 0.9 and m["goodput"] is None


def test_failures_are_results_not_crashes(tmp_path):
    rep = bench(hanging(), num_requests=4, concurrency=2, model="m", max_duration=0.3,
                out=str(tmp_path / "hang.json"))
    m = rep["metrics"]
    assert (m["completed"], m["failed"]) == (0, 4) and m["duration_s"] < 3
    assert m["errors"] == {"cancelled at --max-duration": 2, "not sent before --max-duration": 2}
    assert m["ttft_s"]["p99"] is None
    rep = bench(None, num_requests=3, concurrency=3, out=str(tmp_path / "closed.json"))
    assert rep["metrics"]["failed"] == 3
    assert all("Connect" in e for e in rep["metrics"]["errors"])


def test_percentiles_and_latency_metrics_on_known_inputs():
    d = serve.describe(range(1, 101))
    assert d == pytest.approx({"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100})
    a = serve.RequestRecord(4, 3, start=0.0, end=0.3, chunk_times=[0.1, 0.2, 0.3])
    b = serve.RequestRecord(4, 5, start=1.0, end=2.0, chunk_times=[1.5, 1.6, 1.9],
                            server_output=5, server_prompt=6)
    failed = serve.RequestRecord(4, 5, start=1.0, end=1.1, error="HTTP 503: busy")
    cfg = serve.BenchConfig(slo_ttft=0.2, slo_tpot=0.2)
    m = serve.summarize(cfg, [a, b, failed], duration=2.0)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["ttft_s"]["mean"] == pytest.approx(0.3)  # 0.1 and 0.5
    assert m["tpot_s"]["mean"] == pytest.approx((0.1 + 0.125) / 2)  # 0.2/2 and 0.5/4
    assert m["itl_s"]["max"] == pytest.approx(0.3) and m["itl_s"]["p50"] == pytest.approx(0.1)
    assert m["e2e_s"]["mean"] == pytest.approx(0.65)
    assert m["output_throughput"] == pytest.approx(4.0)  # (3 + 5) / 2 s
    assert m["total_token_throughput"] == pytest.approx((3 + 5 + 4 + 6) / 2)
    assert m["goodput"] == pytest.approx({"requests_per_s": 0.5, "output_tokens_per_s": 1.5,
                                          "attained": 1 / 3})  # only `a` meets both


def test_max_tpot_and_the_papers_sla():
    # a: steady 0.1 s gaps; b: one 2 s gap (a stall) though its mean TPOT is small;
    # c: TTFT of 11 s
    a = serve.RequestRecord(4, 3, start=0.0, end=0.3, chunk_times=[0.1, 0.2, 0.3])
    b = serve.RequestRecord(4, 30, start=0.0, end=3.0,
                            chunk_times=[0.1, 0.2, 2.2] + [2.2 + 0.03 * i for i in range(1, 28)])
    c = serve.RequestRecord(4, 2, start=0.0, end=11.2, chunk_times=[11.0, 11.2])
    assert (a.max_tpot, b.max_tpot, c.max_tpot) == pytest.approx((0.1, 2.0, 0.2))
    m = serve.summarize(serve.BenchConfig(slo_ttft=10, slo_max_tpot=1.5), [a, b, c], 4.0)
    assert m["max_tpot_s"]["max"] == pytest.approx(2.0)
    assert m["goodput_paper_sla"] == pytest.approx(
        {"requests_per_s": 0.25, "output_tokens_per_s": 0.75, "attained": 1 / 3})
    assert m["goodput"] == m["goodput_paper_sla"]
    # lengths drawn as bench/sim.py draws them
    p, o = serve.draw_lengths(serve.BenchConfig(num_requests=300, sim_workload="decode_heavy_s8"),
                              np.random.default_rng(0))
    assert 4 <= p.min() and p.max() <= 512 and 256 <= o.min() and o.max() <= 512


def test_roofline_formula():
    hw = {"copy_bw_bytes_per_s": 1e12, "matmul_flops_per_s": 1e14, "weight_bytes": 1e9,
          "kv_bytes_per_token": 1e5, "flops_per_token": 2e9}
    rf = serve.roofline(hw, [10, 10], [3, 3], batch=2)
    prefill = 2e9 * 20 / 1e14
    decode = (2 * 1e9 + 1e5 * 2 * (2 * 10 + 3)) / 1e12  # 2 steps; KV reads 11 + 12 per request
    assert rf["prefill_s"] == pytest.approx(prefill) and rf["decode_s"] == pytest.approx(decode)
    assert rf["output_tokens_per_s"] == pytest.approx(6 / (prefill + decode))


def test_roofline_inputs_are_checked_before_the_run(tmp_path):
    (tmp_path / "hw.json").write_text(json.dumps({"copy_bw_bytes_per_s": 3e12}))
    with pytest.raises(ValueError, match="weight_bytes"):
        serve.read_hardware(str(tmp_path / "hw.json"))


def test_workload_lengths_and_prompts():
    rng = np.random.default_rng(0)
    cfg = serve.BenchConfig(num_requests=4000, output_len_mean=128)
    p, o = serve.draw_lengths(cfg, rng)
    assert cfg.output_len_std == 32 and (p == 1024).all()
    assert abs(o.mean() - 128) < 3 and o.min() >= 1
    _, o = serve.draw_lengths(serve.BenchConfig(num_requests=500, output_len_mean=2,
                                                output_len_std=50), rng)
    assert o.min() == 1
    p, o = serve.draw_lengths(serve.BenchConfig(num_requests=2000, dataset="sharegpt-like"), rng)
    assert 4 <= p.min() and p.max() <= 2048 and o.min() >= 1 and 100 < np.median(p) < 250
    with pytest.raises(ValueError, match="--backend"):
        serve.BenchConfig(backend="vllm")

    text, n = serve.PromptMaker(rng, chars_per_token=5.0).make(100)
    assert n == 100 and 500 <= len(text) < 520


def test_prompts_tokenize_to_the_asked_length():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([" ".join(serve.WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    maker = serve.PromptMaker(np.random.default_rng(1), tok)
    assert len(maker.words) >= 100  # whole-word tokens of the vocabulary
    for want in (1, 7, 300):
        text, n = maker.make(want)
        assert n == want == len(tok.encode(text, add_special_tokens=False))
