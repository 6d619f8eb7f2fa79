"""Admission control: which waiting requests get KV and start running, and when.

The engine, before each step:

    sched = make_scheduler("past_future", SchedulerConfig())         # once
    k = sched.admit(running, waiting, pool_capacity, pool_free, prefill_budget)
    # start the prefill of waiting[:k] in this step (the last may get a first chunk only);
    # then, for the running batch:
    table.col("predicted_output_len")[slots] = sched.predict(g, max_new_tokens, ignore_eos)
    sched.on_finish(output_len, max_new_tokens, ignore_eos)          # finished, not aborted

`running` is a RunningBatch and `waiting` a Candidates (numpy columns, queue order; paused
requests to resume go first, with prompt_len = prompt + tokens generated so far and
output_len = those tokens). No policy looks past the first max_running - len(running)
candidates, so the engine may pass just that head of the queue. Policies, by name:
"aggressive" (default), "past_future", "conservative"; Past-Future's estimate of the future
is cfg.estimator ("quantile" or the paper's sampled "paper"). When the prediction turns out short
and the pool runs out, the engine pauses the most recently admitted request(s) and resumes
them by recompute; no policy here needs to be told, they see the paused requests again in
`waiting`. The engine must reject requests whose prompt + max_new_tokens exceed the pool:
with nothing running, the head of the queue is admitted whenever its prompt fits.
"""

from __future__ import annotations

from aiollm.scheduler.baselines import AggressiveScheduler, ConservativeScheduler
from aiollm.scheduler.batch import Candidates, RunningBatch
from aiollm.scheduler.blind import LengthBlind
from aiollm.scheduler.config import SchedulerConfig
from aiollm.scheduler.history import OutputLengthHistory
from aiollm.scheduler.past_future import PastFutureScheduler, PeakScheduler
from aiollm.scheduler.peak import future_peak
from aiollm.scheduler.policy import Scheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (PastFutureScheduler, AggressiveScheduler, ConservativeScheduler)
}
DEFAULT_SCHEDULER = AggressiveScheduler.name  # the goodput numbers: bench/README.md


def make_scheduler(name: str = DEFAULT_SCHEDULER, cfg: SchedulerConfig | None = None) -> Scheduler:
    """A fresh scheduler of the named policy (one of SCHEDULERS)."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}"
        ) from None
    sched = cls(cfg)
    if sched.cfg.blind_cap is not None:
        return LengthBlind(sched, sched.cfg.blind_cap)
    return sched


__all__ = [
    "DEFAULT_SCHEDULER",
    "SCHEDULERS",
    "AggressiveScheduler",
    "Candidates",
    "LengthBlind",
    "ConservativeScheduler",
    "OutputLengthHistory",
    "PastFutureScheduler",
    "PeakScheduler",
    "RunningBatch",
    "Scheduler",
    "SchedulerConfig",
    "future_peak",
    "make_scheduler",
]
