"""Past-Future admission (Gong et al., ASPLOS'25): admit while the predicted future peak fits.

Every running request and every candidate gets a predicted final output length (the
"past": the history of finished lengths, conditioned on what each request has already
produced). From those, the KV tokens in use at every future step follow (see peak.py); a
prefix of the waiting queue is admitted only if the peak over all future steps stays within
the tokens the running batch holds plus the free pool.

`PeakScheduler` is that rule with a pluggable `predict`; Past-Future plugs in the history,
the conservative baseline (baselines.py) plugs in max_new_tokens. A policy may also give
several drawn futures (rows of `remaining`): a prefix then fits when every row's peak fits,
which is how the paper's estimator (estimator="paper", sampled.py) takes the largest of its
sampled peaks.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from aiollm.scheduler.batch import Candidates, RunningBatch
from aiollm.scheduler.config import SchedulerConfig
from aiollm.scheduler.history import OutputLengthHistory
from aiollm.scheduler.peak import future_peak, largest_fitting_prefix
from aiollm.scheduler.policy import Scheduler
from aiollm.scheduler.sampled import SampledFuture, n_draws


def prefill_delay(running: RunningBatch, cand: Candidates) -> np.ndarray:
    """Steps each request may start decoding late, running ones first (batch.py): at most
    one per prefill token it has left after the coming step."""
    return np.concatenate([running.prefill_left, cand.prefill_left])


class PeakScheduler(Scheduler):
    """Admits the longest queue prefix whose predicted future peak fits the pool."""

    name = "peak"
    pool_fraction = 1.0  # of pool_capacity that the peak may reach

    def future_load(
        self, running: RunningBatch, waiting: Candidates, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(held [n], remaining [n] or [draws, n]) of the running batch followed by the
        first k candidates, in the terms of peak.future_peak (tokens, steps). An admitted
        candidate holds its prompt after the coming step and one token more after each
        later one, like a running request that holds prompt - 1 now; its prefill already
        samples a token, so it runs predicted - g steps, counting the prefill step. A
        request still prefilling after the coming step runs up to prefill_left steps more
        (batch.py): counted in full."""
        cand = waiting.head(k)
        held = np.concatenate([running.kv_len, cand.kv_need(k) - 1])
        g = np.concatenate([running.output_len, cand.output_len])
        pred = self.predict(
            g,
            np.concatenate([running.max_new_tokens, cand.max_new_tokens]),
            np.concatenate([running.ignore_eos, cand.ignore_eos]),
        )
        return held, pred - g + prefill_delay(running, cand)

    def fitting(self, running: RunningBatch, waiting: Candidates, k_max: int,
                pool_capacity: int, pool_free: int) -> int:
        # Tokens held outside the running batch (none today; a prefix cache later) are
        # treated as held for good, so the budget is what the batch holds plus what is free.
        # An engine that counts a request mid-prefill at its full length (tokens it is about
        # to hold) makes that sum pass the pool; the pool itself is then the bound.
        budget = min(self.pool_fraction * pool_capacity, pool_free + int(running.kv_len.sum()))
        held, remaining = self.future_load(running, waiting, k_max)
        remaining = np.atleast_2d(remaining)
        n = len(running)

        def fits(k: int) -> bool:
            return all(future_peak(held[: n + k], r[: n + k]) <= budget for r in remaining)

        return largest_fitting_prefix(k_max, fits)


class PastFutureScheduler(PeakScheduler):
    """Peak admission with lengths predicted from the history of finished requests: at a
    quantile (cfg.estimator="quantile") or drawn as in the paper ("paper")."""

    name = "past_future"

    def __init__(self, cfg: SchedulerConfig | None = None):
        super().__init__(cfg)
        c = self.cfg
        self.history = OutputLengthHistory(
            window=c.history_window,
            min_history=c.min_history,
            prior=c.prior,
            quantile=c.quantile,
            bucketed=c.bucketed,
        )
        self.sampled = None
        if c.estimator == "paper":
            self.sampled = SampledFuture(self.history, seed=c.seed, bucketed=c.bucketed)
            self.pool_fraction = c.paper_pool_fraction

    def predict(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> np.ndarray:
        if self.sampled is not None:
            return self.sampled.median(output_len, max_new_tokens, ignore_eos)
        return self.history.predict(output_len, max_new_tokens, ignore_eos)

    def future_load(
        self, running: RunningBatch, waiting: Candidates, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.sampled is None:
            return super().future_load(running, waiting, k)
        cand = waiting.head(k)
        held = np.concatenate([running.kv_len, cand.kv_need(k) - 1])
        remaining = self.sampled.remaining(
            np.concatenate([running.output_len, cand.output_len]),
            np.concatenate([running.max_new_tokens, cand.max_new_tokens]),
            np.concatenate([running.ignore_eos, cand.ignore_eos]),
            n_draws(len(running)),
        )
        return held, remaining + prefill_delay(running, cand)

    def on_finish(
        self, output_len: ArrayLike, max_new_tokens: ArrayLike, ignore_eos: ArrayLike = False
    ) -> None:
        self.history.record(output_len, max_new_tokens, ignore_eos)
