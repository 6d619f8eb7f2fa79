"""The HTTP API against a real server (tests/live_server.py: the real Engine on the default
model, on the CPU), driven by the official `openai` client and by plain aiohttp requests.
Bad input, overload, failures and shutdown are in test_reliability.py."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import openai
import pytest
from conftest import tiny_llama
from live_server import KV_TOKENS, MAX_MODEL_LEN, at_once, http, sse_events

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


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


def test_completion_stream_equals_non_stream(random_client, random_model):
    client, model = random_client, random_model
    kw = dict(model=model, prompt="The three primary colors are", temperature=0, max_tokens=16)
    full, chunks = at_once(  # independent: the server batches them
        lambda: client.completions.create(**kw),
        lambda: list(client.completions.create(**kw, stream=True,
                                               stream_options={"include_usage": True})))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_stream_equals_non_stream(random_client, random_model):
    client, model = random_client, random_model
    kw = dict(model=model, messages=[{"role": "user", "content": "Name a fruit."}],
              temperature=0, max_completion_tokens=20)
    full, chunks = at_once(lambda: client.chat.completions.create(**kw),
                           lambda: list(client.chat.completions.create(**kw, stream=True)))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content and text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.id == chunks[0].id for c in chunks)


def test_prompt_forms(client, model, server):
    _, _, body = http(server, "POST", "/tokenize", json={"prompt": "Once upon a time"})
    ids = json.loads(body)["tokens"]
    as_text, as_ids, batch = at_once(  # independent: the server batches them
        lambda: client.completions.create(model=model, prompt="Once upon a time",
                                          temperature=0, max_tokens=8),
        lambda: client.completions.create(model=model, prompt=ids, temperature=0,
                                          max_tokens=8),
        lambda: client.completions.create(model=model, prompt=["Once upon a time", "Hello"],
                                          temperature=0, max_tokens=8, echo=True))
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == "Once upon a time" + as_text.choices[0].text
    assert batch.choices[1].text.startswith("Hello")


def test_n_choices_and_seeds(random_client, random_model):
    client, model = random_client, random_model
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


def test_system_fingerprint_tells_model_directories_apart(tmp_path):
    """A model directory given with a trailing slash (as a shell's completion writes it)
    had "" for its name in the fingerprint's hash: every such directory served in one dtype
    had the same system_fingerprint, so a client comparing seeded outputs could not tell
    that the model had changed. The directory's own name counts, with or without a slash."""
    from aiollm import Engine
    from aiollm.api.state import ApiState

    def fingerprint(path: str) -> str:
        async def go():
            async with Engine(path, load_format="dummy", kv_tokens=256) as eng:
                return ApiState(eng, None, 0.0, 0).system_fingerprint

        return asyncio.run(go())

    for name in ("tiny-a", "tiny-b"):
        tiny_llama(tmp_path / name, vocab_size=256)
    a, b = fingerprint(f"{tmp_path / 'tiny-a'}/"), fingerprint(f"{tmp_path / 'tiny-b'}/")
    assert a != b
    assert fingerprint(str(tmp_path / "tiny-a")) == a


def test_a_model_directory_given_as_dot_is_named_by_the_directory(tmp_path, monkeypatch):
    """`aiollm serve .` from inside the model's directory served it as "" (/v1/models' id,
    every answer's model: a client sending the directory's name got 404), and every model
    served so in one dtype had one system_fingerprint. The directory's own name counts."""
    from aiollm import Engine
    from aiollm.api.state import ApiState

    async def served(path: str) -> tuple[str, str]:
        async with Engine(path, load_format="dummy", kv_tokens=256) as eng:
            return eng.model_name, ApiState(eng, None, 0.0, 0).system_fingerprint

    seen = []
    for name in ("tiny-a", "tiny-b"):
        tiny_llama(tmp_path / name, vocab_size=256)
        monkeypatch.chdir(tmp_path / name)
        seen.append(asyncio.run(served(".")))
    assert [n for n, _ in seen] == ["tiny-a", "tiny-b"]
    assert seen[0][1] != seen[1][1]


def test_system_fingerprint_is_one_value_everywhere(client, model, server):
    """OpenAI's system_fingerprint, missing before: the same "fp_" value on chat and
    completions, whole and in every chunk, read by the openai client's types; the head of a
    whole answer and of a chunk has the same fields in the same order."""
    chat = dict(model=model, messages=FRANCE, max_tokens=2)
    whole = client.chat.completions.create(**chat)
    fp = whole.system_fingerprint
    assert re.fullmatch(r"fp_[0-9a-f]{10}", fp or ""), fp
    chunks = list(client.chat.completions.create(**chat, stream=True,
                                                 stream_options={"include_usage": True}))
    text = client.completions.create(model=model, prompt="Hi", max_tokens=2)
    pieces = list(client.completions.create(model=model, prompt="Hi", max_tokens=2,
                                            stream=True))
    assert {c.system_fingerprint for c in [*chunks, text, *pieces]} == {fp}
    # chat's carries OpenAI's service_tier too (the legacy Completion has none)
    for path, body, tier in (("/v1/chat/completions", {"messages": FRANCE}, ["service_tier"]),
                             ("/v1/completions", {"prompt": "Hi"}, [])):
        head = ["id", "object", "created", "model", *tier, "system_fingerprint", "choices"]
        body = {**body, "max_tokens": 2}
        _, _, raw = http(server, "POST", path, json=body)
        assert list(json.loads(raw)) == [*head, "usage"], raw
        _, _, raw = http(server, "POST", path, json={**body, "stream": True})
        events = [json.loads(e) for e in sse_events(raw)[:-1]]
        assert events and all(list(e) == head for e in events), events


def test_models(client, model):
    models = client.models.list().data
    assert [m.id for m in models] == [model] and "SmolLM2" in model
    card = client.models.retrieve(model)
    assert card.id == model and card.object == "model" and card.created == models[0].created
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("meta-llama/Llama-3.1-8B")  # a name with a slash
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"


def test_context_length_errors_have_openai_code(client, model, server):
    """A prompt (or prompt + max_tokens) past the context is OpenAI's 400 with code
    "context_length_exceeded", which clients (LangChain, LiteLLM) read to trim and retry;
    other 400s keep code null."""
    import openai

    calls = [
        lambda: client.completions.create(model=model, prompt="hello " * 600, max_tokens=1),
        lambda: client.completions.create(model=model, prompt="x", max_tokens=MAX_MODEL_LEN),
        lambda: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello " * 600}]),
        lambda: client.chat.completions.create(
            model=model, messages=FRANCE, max_completion_tokens=MAX_MODEL_LEN),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.code == "context_length_exceeded", e.value
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="x", temperature=-1)
    assert e.value.code is None
    status, _, body = http(server, "POST", "/generate", json={
        "inputs": "x", "parameters": {"max_new_tokens": MAX_MODEL_LEN}})
    err = json.loads(body)["error"]
    assert status == 417 and err["code"] == "context_length_exceeded"  # LightLLM's status
    assert err["param"] == "parameters.max_new_tokens"


def test_chat_continues_the_final_message(client, model, server):
    """continue_final_message (with add_generation_prompt false, as vLLM takes them): the
    prompt ends inside the assistant's message, the answer continues it, and it is the
    prompt /tokenize gives for the same options; chat_template_kwargs reach the template."""
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"}]
    opts = {"add_generation_prompt": False, "continue_final_message": True}
    out = client.chat.completions.create(model=model, messages=msgs, temperature=0,
                                         max_tokens=8, extra_body=opts)
    _, _, body = http(server, "POST", "/tokenize", json={"messages": msgs, **opts})
    ids = json.loads(body)["tokens"]
    assert server.engine.tokenizer.decode(ids).endswith("The capital of France is")
    same = client.completions.create(model=model, prompt=ids, temperature=0, max_tokens=8)
    assert out.choices[0].message.content == same.choices[0].text
    assert "Paris" in out.choices[0].message.content
    assert out.usage.prompt_tokens == len(ids)
    # no turn opened: the prompt is the conversation alone, shorter than with one opened
    _, _, plain = http(server, "POST", "/tokenize", json={"messages": msgs[:1]})
    _, _, closed = http(server, "POST", "/tokenize",
                        json={"messages": msgs[:1], "add_generation_prompt": False})
    assert json.loads(closed)["count"] < json.loads(plain)["count"]
    # a variable the template does not use changes nothing (SmolLM2's ignores it)
    _, _, kw = http(server, "POST", "/tokenize",
                    json={"messages": msgs[:1], "chat_template_kwargs": {"enable_thinking": False}})
    assert json.loads(kw)["tokens"] == json.loads(plain)["tokens"]


# -- LightLLM API ----------------------------------------------------------------------------

def test_lightllm_generate_and_stream(server):
    req = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}}
    sampled = {"inputs": [1, 2, 3], "parameters": {
        "do_sample": True, "temperature": 0.8, "top_k": 10, "max_new_tokens": 3,
        "ignore_eos": True, "n": 2, "return_details": True, "stop_sequences": ["zzz", [0]]}}
    # independent: the server batches them
    (status, _, body), streamed, default, (sampled_status, _, sampled_body) = at_once(
        lambda: http(server, "POST", "/generate", json=req),
        lambda: http(server, "POST", "/generate_stream", json=req),
        lambda: http(server, "POST", "/generate", json={
            "inputs": "The capital of France is", "parameters": {"ignore_eos": True}}),
        lambda: http(server, "POST", "/generate", json=sampled))
    assert status == 200
    out = json.loads(body)
    assert isinstance(out["generated_text"], list) and "Paris" in out["generated_text"][0]
    assert out["count_output_tokens"] == 8 and out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 0

    status, headers, body = streamed
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.startswith(b"data:{")  # LightLLM's framing: no space after the colon
    events = [json.loads(e) for e in sse_events(body)]
    assert len(events) == 8  # one event per token: LightLLM's benchmark counts them
    assert "".join(e["token"]["text"] for e in events) == out["generated_text"][0]
    assert [e["finished"] for e in events] == [False] * 7 + [True]
    assert events[-1]["finish_reason"] == "length"
    assert events[-1]["generated_text"] is None  # as LightLLM: the texts join to it
    assert all(isinstance(e["token"]["id"], int) and e["token"]["logprob"] <= 0 for e in events)
    # without max_new_tokens: LightLLM's default, 16 (the fuzz tests give theirs 4)
    status, _, body = default
    assert status == 200 and json.loads(body)["count_output_tokens"] == 16, body

    out = json.loads(sampled_body)
    assert sampled_status == 200 and len(out["generated_text"]) == 2
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
    assert metric(server, "aiollm_kv_tokens_total") == KV_TOKENS

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


