"""A logit_bias past [-100, 100] on the HTTP API is clipped to it, as vLLM's server clips
it (SamplingParams.from_optional), where aiollm refused it; a bias of no number is still
refused."""

from __future__ import annotations

import json

import pytest
from live_server import http


def _forced_token(server, bias: float) -> list[int]:
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hello", "max_tokens": 3, "temperature": 1.0, "seed": 5, "ignore_eos": True,
        "return_token_ids": True, "logit_bias": {"314": bias}})
    assert status == 200, raw[:300]
    return json.loads(raw)["choices"][0]["token_ids"]


@pytest.mark.parametrize("bias", [101, 1000, 1e300, 10**400])
def test_a_bias_past_100_is_clipped_as_vllm_clips_it(server, bias):
    """vLLM's server clips a logit_bias to [-100, 100] (SamplingParams.from_optional);
    aiollm refused 101 with a 400. Clipped, +1000 forces the token as +100 does."""
    assert _forced_token(server, bias) == _forced_token(server, 100) == [314] * 3


@pytest.mark.parametrize("bias", [-101, -1e6, -(10**400)])
def test_a_bias_below_minus_100_is_clipped(server, bias):
    """-1000 (a client's "never") bans the token as -100 does, on both the whole-dict pass
    and the entry-by-entry one (an int past a double goes that way)."""
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True, "logit_bias": {"314": 100, "315": 100}})
    assert status == 200, raw[:300]
    first = json.loads(raw)["choices"][0]["token_ids"][0]
    other = 629 - first  # the one of 314 and 315 greedy did not take
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True, "logit_bias": {"314": 100, "315": 100, str(first): bias}})
    assert status == 200, raw[:300]
    assert json.loads(raw)["choices"][0]["token_ids"] == [other] * 4


@pytest.mark.parametrize("bias", [True, None, "1", [1]])
def test_a_bias_of_no_number_is_still_refused(server, bias):
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hi", "max_tokens": 1, "logit_bias": {"5": bias}})
    assert status == 400, raw[:300]
    assert json.loads(raw)["error"]["param"] == "logit_bias"
