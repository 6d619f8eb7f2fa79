"""exponential_decay_length_penalty (transformers' and LightLLM's): once a row's output
holds more than `start` tokens, each eos logit x grows by |x| * (factor ** (step - start)
- 1), after the penalties; below that, and on rows without it, nothing changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aiollm.errors import InvalidRequest
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors
from aiollm.sampling_params import SamplingParams

EOS = 3
LOGITS = [2.0, 1.0, 0.5, -1.0]  # eos (3) is the least likely


def processed(step: int, start: int, factor: float) -> list[float]:
    st = SamplingTensors.from_numpy(
        temperature=np.zeros(1), top_p=np.ones(1), top_k=np.full(1, -1), min_p=np.zeros(1),
        repetition_penalty=np.ones(1), presence_penalty=np.zeros(1),
        frequency_penalty=np.zeros(1), seed=np.zeros(1, np.int64),
        step=np.full(1, step), top_logprobs=np.full(1, 0), vocab_size=4, device="cpu",
        length_penalty=np.array([[start, factor]]), eos_ids=[EOS],
        logprobs_mode="processed_logits")
    out = sample(torch.tensor([LOGITS]), st)
    return out, st


def test_eos_logit_grows_past_start():
    out, _ = processed(step=5, start=2, factor=2.0)
    # -1 + |-1| * (2 ** 3 - 1) = 6: eos is now the argmax
    assert int(out.next_ids[0]) == EOS
    assert math.isclose(float(out.logprobs[0]), 6.0, rel_tol=1e-6)


@pytest.mark.parametrize("step,start,factor", [(2, 2, 2.0), (0, 0, 3.0), (9, 1, 1.0)])
def test_nothing_changes_up_to_start_or_at_factor_one(step, start, factor):
    out, _ = processed(step, start, factor)
    assert int(out.next_ids[0]) == 0


def test_the_penalty_is_checked():
    assert SamplingParams(exponential_decay_length_penalty=(4, 1.5))
    for bad in ((4,), (-1, 1.5), (1, 0.5), (1.5, 2.0), "x", (1, float("nan"))):
        with pytest.raises(InvalidRequest) as e:
            SamplingParams(exponential_decay_length_penalty=bad)
        assert e.value.param == "exponential_decay_length_penalty"


def test_raw_logprobs_of_a_grammar_row_leave_the_penalty_out():
    """raw_logprobs report the model's row (less a grammar's forbidden tokens): a row with
    a grammar and a length penalty in effect reports eos's logprob as it came in, not the
    raised one (the grammar is not all that changed the row)."""
    st = SamplingTensors.from_numpy(
        temperature=np.zeros(1), top_p=np.ones(1), top_k=np.full(1, -1), min_p=np.zeros(1),
        repetition_penalty=np.ones(1), presence_penalty=np.zeros(1),
        frequency_penalty=np.zeros(1), seed=np.zeros(1, np.int64),
        step=np.full(1, 5), top_logprobs=np.full(1, 4), vocab_size=4, device="cpu",
        length_penalty=np.array([[2, 2.0]]), eos_ids=[EOS], logprobs_mode="raw_logprobs")
    st.allowed = st.grammar = torch.full((1, 1), -1, dtype=torch.int32)  # all allowed
    out = sample(torch.tensor([LOGITS]), st)
    assert int(out.next_ids[0]) == EOS  # the draw saw the raised eos logit
    want = torch.tensor(LOGITS).log_softmax(-1)[EOS]
    assert math.isclose(float(out.logprobs[0]), float(want), rel_tol=1e-5), out.logprobs


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_banned_eos_stays_banned_beside_a_length_penalty(temperature):
    """Rows whose eos is -inf (here allowed_token_ids leave it out) in a batch where some row's
    length penalty is in effect: -inf + |-inf| * scale was NaN (scale 0 on the rows without
    the penalty, inf * scale on a row with it), and a NaN eos logit won the draw on both."""
    b = 3
    st = SamplingTensors.from_numpy(
        temperature=np.full(b, temperature), top_p=np.full(b, 0.9), top_k=np.full(b, 3),
        min_p=np.zeros(b), repetition_penalty=np.ones(b), presence_penalty=np.zeros(b),
        frequency_penalty=np.zeros(b), seed=np.arange(b), step=np.full(b, 5),
        top_logprobs=np.full(b, 2), vocab_size=4, device="cpu",
        length_penalty=np.array([[2, 2.0], [0, 1.0], [2, 2.0]]), eos_ids=[EOS],
        logprobs_mode="processed_logprobs")
    # rows 0 and 1 may draw tokens 0-2 only; row 2 anything (its raised eos wins)
    st.allowed = torch.tensor([[0b0111], [0b0111], [-1]], dtype=torch.int32)
    out = sample(torch.tensor([LOGITS] * b), st)
    assert EOS not in out.next_ids.tolist()[:2], out.next_ids
    assert int(out.next_ids[2]) == EOS
    assert not torch.isnan(out.logprobs).any() and not torch.isnan(out.top_logprobs).any()
