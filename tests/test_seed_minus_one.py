"""seed -1 asks for no seed, as vLLM's SamplingParams reads it (its __post_init__ sets a seed
of -1 to None): front ends that send -1 for "random" (llama.cpp's convention) get a fresh
draw on each request, and each of n choices its own, not one fixed seed."""

from __future__ import annotations

import asyncio

from conftest import run

from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams, choice_seed


def test_seed_minus_one_is_no_seed():
    assert SamplingParams(seed=-1).seed is None
    assert [choice_seed(-1, i) for i in range(3)] == [None, None, None]
    # other negative seeds stay seeds, choice i of them seed + i within [-2**63, -1)
    assert SamplingParams(seed=-2).seed == -2
    assert choice_seed(-3, 1) == -2 and choice_seed(-(2**63), 1) == -(2**63) + 1
    assert [choice_seed(-2, i) for i in range(3)] == [-2, -(2**63), -(2**63) + 1]
    assert [choice_seed(2**63 - 1, i) for i in range(2)] == [2**63 - 1, 0]


def test_seed_minus_one_draws_afresh_on_each_request(loop, tiny):
    params = SamplingParams(seed=-1, temperature=1.0, max_tokens=8, ignore_eos=True, n=2)

    async def go():
        eng = Engine(tiny, load_format="dummy", kv_tokens=1024, device="cpu")
        await eng.start()
        try:
            return await asyncio.gather(*(eng.generate([5, 6, 7], params) for _ in range(2)))
        finally:
            await eng.stop()

    outs = [c.token_ids for out in run(loop, go()) for c in out.outputs]
    # a random model's draws over its 49,152 tokens: 4 equal 8-token outputs only by a seed
    assert len({tuple(ids) for ids in outs}) == 4, outs
