"""Out-of-memory recovery: a step that runs the device out of memory pauses its requests and
sets the planner's batch limits to half that step's size (its requests; its tokens when it
prefilled, else half the token budget: decodes alone say nothing of chunk sizes); good
steps double them back. A request that runs out of
memory even alone in the smallest step the limits allow fails.

A paused request keeps its tokens and gives back its KV (planner.pause); it resumes later
by recomputing its prefix, so nothing is lost. The limits return over a few hundred steps
rather than at once, so a load that runs out of memory once does not do so at every step.

The smallest step is one request with at most min_token_budget tokens (one decode token, or
a prefill chunk no longer than the smallest token budget): halving cannot make it smaller,
so pausing such a request only ran the same step again, for ever, while its client waited
(and an out-of-memory step is no failed step to the health probe). It gets SMALLEST_TRIES
such steps, then fails with RequestFailed (HTTP 500) and the engine serves the requests
behind it. Waiting for the other requests to end first would not help: their KV lives in
the pool allocated at start, not in the memory a step allocates, and at this size no other
request shares the step. What a retry can change is the allocator's cache (given back at
every shrink) and the step that was in flight beside it (none at the retry: a paused
request is admitted again by a fresh plan), hence one retry and no more.

vLLM stops its engine on an out-of-memory error in a step (every request fails); SGLang
retracts decode requests when its KV pool runs short, which the planner's eviction does here.
"""

from __future__ import annotations

import logging

import torch

from aiollm.engine.planner import Planner, Step
from aiollm.engine.request import Phase, Request

log = logging.getLogger(__name__)

REGROW_STEPS = 64  # good steps between doublings of the limits
SMALLEST_TRIES = 2  # out-of-memory steps of a request alone at the smallest size before it fails
MIN_TOKEN_BUDGET = 64  # the token budget's floor (less when the engine was configured with less)


class OomBackoff:
    """The planner's batch limits after out-of-memory steps: max_running (requests) and
    token_budget (tokens a step), never above what the engine was configured with nor
    below (1, min_token_budget)."""

    def __init__(self, planner: Planner, device: torch.device):
        self.planner = planner
        self.device = device
        self.max_running = planner.max_running  # the configured limits
        self.token_budget = planner.token_budget
        self.min_token_budget = min(MIN_TOKEN_BUDGET, planner.token_budget)
        self._good_steps = 0

    def out_of_memory(self, step: Step, error: BaseException) -> tuple[Request, str] | None:
        """The device ran out of memory in `step`. A step of the smallest size whose request
        has now run out of memory SMALLEST_TRIES times in such steps: (that request, the
        message it fails with), which the caller fails; it is not paused. Otherwise None,
        after shrink(step)."""
        if len(step.reqs) == 1 and step.num_tokens <= self.min_token_budget:
            r = step.reqs[0]
            if r.phase is Phase.RUNNING:
                r.smallest_ooms += 1
                if r.smallest_ooms >= SMALLEST_TRIES:
                    return r, self._too_large(r, step, error)
        self.shrink(step)
        return None

    @staticmethod
    def _too_large(r: Request, step: Step, error: BaseException) -> str:
        prompt, generated = len(r.prompt_ids), len(r.output_ids)
        log.error("request %d ran out of device memory alone in a step of %d tokens, %d times: "
                  "failing it", r.rid, step.num_tokens, r.smallest_ooms)
        return (f"out of device memory: this request ({prompt + generated} tokens: {prompt} "
                f"prompt + {generated} generated) ran out of memory {r.smallest_ooms} times "
                f"alone in a step of {step.num_tokens} tokens, the smallest step the engine "
                f"makes; it may fit with a shorter prompt or max_tokens, or on a server with "
                f"more free device memory ({error})")

    def shrink(self, step: Step) -> None:
        """The device ran out of memory in `step`: pause its running requests, latest
        admitted first, bring the limits down to half the step's requests and tokens (never
        up, never below the floors) and give the allocator's cached blocks back."""
        p = self.planner
        log.warning("out of device memory in a step of %d requests / %d tokens: pausing them "
                    "and planning steps of at most half that", len(step.reqs), step.num_tokens)
        for r in sorted(step.reqs, key=lambda r: -r.admitted_seq):
            if r.phase is Phase.RUNNING:
                p.pause(r)
        # half of what failed, not of the limits: a step far under them that runs out of
        # memory would otherwise fail again at each halving down to its size. A step of
        # decodes alone (a token a request) says nothing of prefill chunks: the budget that
        # bounds them halves, rather than falling to a handful of tokens for hundreds of steps
        p.max_running = max(1, min(p.max_running, len(step.reqs)) // 2)
        prefilled = any(n > 1 for n in step.extend_lens)
        tokens = step.num_tokens if prefilled else p.token_budget
        p.token_budget = max(self.min_token_budget, min(p.token_budget, tokens) // 2)
        self._good_steps = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step_done(self) -> None:
        """A step completed: every REGROW_STEPS of them, double the shrunk limits back."""
        p = self.planner
        if p.max_running >= self.max_running and p.token_budget >= self.token_budget:
            return
        self._good_steps += 1
        if self._good_steps >= REGROW_STEPS:
            self._good_steps = 0
            p.max_running = min(self.max_running, 2 * p.max_running)
            p.token_budget = min(self.token_budget, 2 * p.token_budget)
