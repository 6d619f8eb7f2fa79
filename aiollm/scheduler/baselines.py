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

    def fitting(self, running: RunningBatch, waiting: Candidates, k_max: int,
                pool_capacity: int, pool_free: int) -> int:
        # Room for this step's decode token of every running request, and the watermark.
        room = pool_free - len(running) - int(self.cfg.watermark * pool_capacity)
        prompts = np.cumsum(waiting.prompt_len[:k_max])
        return int(np.searchsorted(prompts, room, side="right"))


class ConservativeScheduler(PeakScheduler):
    """Peak admission with the default prediction of Scheduler: every request to its cap."""

    name = "conservative"
