"""The HTTP API against a real server: the real Engine on the default model (CPU), served by
`aiollm.api.serve` on a free port in a background thread, driven by the official `openai`
client and by plain aiohttp requests."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import aiohttp
import openai
import pytest
import uvloop

from aiollm.api import create_app, serve
from aiollm.engine import Engine

MAX_MODEL_LEN = 512  # small, so that "prompt too long" is cheap to provoke
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


class LiveServer:
    """The app on its own uvloop event loop in a thread, as `aiollm serve` runs it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="api-test-server", daemon=True)

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced to the fixture
            self.error = e
            self.started.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        engine = Engine(max_model_len=MAX_MODEL_LEN, kv_tokens=8192)
        await serve(create_app(engine, shutdown_timeout=5), "127.0.0.1", 0, stop=self.stop,
                    on_started=self._on_started)

    def _on_started(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"
        self.started.set()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not shut down"


@pytest.fixture(scope="module")
def server():
    srv = LiveServer()
    srv.thread.start()
    assert srv.started.wait(300), "the server did not start"
    if srv.error is not None:
        raise srv.error
    yield srv
    srv.close()
    assert srv.error is None


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def http(server, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
    """One request with a plain aiohttp client: (status, headers, body)."""
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, server.base + path, **kw) as r:
                return r.status, dict(r.headers), await r.read()
    return asyncio.run(go())


def sse_events(body: bytes) -> list[str]:
    """The data of each SSE event (after `data:` or `data: `)."""
    out = []
    for block in body.split(b"\n\n"):
        if block.strip():
            assert block.startswith(b"data:"), block
            out.append(block[5:].strip().decode())
    return out


def metric(server, name: str, labels: str = "") -> float:
    _, _, body = http(server, "GET", "/metrics")
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


# -- OpenAI API ------------------------------------------------------------------------------

def test_chat_capital_of_france(client, model):
    out = client.chat.completions.create(model=model, messages=FRANCE, temperature=0,
                                         max_tokens=24)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].message.role == "assistant"
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_completion_stream_equals_non_stream(client, model):
    kw = dict(model=model, prompt="The three primary colors are", temperature=0, max_tokens=16)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_stream_equals_non_stream(client, model):
    kw = dict(model=model, messages=[{"role": "user", "content": "Name a fruit."}],
              temperature=0, max_completion_tokens=20)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content and text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.id == chunks[0].id for c in chunks)


def test_prompt_forms(client, model, server):
    _, _, body = http(server, "POST", "/tokenize", json={"prompt": "Once upon a time"})
    ids = json.loads(body)["tokens"]
    as_text = client.completions.create(model=model, prompt="Once upon a time", temperature=0,
                                        max_tokens=8)
    as_ids = client.completions.create(model=model, prompt=ids, temperature=0, max_tokens=8)
    assert as_ids.choices[0].text == as_text.choices[0].text
    batch = client.completions.create(model=model, prompt=["Once upon a time", "Hello"],
                                      temperature=0, max_tokens=8, echo=True)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == "Once upon a time" + as_text.choices[0].text
    assert batch.choices[1].text.startswith("Hello")


def test_n_choices_and_seeds(client, model):
    kw = dict(model=model, prompt="My favourite animal is", temperature=1.0, max_tokens=8,
              n=3, seed=7)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    texts = [c.text for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.text for c in b.choices]  # seeded: reproducible
    assert len(set(texts)) > 1  # ... and each choice has its own seed
    assert a.usage.completion_tokens >= 3
    chunks = list(client.chat.completions.create(model=model, messages=FRANCE, n=2, seed=1,
                                                 max_tokens=6, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}


def test_logprobs(client, model):
    out = client.completions.create(model=model, prompt="The capital of France is",
                                    temperature=0, max_tokens=4, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == out.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and chosen == pytest.approx(max(top.values()))  # greedy
    chat = client.chat.completions.create(model=model, messages=FRANCE, temperature=0,
                                          max_tokens=4, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.logprob <= 0 and c.bytes == list(c.token.encode()) for c in content)


def test_stop_and_penalties(client, model):
    out = client.completions.create(model=model, prompt="1, 2, 3, 4,", temperature=0,
                                    max_tokens=30, stop=[", 7"])
    assert out.choices[0].finish_reason == "stop" and ", 7" not in out.choices[0].text
    out = client.completions.create(
        model=model, prompt="Hello", max_tokens=5, temperature=0.5, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
                    "user": "u1", "some_vendor_field": {"x": [1]}})  # unknown: ignored
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"


def test_models(client, model):
    models = client.models.list().data
    assert [m.id for m in models] == [model] and "SmolLM2" in model


# -- LightLLM API ----------------------------------------------------------------------------

def test_lightllm_generate_and_stream(server):
    req = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}}
    status, _, body = http(server, "POST", "/generate", json=req)
    assert status == 200
    out = json.loads(body)
    assert isinstance(out["generated_text"], list) and "Paris" in out["generated_text"][0]
    assert out["count_output_tokens"] == 8 and out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 0

    status, headers, body = http(server, "POST", "/generate_stream", json=req)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.startswith(b"data:{")  # LightLLM's framing: no space after the colon
    events = [json.loads(e) for e in sse_events(body)]
    assert len(events) == 8  # one event per token: LightLLM's benchmark counts them
    assert "".join(e["token"]["text"] for e in events) == out["generated_text"][0]
    assert [e["finished"] for e in events] == [False] * 7 + [True]
    assert events[-1]["finish_reason"] == "length"
    assert events[-1]["generated_text"] == out["generated_text"][0]
    assert all(isinstance(e["token"]["id"], int) and e["token"]["logprob"] <= 0 for e in events)

    sampled = {"inputs": [1, 2, 3], "parameters": {
        "do_sample": True, "temperature": 0.8, "top_k": 10, "max_new_tokens": 3,
        "ignore_eos": True, "n": 2, "return_details": True, "stop_sequences": ["zzz", [0]]}}
    status, _, body = http(server, "POST", "/generate", json=sampled)
    out = json.loads(body)
    assert status == 200 and len(out["generated_text"]) == 2
    assert out["count_output_tokens"] == [3, 3] and len(out["tokens"][0]) == 3


