"""SamplingParams(logprobs=True) asks for one top logprob, as vLLM's SamplingParams reads
True (and prompt_logprobs=True) as 1: vLLM scripts that pass it were refused ("logprobs
must be an integer in [0, 20], got True")."""

from __future__ import annotations

import numpy as np

from aiollm.sampling_params import SamplingParams


def test_logprobs_true_is_one():
    assert SamplingParams(logprobs=True).logprobs == 1
    assert SamplingParams(prompt_logprobs=True, max_tokens=0).prompt_logprobs == 1
    assert SamplingParams(logprobs=np.bool_(True)).logprobs == 1
    p = SamplingParams()
    p.logprobs = True  # assigned after construction: the engine's check() reads it alike
    p.check()
    assert p.logprobs == 1 and type(p.logprobs) is int


def test_logprobs_false_is_zero():
    """vLLM keeps False as it is and reads it as Python does, 0: the chosen token's logprob
    only (its engine tests `logprobs is not None`). A vLLM script passing a flag
    (logprobs=args.logprobs) ran there and was refused here ("got False")."""
    assert SamplingParams(logprobs=False).logprobs == 0
    assert SamplingParams(prompt_logprobs=np.bool_(False), max_tokens=0).prompt_logprobs == 0
    p = SamplingParams()
    p.logprobs = False
    p.check()
    assert p.logprobs == 0 and type(p.logprobs) is int
