"""min-p comes before top-p, as in vLLM V1's sampler (min-p, an argmax-invariant logits
processor, runs after the temperature and before top-k/top-p): top-p's mass is that of the
tokens min-p keeps, renormalised. (transformers and SGLang cut top-p first; vLLM's order is
the one a vLLM user's min_p with top_p draws from.)"""

from __future__ import annotations

import math

import numpy as np
import torch

from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

PROBS = [0.4, 0.3, 0.2, 0.1]


def one_row(**over) -> SamplingTensors:
    cols = dict(temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, seed=0, step=0, top_logprobs=4)
    cols.update(over)
    return SamplingTensors.from_numpy(**{k: np.array([v]) for k, v in cols.items()},
                                      vocab_size=len(PROBS), device="cpu",
                                      logprobs_mode="processed_logprobs")


def kept(**over) -> dict[int, float]:
    """{token: processed logprob} of the tokens the row may draw."""
    out = sample(torch.tensor([PROBS]).log(), one_row(**over))
    return {int(t): float(v) for t, v in zip(out.top_ids[0], out.top_logprobs[0])
            if math.isfinite(v)}


def test_top_p_counts_the_mass_min_p_keeps():
    # min_p 0.3 drops 0.1 (below 0.3 * 0.4); over the rest (0.4, 0.3, 0.2) / 0.9, the two
    # most likely hold 0.78 >= top_p 0.75: 0.2 goes too. Over all four, 0.4 + 0.3 = 0.7 <
    # 0.75 would keep it
    got = kept(min_p=0.3, top_p=0.75)
    assert sorted(got) == [0, 1], got
    assert math.isclose(got[0], math.log(0.4 / 0.7), rel_tol=1e-5)
    assert sorted(kept(top_p=0.75)) == [0, 1, 2]  # top-p alone: unchanged
    assert sorted(kept(min_p=0.3)) == [0, 1, 2]  # min-p alone: unchanged