# -- operations ----------------------------------------------------------------------------

def test_health_metrics_tokenize(server):
    status, _, body = http(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = http(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("aiollm_requests_running", "aiollm_requests_waiting", "aiollm_kv_tokens_used",
                 "aiollm_kv_tokens_total", "aiollm_prompt_tokens_total",
                 "aiollm_generation_tokens_total", "aiollm_time_to_first_token_seconds",
                 "aiollm_inter_token_latency_seconds"):
        assert name in body.decode()
    assert metric(server, "aiollm_kv_tokens_total") == 8192

    text = "Héllo, wörld! 你好"
    status, _, body = http(server, "POST", "/tokenize",
                           json={"prompt": text, "add_special_tokens": False})
    tok = json.loads(body)
    assert status == 200 and tok["count"] == len(tok["tokens"]) > 0
    assert tok["max_model_len"] == MAX_MODEL_LEN
    status, _, body = http(server, "POST", "/detokenize", json={"tokens": tok["tokens"]})
    assert status == 200 and json.loads(body)["prompt"] == text
    status, _, body = http(server, "POST", "/tokenize", json={"messages": FRANCE})
    assert status == 200 and json.loads(body)["count"] > len(tok["tokens"])


def test_disconnect_mid_stream_aborts(server):
    aborted = metric(server, "aiollm_requests_finished_total", '{finish_reason="abort"}')

    async def read_two_events_and_leave():
        async with aiohttp.ClientSession() as s:
            resp = await s.post(server.base + "/generate_stream", json={
                "inputs": "Count:", "parameters": {"max_new_tokens": 400, "ignore_eos": True}})
            assert resp.status == 200
            lines = [await resp.content.readline() for _ in range(4)]
            assert lines[0].startswith(b"data:")
            resp.close()  # drop the connection mid-stream

    asyncio.run(read_two_events_and_leave())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (metric(server, "aiollm_requests_finished_total", '{finish_reason="abort"}')
                == aborted + 1 and metric(server, "aiollm_requests_running") == 0):
            break
        time.sleep(0.1)
    assert metric(server, "aiollm_requests_finished_total",
                  '{finish_reason="abort"}') == aborted + 1
    assert metric(server, "aiollm_requests_running") == 0
    assert metric(server, "aiollm_kv_tokens_used") == 0


# -- errors ----------------------------------------------------------------------------------

MSGS = [{"role": "user", "content": "hi"}]
BAD = [  # (path, json body, status, error.param)
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": 0}, 400, "top_k"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": 1}}, 400,
     "stream_options.include_usage"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, "a"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "messages[0].content[0]"),
    ("/v1/chat/completions", {"messages": MSGS, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSGS, "logprobs": True, "top_logprobs": 50}, 400,
     "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSGS, "max_completion_tokens": -3}, 400,
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": MSGS, "model": "nope"}, 404, "model"),
    ("/generate", {"parameters": {}}, 400, "inputs"),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, 400,
     "parameters.max_new_tokens"),
    ("/generate", {"inputs": "x", "parameters": {"top_p": "a"}}, 400, "parameters.top_p"),
    ("/generate_stream", {"inputs": "x", "parameters": {"n": 2}}, 400, "parameters.n"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/tokenize", {}, 400, "prompt"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{b[0]}:{b[3]}" for b in BAD])
def test_bad_bodies(server, path, body, status, param):
    got, _, raw = http(server, "POST", path, json=body)
    err = json.loads(raw)["error"]
    assert (got, err["param"]) == (status, param), err
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_prompt_too_long(server):
    got, _, raw = http(server, "POST", "/v1/completions", json={"prompt": "hello " * 600})
    err = json.loads(raw)["error"]
    assert got == 400 and err["param"] == "prompt"
    n = int(re.search(r"(\d+) tokens", err["message"]).group(1))
    assert n > MAX_MODEL_LEN and str(MAX_MODEL_LEN) in err["message"]


@pytest.mark.parametrize("method,path,kw,status", [
    ("POST", "/v1/completions", {"data": b"{bad", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/completions", {"data": b'{"prompt": "\xff"}',
                                 "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/completions", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/completions", {"data": b"[1]", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/completions", {"data": b'{"prompt": "x"}', "headers": {"Content-Type": "text/plain"}}, 415),
    ("POST", "/v1/completions", {"data": b" " * (17 * 2**20),
                                 "headers": {"Content-Type": "application/json"}}, 413),
    ("GET", "/v1/completions", {}, 405),
    ("DELETE", "/health", {}, 405),
    ("GET", "/no/such/route", {}, 404),
], ids=["bad-json", "not-utf8", "empty", "not-object", "content-type", "too-large",
        "get-completions", "delete-health", "unknown-route"])
def test_bad_requests(server, method, path, kw, status):
    got, headers, raw = http(server, method, path, **kw)
    err = json.loads(raw)["error"]
    assert got == status, err
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if status == 405:
        assert "Allow" in headers
    if path == "/v1/completions" and b"\xff" in kw.get("data", b""):
        assert "UTF-8" in err["message"]
