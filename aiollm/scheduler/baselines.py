"""The two classic admission policies Past-Future is measured against.

aggressive: admit while the prompts fit in the pool now (vLLM's rule, with its 1% watermark
by default). Running requests then grow into the space and the engine preempts when the
pool runs out.

conservative: reserve prompt + max_new_tokens for every request. Implemented as the peak
rule of past_future.py with every request predicted to run to its cap, which is the
strongest policy that can never preempt; reserving the sum of prompt + max_new_tokens with
no regard to when requests finish would be strictly weaker.
"""

from __future__ import annotations

import numpy as np

from aiollm.scheduler.batch import Candidates, RunningBatch
from aiollm.scheduler.past_future import PeakScheduler
from aiollm.scheduler.policy import Scheduler


class AggressiveScheduler(Scheduler):
    name = "aggressive"

    def admit(
        self,
        running: RunningBatch,
        waiting: Candidates,
        pool_capacity: int,
        pool_free: int,
        prefill_budget: int,
    ) -> int:
        k_max = self.admission_limit(running, waiting, prefill_budget)
        if k_max == 0:
            return 0
        # Room for this step's decode token of every running request, and the watermark.
        room = pool_free - len(running) - int(self.cfg.watermark * pool_capacity)
        prompts = np.cumsum(waiting.prompt_len[:k_max])
        k = int(np.searchsorted(prompts, room, side="right"))
        return self.ensure_progress(k, running, waiting, pool_free)


class ConservativeScheduler(PeakScheduler):
    """Peak admission with the default prediction of Scheduler: every request to its cap."""

    name = "conservative"
