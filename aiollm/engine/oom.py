"""Out-of-memory recovery: a step that runs the device out of memory pauses its requests and
halves the planner's batch limits; good steps double them back.

A paused request keeps its tokens and gives back its KV (planner.pause); it resumes later
by recomputing its prefix, so nothing is lost. The limits return over a few hundred steps
rather than at once, so a load that runs out of memory once does not do so at every step.
"""

from __future__ import annotations

import logging

import torch

from aiollm.engine.planner import Planner, Step
from aiollm.engine.request import Phase

log = logging.getLogger(__name__)

REGROW_STEPS = 64  # good steps between doublings of the limits


class OomBackoff:
    """The planner's batch limits after out-of-memory steps: max_running (requests) and
    token_budget (tokens a step), never above what the engine was configured with."""

    def __init__(self, planner: Planner, device: torch.device):
        self.planner = planner
        self.device = device
        self.max_running = planner.max_running  # the configured limits
        self.token_budget = planner.token_budget
        self._good_steps = 0

    def shrink(self, step: Step) -> None:
        """The device ran out of memory in `step`: pause its running requests, latest
        admitted first, halve the limits and give the allocator's cached blocks back."""
        p = self.planner
        log.warning("out of device memory in a step of %d requests / %d tokens: pausing them "
                    "and halving the batch limits", len(step.reqs), step.num_tokens)
        for r in sorted(step.reqs, key=lambda r: -r.admitted_seq):
            if r.phase is Phase.RUNNING:
                p.pause(r)
        p.max_running = max(1, min(p.max_running, len(step.reqs)) // 2)
        p.token_budget = max(min(64, p.token_budget), p.token_budget // 2)
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
