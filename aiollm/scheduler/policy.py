"""The admission interface every policy implements, and the limits all of them share.

Before each step the engine asks `admit(running, waiting, pool_capacity, pool_free,
prefill_budget)` how many requests from the front of the waiting queue start their prefill
in that step (strict queue order: a request that does not fit blocks those behind it). All
policies respect the same hard limits: at most `max_running` requests running, each
admitted request starting within `prefill_budget` (the prompts before it take less than the
budget; the last one admitted may get only a first chunk, and the engine prefills the rest
of it in the next steps), and never a prompt that does not fit in the free pool now: the
policies count KV for whole prompts, only the step's prefill is cut into chunks. (The engine
allocates each chunk's KV as it runs; a running request's next chunk is planned before
anyone is admitted, so no admission takes what a chunked prompt still needs; only the
running requests' decode tokens can, in a pool a policy let grow too full, and the engine
then pauses the latest request.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from aiollm.scheduler.batch import Candidates, RunningBatch, as_column
from aiollm.scheduler.config import SchedulerConfig
from aiollm.scheduler.peak import future_peak


class Scheduler(ABC):
    """An admission policy. One instance lives as long as the engine: Past-Future keeps
    its history of finished requests in it."""

    name: ClassVar[str]

    def __init__(self, cfg: SchedulerConfig | None = None):
        self.cfg = cfg if cfg is not None else SchedulerConfig()

    def admit(
        self,
        running: RunningBatch,
        waiting: Candidates,
        pool_capacity: int,
        pool_free: int,
        prefill_budget: int,
    ) -> int:
        """How many requests from the front of `waiting` to admit now (0..len(waiting)):
        of the candidates the shared limits allow (admission_limit), those the policy's
        view of the KV pool holds (fitting), and with nothing running at least the head
        when its prompt fits (ensure_progress). Sizes in tokens. `running.prefill_left` is
        the caller's; the candidates' is set here, from prefill_budget."""
        k_max = self.admission_limit(running, waiting, prefill_budget)
        if k_max == 0:
            return 0
        waiting = waiting.head(k_max).chunked(prefill_budget)
        k = self.fitting(running, waiting, k_max, pool_capacity, pool_free)
        return self.ensure_progress(k, running, waiting, pool_free)

    @abstractmethod
    def fitting(self, running: RunningBatch, waiting: Candidates, k_max: int,
                pool_capacity: int, pool_free: int) -> int:
        """How many of the first k_max (>= 1) candidates the policy admits by KV: 0..k_max."""

    def predict(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> np.ndarray:
        """Predicted total output length of each request (the engine stores it in the
        table's predicted_output_len). Policies without a model of the past assume the cap."""
        g = as_column(output_len)
        return np.maximum(as_column(max_new_tokens, g.shape[0]), g + 1)

    def predicted_peak(self, running: RunningBatch) -> int:
        """Most KV tokens the running batch is predicted to hold at once while it finishes,
        none admitted (peak.future_peak of the lengths `predict` gives: the median draw of
        the paper estimator, which leaves its random draws alone; the cap for policies
        without a model of the past). Tokens. Admission tests the same peak with the
        candidates added."""
        g = running.output_len
        pred = self.predict(g, running.max_new_tokens, running.ignore_eos)
        return future_peak(running.kv_len, pred - g + running.prefill_left)

    def on_finish(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> None:
        """A request (or an array of them) finished normally, by a stop condition or by
        reaching max_new_tokens. Aborted requests must not be reported: their length says
        nothing about how long outputs are."""

    def admission_limit(
        self, running: RunningBatch, waiting: Candidates, prefill_budget: int
    ) -> int:
        """The most candidates the shared limits allow, before looking at KV: free running
        slots, and the candidates whose prefill starts this step, those the prompts before
        them leave budget for (at least the head). The last may get a first chunk of a few
        tokens only, and is admitted all the same: the engine would otherwise leave those
        tokens unused (or computing padding rows of the step's graph bucket), and the
        request, first in line, finishes its prefill no later than if it were admitted
        whole in the next step, leaving that step more budget for the ones behind it."""
        slots = self.cfg.max_running - len(running)
        if slots <= 0 or len(waiting) == 0:
            return 0
        prompts = waiting.prompt_len[:slots]
        before = np.cumsum(prompts) - prompts  # prompt tokens ahead of each candidate
        within_budget = max(1, int(np.searchsorted(before, prefill_budget, side="left")))
        return min(slots, within_budget)

    @staticmethod
    def fits_now(waiting: Candidates, k: int, n_running: int, pool_free: int) -> bool:
        """Whether the first k prompts plus this step's decode token of every running
        request fit in the free pool."""
        return int(waiting.kv_need(k).sum()) + n_running <= pool_free

    def ensure_progress(
        self, k: int, running: RunningBatch, waiting: Candidates, pool_free: int
    ) -> int:
        """With nothing running, admit the head if its prompt fits, whatever the policy
        predicts: otherwise a request predicted larger than the pool would wait forever.
        (The engine rejects requests whose prompt + max_new_tokens exceed the pool.)"""
        idle = k == 0 and len(running) == 0 and len(waiting) > 0
        return 1 if idle and self.fits_now(waiting, 1, 0, pool_free) else k
