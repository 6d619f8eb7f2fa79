"""The prefix cache after failed steps, in other orders than
tests/test_prefix_cache_step_failure.py: a failure during decode while a later request
shares the prompt, two failed steps in a row (a device's error is sticky: the step after
fails too), and a failure of a step holding n > 1 siblings that share their prompt. The
same injection: the step's launch returns, its done event raises, its KV is garbage.
What must hold: every request ends (failed, or with the tokens of a fault-free run), no
garbage stays cached, and every slot and reference comes back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_prefix_cache import check_every_step
from test_prefix_cache_step_failure import (  # noqa: F401 - tiny: a fixture
    GREEDY,
    a_and_b_prompts,
    chunk_ending_at,
    failure_scenario,
    fail_steps,
    tiny,
)

from aiollm import SamplingParams
from aiollm.errors import RequestFailed


def _outcome(res, ref):
    """A request's result is its failure or the fault-free run's tokens."""
    if isinstance(res, BaseException):
        assert isinstance(res, RequestFailed) and "step failed" in str(res), res
        return "failed"
    assert res.token_ids == ref
    return "ok"


@pytest.mark.parametrize("count", [1, 2, 3])
def test_decode_failure_while_a_later_request_shares_the_prompt(tiny, count):
    """A decodes its 40-token prompt; B (the same prompt, one more token) arrives during
    A's decode and reuses A's cached prompt. A decode step (and `count` - 1 after it) fails."""
    rng = np.random.default_rng(7)
    a_prompt = rng.integers(3, 256, 40).tolist()
    b_prompt = a_prompt + [11]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def body(eng):
        ref_a = (await eng.generate(a_prompt, params)).token_ids
        ref_b = (await eng.generate(b_prompt, params)).token_ids
        eng.flush_cache()
        check_every_step(eng)
        decoding_a = (lambda s: any(r.prompt_ids == a_prompt and len(r.output_ids) >= 3
                                    for r in s.reqs))
        failed, restore = fail_steps(eng, decoding_a, count)

        async def b_later():
            while not any(r.prompt_ids == a_prompt and len(r.output_ids) >= 2
                          for r in eng._requests.values()):
                await asyncio.sleep(0.001)
            return await eng.generate(b_prompt, params)

        a, b = await asyncio.gather(eng.generate(a_prompt, params), b_later(),
                                    return_exceptions=True)
        restore()
        assert 0 < len(failed) <= count  # (fewer when no step was left to fail)
        assert _outcome(a, ref_a) == "failed"
        _outcome(b, ref_b)
        assert (await eng.generate(b_prompt, params)).token_ids == ref_b

    failure_scenario(tiny, body)


@pytest.mark.parametrize("count", [2, 3])
def test_prefill_failures_in_a_row(tiny, count):
    """As the merged test's chunk failure, with the steps after it failing too."""
    a_prompt, b_prompt = a_and_b_prompts()

    async def body(eng):
        ref = (await eng.generate(b_prompt, GREEDY)).token_ids
        eng.flush_cache()
        check_every_step(eng)
        failed, restore = fail_steps(eng, chunk_ending_at(a_prompt, 96), count)
        a, b = await asyncio.gather(eng.generate(a_prompt, GREEDY),
                                    eng.generate(b_prompt, GREEDY), return_exceptions=True)
        restore()
        assert 0 < len(failed) <= count  # (fewer when no step was left to fail)
        assert _outcome(a, None) == "failed"
        _outcome(b, ref)
        assert (await eng.generate(b_prompt, GREEDY)).token_ids == ref

    failure_scenario(tiny, body)


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("when", ["prefill", "decode"])
def test_failure_with_n_siblings_sharing_the_prompt(tiny, count, when):
    """n = 3 choices on a 70-token prompt (prefilled in chunks: the siblings share it
    through the cache); a step of theirs fails. Then a fresh request on that prompt gets
    the fault-free tokens."""
    rng = np.random.default_rng(9)
    prompt = rng.integers(3, 256, 70).tolist()
    three = SamplingParams(n=3, max_tokens=6, temperature=0, ignore_eos=True)

    async def body(eng):
        ref = (await eng.generate(prompt, GREEDY)).token_ids
        eng.flush_cache()
        check_every_step(eng)
        if when == "prefill":
            which = chunk_ending_at(prompt, 48)
        else:
            which = (lambda s: any(r.prompt_ids == prompt and len(r.output_ids) >= 2
                                   for r in s.reqs))
        failed, restore = fail_steps(eng, which, count)
        res = (await asyncio.gather(eng.generate(prompt, three), return_exceptions=True))[0]
        restore()
        assert 0 < len(failed) <= count  # (fewer when no step was left to fail)
        assert isinstance(res, RequestFailed), res
        assert (await eng.generate(prompt, GREEDY)).token_ids == ref

    failure_scenario(tiny, body)
