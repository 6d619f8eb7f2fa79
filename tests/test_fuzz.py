"""Random bodies against the real app (hypothesis): JSON of any shape, and requests of the right
shape with random field values, on the OpenAI and LightLLM endpoints. Whatever comes in, the
answer is a 2xx with a well-formed body or a 4xx with an OpenAI-style error, never a 5xx, and
the server still answers afterwards with nothing left held in the engine.

`make test` runs a fixed (derandomized) set of examples; `make soak` runs many random ones.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from conftest import tiny_llama
from live_server import MAX_MODEL_LEN, LiveServer, http, sse_events

SHORT = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


SERVED = "SmolLM2-135M-Instruct.Q4_1"  # the default model's name, which bodies may give


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> LiveServer:
    """The shared server's limits (MAX_MODEL_LEN, KV_TOKENS) and the default model's tokenizer,
    chat template and served name, on conftest's tiny random Llama (one layer, dummy
    weights): what the fuzz checks is the answer's form (a 2xx body or a 4xx error, never a
    5xx) and the engine left idle, which no model's words change; the default model's 30
    layers cost ~0.1 s of a 2-core CPU a token (most of the 13 s of the two tests)."""
    model = tiny_llama(tmp_path_factory.mktemp("fuzz"), max_position_embeddings=MAX_MODEL_LEN)
    srv = LiveServer(model=model, load_format="dummy",
                     app_options={"served_model_name": SERVED}).start()
    yield srv
    srv.wait_idle()
    srv.close()


# -- strategies ----------------------------------------------------------------------------------
# A request is drawn valid (fields in their ranges), then up to two of its fields are given
# wild values: out of range, of the wrong type, absurd. A few bodies are wild as a whole.

# any JSON value (ints of any size, deep nesting)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=8)
# wild values of count fields: invalid or absent, never a valid large count (slow to serve)
wild_count = st.sampled_from([0, -1, 512, 10**6, 2**64, 3.0, 2.5, "4", True, None, [1], {}])
VOCAB = 49152
token_ids = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12)
text = st.text(min_size=1, max_size=40)
unit = st.floats(0.05, 1)

SAMPLING = {
    "model": st.none() | st.just(SERVED),
    "temperature": st.floats(0, 2) | st.just(0),
    "top_p": unit,
    "top_k": st.just(-1) | st.integers(1, 50),
    "min_p": st.floats(0, 0.5),
    "n": st.integers(1, 2),
    "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4),
                                                       max_size=3),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=3),
    "seed": st.integers(0, 2**63 - 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 2),
    "skip_special_tokens": st.booleans(),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "max_tokens": st.integers(1, 6),
}
COUNTS = {"n", "max_tokens", "min_tokens", "max_completion_tokens", "max_new_tokens",
          "min_new_tokens", "best_of"}
COMPLETION = {**SAMPLING, "logprobs": st.integers(0, 5), "echo": st.booleans(),
              "prompt": text | token_ids | st.lists(text, min_size=1, max_size=2)}
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": text},
    optional={"name": st.text(min_size=1, max_size=8)})
CHAT = {**SAMPLING, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 5),
        "max_completion_tokens": st.integers(1, 6),
        "messages": st.lists(message, min_size=1, max_size=3)}
PARAMETERS = {
    "do_sample": st.booleans(), "temperature": st.floats(0.1, 2), "top_p": unit,
    "top_k": SAMPLING["top_k"], "min_p": SAMPLING["min_p"], "max_new_tokens": st.integers(1, 6),
    "min_new_tokens": st.integers(0, 1), "repetition_penalty": SAMPLING["repetition_penalty"],
    "presence_penalty": SAMPLING["presence_penalty"],
    "stop_sequences": st.lists(st.text(min_size=1, max_size=4) | token_ids, max_size=3),
    "ignore_eos": st.booleans(), "skip_special_tokens": st.booleans(),
    "add_special_tokens": st.booleans(), "seed": SAMPLING["seed"], "n": st.integers(1, 2),
    "best_of": st.integers(1, 2), "return_details": st.booleans()}
extras = st.dictionaries(st.sampled_from(["user", "logit_bias", "suffix", "tools", "x_vendor"]),
                         junk, max_size=2)


def wild(key: str) -> st.SearchStrategy:
    return wild_count if key in COUNTS else junk


@st.composite
def request(draw, fields: dict, required: tuple[str, ...]) -> dict:
    body = draw(st.fixed_dictionaries(
        {k: fields[k] for k in required},
        optional={k: v for k, v in fields.items() if k not in required}))
    if body.get("stream") is not True:  # stream_options without a stream is a 400
        body.pop("stream_options", None)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        body[key] = draw(wild(key))
    return {**draw(extras), **body}


@st.composite
def generate_request(draw) -> dict:
    body = {"inputs": draw(text | token_ids), "parameters": draw(request(PARAMETERS, ()))}
    for key in draw(st.lists(st.sampled_from(["inputs", "parameters"]), max_size=1)):
        body[key] = draw(junk)
    return body


def endpoint(path: str, body: st.SearchStrategy) -> st.SearchStrategy:
    """(path, body): mostly requests drawn as above, sometimes any JSON at all."""
    return st.tuples(st.just(path), st.one_of(body, body, body, junk))


OPENAI = st.one_of(endpoint("/v1/completions", request(COMPLETION, ("prompt",))),
                   endpoint("/v1/chat/completions", request(CHAT, ("messages",))))
LIGHTLLM = st.one_of(endpoint("/generate", generate_request()),
                     endpoint("/generate_stream", generate_request()))


# -- checks ----------------------------------------------------------------------------------------

def bounded(path: str, body: object) -> object:
    """A chat request without max_tokens may generate to the end of the context, which takes
    minutes on the CPU: give those a small max_tokens. A LightLLM request whose parameters
    leave out max_new_tokens generates LightLLM's default 16 tokens, a dozen times in the
    fixed examples (10 of test_lightllm_fuzz's 14 s): give those 4 (test_api.py checks the
    default of 16 itself). Nothing else is changed: an explicit null stays null."""
    if path.endswith("chat/completions") and isinstance(body, dict) \
            and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        return {**body, "max_tokens": 4}
    if path.startswith("/generate") and isinstance(body, dict) \
            and isinstance(body.get("parameters"), dict) \
            and "max_new_tokens" not in body["parameters"]:
        return {**body, "parameters": {**body["parameters"], "max_new_tokens": 4}}
    return body


def check(server: LiveServer, path: str, body: object) -> None:
    body = bounded(path, body)
    status, headers, raw = http(server, "POST", path, data=json.dumps(body),
                                headers={"Content-Type": "application/json"})
    event(f"{path} {status}")
    assert status < 500, raw
    if status >= 400:
        err = json.loads(raw)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        assert err["param"] is None or isinstance(err["param"], str)
    elif headers["Content-Type"].startswith("text/event-stream"):
        events = sse_events(raw)
        if path.startswith("/v1/"):
            assert events and events[-1] == "[DONE]", events[-3:]
            events = events[:-1]
        chunks = [json.loads(e) for e in events]
        assert chunks and all("error" not in c for c in chunks), chunks[-1:]
    else:
        out = json.loads(raw)
        if path.startswith("/v1/"):
            assert out["choices"] and out["usage"]["completion_tokens"] >= 0
            assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
        else:
            assert all(isinstance(t, str) for t in out["generated_text"])
    assert http(server, "GET", "/health")[0] == 200


@SHORT
@given(OPENAI)
def test_openai_fuzz(server, case):
    check(server, *case)


@SHORT
@given(LIGHTLLM)
def test_lightllm_fuzz(server, case):
    check(server, *case)


@pytest.mark.slow
@LONG
@given(OPENAI | LIGHTLLM)
def test_fuzz_long(server, case):
    check(server, *case)
