"""LightLLM's `parameters` mean on /generate and /generate_stream what they mean in
LightLLM, where its semantics differ from the OpenAI and vLLM fields they map to."""

from __future__ import annotations

import json

import pytest
from live_server import http, sse_events

PARIS = "The capital of France is"  # greedy: " Paris" (7042), ".", "\n", ...
EOS = 2


def both(server, body: dict) -> list[dict]:
    """The final answer of /generate and of /generate_stream (its last event) to `body`."""
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    status, _, sraw = http(server, "POST", "/generate_stream", json=body)
    assert status == 200, sraw
    out = json.loads(raw)
    last = json.loads(sse_events(sraw)[-1])
    return [{"finish_reason": out["finish_reason"], "count": out["count_output_tokens"]},
            {"finish_reason": last["finish_reason"],
             "count": last["token"]["count_output_tokens"]}]


@pytest.mark.parametrize("stop", [" Paris", [7042]], ids=["string", "token-id"])
def test_stop_sequences_count_from_the_first_token(server, stop):
    """LightLLM matches stop_sequences against every output token, whatever min_new_tokens;
    its min_new_tokens masks only eos, while fewer than min_new_tokens - 1 tokens are out,
    so its default of 1 masks nothing. Taken as vLLM's min_tokens 1, the default held the
    first token's stop sequence back: the output ran on to max_new_tokens."""
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 6, "stop_sequences": [stop]}}
    for got in both(server, body):
        assert got["finish_reason"] == "stop" and got["count"] <= 1, got


def test_eos_may_end_the_output_at_once_by_default(server):
    """LightLLM counts the eos that ends an output among its min_new_tokens: with the
    default of 1, eos may be the first token. With only eos allowed, the output is that
    eos; read as min_tokens 1, eos was banned and no token was left (HTTP 400)."""
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 6, "allowed_token_ids": [EOS]}}
    for got in both(server, body):
        assert got == {"finish_reason": "stop", "count": 1}, got


@pytest.mark.parametrize("parameters,says", [
    ({"min_new_tokens": -1}, "min_new_tokens must be an integer >= 1 (1: no minimum), got -1"),
    ({"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens (5)"),
    ({"min_new_tokens": 3, "max_new_tokens": 8, "allowed_token_ids": [EOS]},
     "min_new_tokens (3)"),
])
def test_min_new_tokens_errors_quote_it_as_sent(server, parameters, says):
    """SamplingParams holds min_new_tokens - 1: its errors must still speak of
    min_new_tokens and quote the client's value."""
    status, _, raw = http(server, "POST", "/generate", json={"inputs": PARIS,
                                                             "parameters": parameters})
    err = json.loads(raw)["error"]
    assert status == 417 and err["param"] == "parameters.min_new_tokens", err
    assert says in err["message"] and "min_tokens" not in err["message"], err


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
@pytest.mark.parametrize("kind", ["images", "audios"])
def test_multimodal_inputs_are_refused_not_ignored(server, path, kind):
    """LightLLM's multimodal_params carries images and audio for multimodal models. The
    model served reads text alone: the request was answered as if the image were not
    there (HTTP 200), an answer to another question. An empty one, as LightLLM clients
    send it with text alone, changes nothing and is served."""
    item = {"type": "base64", "data": "AAAA"}
    status, _, raw = http(server, "POST", path, json={
        "inputs": PARIS, "parameters": {"max_new_tokens": 1},
        "multimodal_params": {kind: [item]}})
    err = json.loads(raw)["error"]
    assert status == 417 and err["param"] == f"multimodal_params.{kind}", (status, raw)
    status, _, raw = http(server, "POST", path, json={
        "inputs": PARIS, "parameters": {"max_new_tokens": 1},
        "multimodal_params": {kind: []}})
    assert status == 200, raw

