"""Benchmarks' view: ignore_eos requests shown to a policy as ordinary requests.

Serving benchmarks (bench/serve.py, like most) fix each output length by sending ignore_eos
with max_tokens = the length drawn from the workload, so that every server does the same
work. A policy that reads ignore_eos as "runs exactly to max_new_tokens" then knows every
length in advance, which no real client tells a server. Wrapped in `LengthBlind` (engine
option --scheduler-blind-cap C), the policy sees such a request as one that may stop at any
point up to C new tokens (ignore_eos False, max_new_tokens C) and learns its length, when it
finishes, as a natural output length: the setting of the Past-Future paper's evaluation,
where lengths come from the history alone.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from aiollm.scheduler.batch import Candidates, RunningBatch, as_column
from aiollm.scheduler.policy import Scheduler


class LengthBlind(Scheduler):
    """Wraps a policy; ignore_eos requests reach it with max_new_tokens = cap (>= 1)."""

    def __init__(self, inner: Scheduler, cap: int):
        if cap < 1:
            raise ValueError(f"blind cap must be >= 1, got {cap}")
        super().__init__(inner.cfg)
        self.inner, self.cap = inner, int(cap)
        self.name = inner.name  # type: ignore[misc]

    def _hide(self, n: int, max_new_tokens: ArrayLike,
              ignore_eos: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        fixed = as_column(ignore_eos, n, bool)
        return np.where(fixed, self.cap, as_column(max_new_tokens, n)), np.zeros(n, bool)

    def fitting(self, running: RunningBatch, waiting: Candidates, k_max: int,
                pool_capacity: int, pool_free: int) -> int:
        # the shared limits and the progress rule read no lengths: only this part hides them
        cap_r, eos_r = self._hide(len(running), running.max_new_tokens, running.ignore_eos)
        cap_w, eos_w = self._hide(len(waiting), waiting.max_new_tokens, waiting.ignore_eos)
        return self.inner.fitting(
            RunningBatch(running.kv_len, running.output_len, cap_r, eos_r,
                         running.prefill_left),
            Candidates(waiting.prompt_len, cap_w, waiting.output_len, eos_w,
                       waiting.prefill_left, waiting.locked),
            k_max, pool_capacity, pool_free)

    def predict(self, output_len: ArrayLike, max_new_tokens: ArrayLike,
                ignore_eos: ArrayLike = False) -> np.ndarray:
        g = as_column(output_len)
        return self.inner.predict(g, *self._hide(g.shape[0], max_new_tokens, ignore_eos))

    def on_finish(self, output_len: ArrayLike, max_new_tokens: ArrayLike,
                  ignore_eos: ArrayLike = False) -> None:
        g = as_column(output_len)
        self.inner.on_finish(g, *self._hide(g.shape[0], max_new_tokens, ignore_eos))
