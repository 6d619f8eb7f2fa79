"""A logit_bias over the whole vocabulary (49,152 entries for the default SmolLM2), through
the real server and the Engine API: served as a small one is, and a bad entry among the
good ones refused with the message it gets alone. Its checks and per-step masks run as
whole-dict passes; what they refuse is looked at entry by entry to be named."""

from __future__ import annotations

import json

import pytest
from live_server import http

from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, SamplingParams

VOCAB = 49152  # SmolLM2's
FULL = {str(t): 0.25 for t in range(VOCAB)}


def _refusal(server, bias: dict) -> dict:
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hi", "max_tokens": 1, "logit_bias": bias})
    assert status == 400, raw[:300]
    return json.loads(raw)["error"]


# one bad entry (alone, or with the entry it clashes with), as test_structured.py's cases,
# and keys the whole-dict pass must not read as ids: one holding its separator (NUL),
# digits past any vocabulary
@pytest.mark.parametrize("bad", [
    {" 1": 5}, {"+1": 5}, {"1_0": 5}, {"\u0661": 5}, {"": 5}, {"0x1": 5},
    {"1": 5, "01": 5}, {"1\u00002": 5}, {"\u00001": 5}, {"1\u0000": 5}, {"9" * 13: 5},
    {"9" * 5000: 5}, {str(VOCAB): 5}, {"99999999": 5},
    {"5": True}, {"5": None}, {"5": "1"}, {"5": [1]}])
def test_a_bad_entry_among_a_vocabulary_is_named_as_alone(server, bad):
    alone, among = _refusal(server, bad), _refusal(server, {**FULL, **bad})
    assert among == alone and alone["param"] == "logit_bias", (among, alone)


def test_a_vocabulary_of_biases_steers_every_choice(server):
    """+100 on one token, -100 on every other: each of n sampled choices writes only it
    (each step's bias rows are the whole vocabulary, one per choice)."""
    target = 314
    bias = {str(t): -100 for t in range(VOCAB)}
    bias[str(target)] = 100
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hello", "max_tokens": 4, "n": 3, "temperature": 1.0, "seed": 3,
        "ignore_eos": True, "return_token_ids": True, "logit_bias": bias})
    assert status == 200, raw[:300]
    choices = json.loads(raw)["choices"]
    assert [c["token_ids"] for c in choices] == [[target] * 4] * 3, choices


def test_engine_check_names_a_bad_bias_among_a_vocabulary(server):
    """The Engine API's check of a Constraint: ids out of the vocabulary, and biases out of
    [-100, 100] or of no number, named among a vocabulary's worth as alone."""
    full = {t: 0.5 for t in range(VOCAB)}

    def refusal(bias: dict) -> str:
        params = SamplingParams(max_tokens=1, constraint=Constraint(logit_bias=bias))
        with pytest.raises(InvalidRequest) as e:
            server.call(lambda: server.engine.check([1, 2], params))
        assert e.value.param == "logit_bias"
        return str(e.value)

    for bad in ({VOCAB: 1.0}, {-1: 1.0}, {2**70: 1.0}, {7: True}, {7: 100.5}, {7: 10**400},
                {7: float("nan")}, {7: None}):
        assert refusal({**full, **bad}) == refusal(bad), bad
    assert server.call(lambda: server.engine.check(
        [1, 2], SamplingParams(max_tokens=1, constraint=Constraint(logit_bias=full)))) == [1, 2]
