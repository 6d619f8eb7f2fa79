"""Engine requests run as one group: the results of all, or the first failure, which
cancels the others (gather_all). The n completions of a prompt (SamplingParams.n, vLLM's n)
are such a group, as are generate_batch's prompts and the HTTP API's choices.

Each choice is an engine request of its own on the same prompt ids, as the HTTP API runs the
choices of one request, so the prefix cache lets the choices share the prompt's KV, and
choice i of a seeded request samples with choice_seed(seed, i) (seed + i: the choices
differ, the whole stays reproducible). The choices' outputs come back as one RequestOutput:
choice 0's, the others in other_choices.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiollm.engine.outputs import RequestOutput
from aiollm.sampling_params import SamplingParams, choice_seed, is_int

T = TypeVar("T")


async def gather_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """The results of `aws`, run at once, in their order; or the first exception, raised
    once the others are cancelled and have ended. asyncio.gather would leave them running,
    each holding its table slot and KV to its end (in LLM's loop, into its next call) for a
    result nobody reads. Cancelling the caller cancels them all too."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()  # a no-op for those done
        await asyncio.gather(*tasks, return_exceptions=True)


def n_of(params: object) -> int:
    """params' n when it asks for several completions, else 1 (a bad n, or no
    SamplingParams, goes the one-request way, whose submission refuses it by name)."""
    n = params.n if isinstance(params, SamplingParams) else 1
    return n if is_int(n) and n > 1 else 1


def choice_params(params: SamplingParams) -> list[SamplingParams]:
    """One SamplingParams per choice: n 1, choice i's seed. Raises InvalidRequest naming a
    bad field of params, n past its bound included: params is checked first (n may have
    been set since it was made; its copies, checked as they are made, have n 1)."""
    params.check()
    return [dataclasses.replace(params, n=1, best_of=None, seed=choice_seed(params.seed, i))
            for i in range(params.n)]


async def completions(params: SamplingParams,
                      one: Callable[[SamplingParams], Awaitable[RequestOutput]]
                      ) -> RequestOutput:
    """params.n completions, choice i from one(choice i's params), run at once as a group
    (gather_all: the first failure cancels the other choices and is raised); their outputs
    joined (choice 0's RequestOutput, the others its other_choices)."""
    first, *others = await gather_all([one(p) for p in choice_params(params)])
    first.other_choices = tuple(others)
    return first