def test_tokenize_renders_the_tools_as_the_chat_request_does(client, model, server):
    """/tokenize with messages and tools (vLLM's TokenizeChatRequest takes them) gives the
    prompt of the chat request with those tools: the tools were ignored, so a client counting
    a request's tokens before sending it was told 70 fewer than the prompt it sent held."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    out = client.chat.completions.create(model=model, messages=FRANCE, tools=tools,
                                         max_tokens=1)
    status, _, body = http(server, "POST", "/tokenize", json={"messages": FRANCE,
                                                              "tools": tools})
    assert status == 200 and json.loads(body)["count"] == out.usage.prompt_tokens, body
    status, _, body = http(server, "POST", "/tokenize", json={"messages": FRANCE,
                                                              "tools": [{"type": "x"}]})
    assert status == 400 and json.loads(body)["error"]["param"] == "tools[0].type", body


@pytest.mark.parametrize("body", [{"prompt": "Hello world"},
                                  {"messages": [{"role": "user", "content": "Hi"}]}])
def test_tokenize_returns_token_strs_on_request(server, body):
    """vLLM's return_token_strs: the tokens' vocabulary strings beside their ids (was
    ignored: no token_strs, which a vLLM client then reads as missing)."""
    status, _, raw = http(server, "POST", "/tokenize", json={**body, "return_token_strs": True})
    tok = json.loads(raw)
    assert status == 200 and len(tok["token_strs"]) == tok["count"] > 0, tok
    assert tok["token_strs"] == server.engine.tokenizer.convert_ids_to_tokens(tok["tokens"])
    status, _, raw = http(server, "POST", "/tokenize", json=body)
    assert status == 200 and "token_strs" not in json.loads(raw), raw


def test_gc_pauses_are_timed():
    """The server times each garbage collection (aiollm_gc_pause_seconds), and stops when
    it stops."""
    import gc

    from aiollm.metrics import EngineMetrics

    m = EngineMetrics(lambda: dict.fromkeys(
        ("running", "waiting", "kv_used", "kv_total", "kv_cached", "table_used",
         "table_total"), 0))

    def count():
        return m.registry.get_sample_value("aiollm_gc_pause_seconds_count", {"generation": "2"})

    m.watch_gc()
    gc.collect()
    m.watch_gc(False)
    assert count() == 1
    gc.collect()
    assert count() == 1


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
