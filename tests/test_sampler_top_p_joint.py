"""top_p_joint rows (LightLLM's /generate): top-p's mass is that of the whole
distribution, as LightLLM's sampler cuts it (its cumulative sum runs over every token, and
top-k then keeps the k most likely of what it leaves), not that of the top-k set
renormalised, as vLLM's does (the default)."""

from __future__ import annotations

import math

import numpy as np
import torch

from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

PROBS = [0.4, 0.3, 0.2, 0.1]


def rows(joint: list[bool], **over) -> SamplingTensors:
    b = len(joint)
    cols = dict(temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, seed=0, step=0, top_logprobs=4)
    cols.update(over)
    return SamplingTensors.from_numpy(**{k: np.full(b, v) for k, v in cols.items()},
                                      top_p_joint=np.array(joint), vocab_size=len(PROBS),
                                      device="cpu", logprobs_mode="processed_logprobs")


def kept(joint: list[bool], **over) -> list[list[int]]:
    """The tokens each row may draw (finite processed logprobs)."""
    b = len(joint)
    out = sample(torch.tensor([PROBS] * b).log(), rows(joint, **over))
    return [sorted(int(t) for t, v in zip(ids, lps) if math.isfinite(v))
            for ids, lps in zip(out.top_ids, out.top_logprobs)]


def test_top_p_over_the_whole_distribution_with_top_k():
    # top_k 2, top_p 0.5: over all four, 0.4 comes before 0.3 (< 0.5): both stay; over
    # the top-2 set renormalised, 0.4 / 0.7 = 0.57 comes before it: 0.3 goes
    assert kept([True, False], top_k=2, top_p=0.5) == [[0, 1], [0]]
    # over the whole distribution with a full sort too (top_p alone, the same either way)
    assert kept([True, False], top_p=0.5) == [[0, 1], [0, 1]]
    # top_k 3 (a topk of 3 of the 4): 0.4 + 0.3 = 0.7 comes before 0.2 (> 0.6), so it
    # goes; renormalised, 0.7 / 0.9 = 0.78 as well
    assert kept([True, False], top_k=3, top_p=0.6) == [[0, 1], [0, 1]]


def test_the_draw_follows_the_joint_cut():
    """Drawn over many seeds, a joint row takes the second token, a vLLM row never."""
    b = 400
    st = SamplingTensors.from_numpy(
        temperature=np.ones(b), top_p=np.full(b, 0.5), top_k=np.full(b, 2),
        min_p=np.zeros(b), repetition_penalty=np.ones(b), presence_penalty=np.zeros(b),
        frequency_penalty=np.zeros(b), seed=np.arange(b), step=np.zeros(b, np.int64),
        top_logprobs=np.full(b, -1), top_p_joint=np.arange(b) % 2 == 0,
        vocab_size=len(PROBS), device="cpu")
    ids = sample(torch.tensor([PROBS] * b).log(), st).next_ids
    joint, vllm = ids[0::2], ids[1::2]
    assert set(vllm.tolist()) == {0}
    assert set(joint.tolist()) == {0, 1} and 0.3 < (joint == 1).float().mean() < 0.6
