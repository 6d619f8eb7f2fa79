"""A temperature in (0, 0.01) is raised to 0.01 with a warning, as vLLM's SamplingParams
raises it (its _MAX_TEMP); at 0.01 the sampler's logprobs stay finite."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from live_server import http

from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors
from aiollm.sampling_params import SamplingParams

MIN_TEMPERATURE = 0.01  # vLLM's _MAX_TEMP


@pytest.mark.parametrize("t", [1e-300, 1e-7, 1e-5, 0.001, 0.0099])
def test_a_tiny_temperature_is_raised_to_a_hundredth(t, caplog):
    """vLLM's SamplingParams raises a temperature in (0, 0.01) to 0.01 with a warning;
    aiollm took it as sent (below 1e-5 greedy: vLLM samples those at 0.01)."""
    with caplog.at_level(logging.DEBUG, logger="aiollm.sampling_params"):
        p = SamplingParams(temperature=t)
    assert p.temperature == MIN_TEMPERATURE and not p.greedy
    assert "temperature" in caplog.text and "0.01" in caplog.text
    p.temperature = np.float64(t)  # assigned after: the engine's check() raises it too
    p.check()
    assert p.temperature == 0.01


def test_zero_and_a_hundredth_stay_as_they_are(caplog):
    with caplog.at_level(logging.DEBUG, logger="aiollm.sampling_params"):
        assert SamplingParams(temperature=0).temperature == 0
        assert SamplingParams(temperature=0.01).temperature == 0.01
        assert SamplingParams(temperature=0.5).temperature == 0.5
    assert not caplog.records
    for bad in (-1e-7, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(temperature=bad)


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs", "processed_logits"])
def test_the_lowest_temperature_gives_finite_logprobs(mode):
    """At 0.01 the logits are multiplied by 100: with a logit_bias of +-100 on top of large
    logits no logprob of a kept token, nor a draw, may be inf or NaN."""
    b, v = 4, 257
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, v, generator=g) * 60
    logits[:, 7] += 100
    logits[:, 9] -= 100
    cols = dict(temperature=MIN_TEMPERATURE, top_p=[1.0, 0.9, 1.0, 0.3],
                top_k=[-1, -1, 5, 2], min_p=[0.0, 0.0, 0.2, 0.0], repetition_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, seed=np.arange(b), step=0,
                top_logprobs=5)
    st = SamplingTensors.from_numpy(
        **{k: np.broadcast_to(np.asarray(x), (b,)).copy() for k, x in cols.items()},
        vocab_size=v, device="cpu", logprobs_mode=mode)
    r = sample(logits, st)
    assert ((r.next_ids >= 0) & (r.next_ids < v)).all()
    assert torch.isfinite(r.logprobs).all(), r.logprobs
    assert not torch.isnan(r.top_logprobs).any()
    assert torch.isfinite(r.top_logprobs[:, 0]).all()


def test_a_tiny_temperature_is_served(server):
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hello", "max_tokens": 3, "temperature": 1e-6, "seed": 1, "logprobs": 2})
    assert status == 200, raw
    lps = json.loads(raw)["choices"][0]["logprobs"]["token_logprobs"]
    assert all(isinstance(x, float) for x in lps), lps


def test_the_raise_warns_once_not_per_request(caplog):
    """Under load every request of a client sending 0.001 was one WARNING line (vLLM's
    SamplingParams logs each): the first is a warning, the rest debug lines."""
    with caplog.at_level(logging.DEBUG, logger="aiollm.sampling_params"):
        for _ in range(50):
            assert SamplingParams(temperature=0.001).temperature == MIN_TEMPERATURE
    raised = [r for r in caplog.records if "temperature 0.001" in r.getMessage()]
    assert len(raised) == 50, caplog.text
    assert sum(r.levelno >= logging.WARNING for r in raised) <= 1, caplog.text


def test_a_generation_configs_tiny_temperature_leaves_the_warning_to_requests(
        tmp_path, monkeypatch, caplog):
    """Start-up checks a generation_config.json's temperature by building a SamplingParams:
    a file's 0.001 spent the one warning there (naming no file), so the first request raised
    to 0.01 (a client's 0.001, or the file's default) logged at debug level only."""
    from aiollm import sampling_params
    from aiollm.model.generation_defaults import sampling_defaults

    monkeypatch.setattr(sampling_params, "_low_temperature_warned", False)
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.001}')
    with caplog.at_level(logging.DEBUG, logger="aiollm.sampling_params"):
        assert sampling_defaults(str(tmp_path), "unused")["temperature"] == 0.001
        assert not caplog.records, caplog.text  # the file's value is valid: nothing to say
        assert SamplingParams(temperature=0.001).temperature == MIN_TEMPERATURE
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
