"""logit_bias comes before the repetition penalty, as in vLLM V1's sampler (allowed ids, bad
words, min_tokens and logit_bias, then the penalties) and in transformers' generate
(SequenceBiasLogitsProcessor before RepetitionPenaltyLogitsProcessor): the penalty divides
or multiplies the biased logit, by the biased logit's sign."""

from __future__ import annotations

import numpy as np
import torch

from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

V = 8
SEEN = 2  # in the prompt, so under the repetition penalty
LOGITS = [1.2, 0.0, -2.0, -3.0, -3.0, -3.0, -3.0, -3.0]


def one_row(mode: str = "raw_logprobs") -> SamplingTensors:
    """A greedy row with repetition penalty 2 over a prompt of [SEEN], logit_bias +5 on it."""
    one = lambda v, t=np.float32: np.array([v], t)  # noqa: E731
    st = SamplingTensors.from_numpy(
        temperature=one(0.0), top_p=one(1.0), top_k=one(-1, np.int64), min_p=one(0.0),
        repetition_penalty=one(2.0), presence_penalty=one(0.0), frequency_penalty=one(0.0),
        seed=one(0, np.int64), step=one(0, np.int64), top_logprobs=one(0, np.int64),
        vocab_size=V, device="cpu", token_ids=np.array([[SEEN]]),
        prompt_lens=one(1, np.int64), logprobs_mode=mode)
    st.bias_ids, st.bias = torch.tensor([[SEEN]]), torch.tensor([[5.0]])
    return st


def test_bias_is_added_before_the_repetition_penalty():
    out = sample(torch.tensor([LOGITS]), one_row("processed_logits"))
    # (-2 + 5) / 2 = 1.5 beats 1.2; the penalty first would give -2 * 2 + 5 = 1.0
    assert out.next_ids.tolist() == [SEEN]
    assert out.logprobs.tolist() == [1.5]
