"""Engine requests run as one group: the results of all, or the first failure, which
cancels the others (gather_all). The n completions of a prompt (SamplingParams.n, vLLM's n)
are such a group, as are generate_batch's prompts and the HTTP API's choices.

Each choice is an engine request of its own on the same prompt ids, as the HTTP API runs the
choices of one request, so the prefix cache lets the choices share the prompt's KV, and
choice i of a seeded request samples with choice_seed(seed, i) (seed + i: the choices
differ, the whole stays reproducible). The choices' outputs come back as one RequestOutput:
choice 0's, the others in other_choices. A ChoiceGroup holds what the metrics measure of the
choices as a whole, as vLLM measures its parent request of n child requests.
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


class ChoiceGroup:
    """The n choices of one request (vLLM's parent request: one prompt of an API request
    with its n), each run as an engine request of its own: each choice's end is told to
    ended(), which says when the group as a whole is to be measured (vllm:request_params_n,
    vllm:request_max_num_generation_tokens; metrics.EngineMetrics.ended). A request of one
    choice needs none: it is measured alone."""

    __slots__ = ("n", "most", "_left", "_aborted")

    def __init__(self, n: int):
        self.n = n
        self.most = 0  # the most tokens one of its ended choices generated
        self._left = n
        self._aborted = False

    def ended(self, generated: int, aborted: bool) -> bool:
        """A choice ended, having generated `generated` tokens; `aborted`: its client went
        away or the server stopped. True once the last of the n has ended, none aborted:
        vLLM measures a parent request when its last child ends in its engine (stop, length
        or error), and a client's abort ends its children without measuring them."""
        self.most = max(self.most, generated)
        self._aborted |= aborted
        self._left -= 1
        return self._left == 0 and not self._aborted


def choice_group(n: int) -> ChoiceGroup | None:
    """The ChoiceGroup of a request whose n choices the caller runs as engine requests of
    their own (the HTTP API), to hand to each; None for one choice (measured alone)."""
    return ChoiceGroup(n) if n > 1 else None


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
                      one: Callable[[SamplingParams, ChoiceGroup], Awaitable[RequestOutput]]
                      ) -> RequestOutput:
    """params.n completions, choice i from one(choice i's params, their ChoiceGroup), run
    at once as a group (gather_all: the first failure cancels the other choices and is
    raised); their outputs joined (choice 0's RequestOutput, the others its other_choices)."""
    choices = choice_params(params)
    group = ChoiceGroup(len(choices))
    first, *others = await gather_all([one(p, group) for p in choices])
    first.other_choices = tuple(others)
    return first
