"""LightLLM's /generate samples a temperature as sent (below 1e-5 greedy), where vLLM's
SamplingParams and so the OpenAI routes raise one in (0, 0.01) to 0.01: LightLLM's
SamplingParams has no such floor (lightllm/server/core/objs/sampling_params.py)."""

from __future__ import annotations

import json
import logging

from live_server import http

from aiollm.sampling_params import SamplingParams


def test_the_raise_can_be_turned_off():
    p = SamplingParams(temperature=0.005, raise_low_temperature=False)
    assert p.temperature == 0.005
    p.check()  # the engine's second check keeps it too
    assert p.temperature == 0.005
    assert SamplingParams(temperature=0.005).temperature == 0.01


def test_generate_samples_a_low_temperature_as_sent(server, caplog):
    """/generate at 0.005 was raised to 0.01 (and logged so), as LightLLM never raises it;
    /v1/completions still raises it, as vLLM does."""
    with caplog.at_level(logging.DEBUG, logger="aiollm.sampling_params"):
        status, _, raw = http(server, "POST", "/generate", json={
            "inputs": "Hello", "parameters": {"do_sample": True, "temperature": 0.005,
                                              "max_new_tokens": 2, "seed": 3}})
        assert status == 200, raw
        assert "0.005" not in caplog.text, caplog.text
        status, _, raw = http(server, "POST", "/v1/completions", json={
            "prompt": "Hello", "temperature": 0.005, "max_tokens": 2, "seed": 3})
        assert status == 200, raw
        assert "0.005" in caplog.text
    assert json.loads(raw)["choices"][0]["text"] is not None
