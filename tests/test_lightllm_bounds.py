"""The ranges of LightLLM's `parameters` on /generate and /generate_stream are LightLLM's
(its SamplingParams.verify()), not the OpenAI routes' (vLLM's): what a LightLLM client
sends and LightLLM serves is served, what LightLLM refuses is refused (HTTP 417)."""

from __future__ import annotations

import json

import pytest
from live_server import http

PARIS = "The capital of France is"


def generate(server, parameters: dict) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", "/generate",
                          json={"inputs": PARIS, "parameters": parameters})
    return status, json.loads(raw)


@pytest.mark.parametrize("field,value", [
    ("presence_penalty", 3.0), ("frequency_penalty", 5), ("repetition_penalty", 20.0),
])
def test_penalties_past_vllms_bounds_are_served(server, field, value):
    """LightLLM bounds its penalties only below; vLLM's upper bounds (2 and 10) refused
    what LightLLM's clients send. The OpenAI routes keep vLLM's."""
    status, out = generate(server, {"max_new_tokens": 4, "do_sample": True, "seed": 1,
                                    field: value})
    assert status == 200 and out["count_output_tokens"] >= 1, out
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": PARIS, "max_tokens": 4, field: value})
    assert status == 400 and json.loads(raw)["error"]["param"] == field, raw


@pytest.mark.parametrize("field,value,says", [
    ("presence_penalty", -0.5, "presence_penalty must be in [0, 1e+06], got -0.5"),
    ("frequency_penalty", -1, "frequency_penalty must be in [0, 1e+06], got -1"),
    ("repetition_penalty", 0.9, "repetition_penalty must be in [1, 1e+06], got 0.9"),
])
def test_penalties_below_neutral_are_refused(server, field, value, says):
    """LightLLM refuses a penalty that rewards repetition (vLLM's ranges took them)."""
    status, out = generate(server, {"max_new_tokens": 2, field: value})
    assert status == 417 and out["error"]["param"] == f"parameters.{field}", out
    assert out["message"] == out["error"]["message"] and says in out["message"], out


def test_sampling_fields_are_not_read_without_do_sample(server):
    """Without do_sample LightLLM overwrites temperature, top_p and top_k before checking
    them: any value is taken, and the output is greedy."""
    greedy = generate(server, {"max_new_tokens": 4})
    odd = generate(server, {"max_new_tokens": 4, "do_sample": False, "temperature": -1,
                            "top_p": 0, "top_k": 0})
    assert odd[0] == 200 and odd[1]["generated_text"] == greedy[1]["generated_text"], odd
    # a temperature under 1e-5 is greedy with do_sample too, and top_k is not read then
    zero = generate(server, {"max_new_tokens": 4, "do_sample": True, "temperature": 0,
                             "top_k": 0})
    assert zero[0] == 200 and zero[1]["generated_text"] == greedy[1]["generated_text"], zero


@pytest.mark.parametrize("parameters,field", [
    ({"do_sample": True, "top_p": 0}, "top_p"),
    ({"do_sample": True, "temperature": 0, "top_p": 1.5}, "top_p"),
    ({"do_sample": True, "top_k": 0}, "top_k"),
    ({"do_sample": True, "temperature": -0.5}, "temperature"),
])
def test_sampling_fields_are_checked_with_do_sample(server, parameters, field):
    status, out = generate(server, {"max_new_tokens": 2, **parameters})
    assert status == 417 and out["error"]["param"] == f"parameters.{field}", out


@pytest.mark.parametrize("value", [0, -1])
def test_min_new_tokens_below_one_is_refused(server, value):
    """LightLLM refuses min_new_tokens under 1 (its default, 1, is no minimum); 0 was
    taken as 1."""
    status, out = generate(server, {"max_new_tokens": 2, "min_new_tokens": value})
    assert status == 417 and out["error"]["param"] == "parameters.min_new_tokens", out
    assert f"min_new_tokens must be an integer >= 1 (1: no minimum), got {value}" \
        in out["message"], out
