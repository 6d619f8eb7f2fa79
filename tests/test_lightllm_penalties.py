"""LightLLM's penalties on /generate: repetition, presence and frequency count the output's
tokens only, unless input_penalty counts the prompt's too (LightLLM's req_manager keeps one
counter of both then); /v1/completions keeps vLLM's (repetition over prompt and output)."""

from __future__ import annotations

import json

import pytest
from live_server import http

from aiollm.errors import InvalidRequest
from aiollm.sampling_params import SamplingParams

# " Paris" is in the prompt and is the greedy next token: a penalty that counts the
# prompt moves the first token off it, one that counts the output alone cannot
PROMPT = "Paris is the capital of France. Paris is the capital of France. The capital of France is"


# its greedy next tokens are the prompt's own, many times over: a presence or frequency
# penalty that counts the prompt moves them
REPEATS = "Paris, Paris, Paris, Paris, Paris, Paris, Paris, Paris, Paris, Paris"


def first(server, inputs: str = PROMPT, **parameters) -> str:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 1, **parameters}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    return json.loads(raw)["generated_text"][0]


def completions_first(server, **fields) -> str:
    body = {"prompt": PROMPT, "max_tokens": 1, "temperature": 0, **fields}
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw
    return json.loads(raw)["choices"][0]["text"]


def test_repetition_penalty_counts_the_output_only(server):
    """LightLLM's default: the first token has no output to penalise, so the largest
    repetition_penalty leaves it as it is; counted over the prompt (vLLM's), it moved."""
    plain = first(server)
    assert completions_first(server, repetition_penalty=10) != plain  # the test can fail
    assert first(server, repetition_penalty=10) == plain
    assert first(server, repetition_penalty=10, do_sample=True, temperature=1e-6) == plain


def test_input_penalty_counts_the_prompt_too(server):
    """input_penalty true (refused before): the prompt's tokens are counted, for the
    repetition penalty as vLLM counts them on the first token, and for presence and
    frequency too (which vLLM counts over the output alone; presence, the same count read
    as 0 or 1, moves no greedy token of this model within its bound of 2)."""
    plain = first(server)
    assert (first(server, repetition_penalty=10, input_penalty=True)
            == completions_first(server, repetition_penalty=10) != plain)
    plain = first(server, REPEATS)
    assert first(server, REPEATS, frequency_penalty=2, input_penalty=True) != plain
    assert first(server, REPEATS, frequency_penalty=2) == plain  # the output's alone


def test_penalty_scope_is_checked():
    """SamplingParams.penalty_scope (what /generate sets) names itself when it is none of
    its values: a misspelt scope would count vLLM's tokens silently."""
    assert SamplingParams(penalty_scope="output").penalty_scope == "output"
    with pytest.raises(InvalidRequest, match="penalty_scope must be one of") as e:
        SamplingParams(penalty_scope="prompt")
    assert e.value.param == "penalty_scope"


def test_exponential_decay_length_penalty_ends_the_output_sooner(server):
    """LightLLM's length penalty (refused before): past `start` output tokens the eos
    logit grows by |logit| * (factor ** (n - start) - 1), so a steep one ends the output
    at once after start."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert json.loads(raw)["count_output_tokens"] == 12, raw
    body["parameters"]["exponential_decay_length_penalty"] = [2, 1e6]
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    out = json.loads(raw)
    assert out["finish_reason"] == "stop" and out["count_output_tokens"] == 4, out


@pytest.mark.parametrize("value", [[1], [-1, 1.5], [1, 0.5], "x"])
def test_a_bad_length_penalty_names_the_field(server, value):
    body = {"inputs": PROMPT,
            "parameters": {"exponential_decay_length_penalty": value}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    err = json.loads(raw)["error"]
    assert status in (400, 417) and err["param"] == (
        "parameters.exponential_decay_length_penalty"), err
