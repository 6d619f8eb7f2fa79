"""Settings of the admission policies (one dataclass, checked once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SchedulerConfig:
    # Past-Future: a request that has produced g tokens is predicted to stop at this quantile
    # of the past output lengths that exceed g. Every request of the batch is predicted at
    # once, so a median-like value already overstates the peak (in reality some finish early
    # while others run long); lower admits more and preempts more. Of 0.15..0.7 in
    # bench/sim.py, 0.25 gave the best goodput overall, with a quarter of the preemptions
    # of the aggressive policy (bench/README.md).
    quantile: float = 0.25
    # How many finished requests the history keeps (the newest ones).
    history_window: int = 1000
    # Below this many finished requests the history is too thin to trust: the prior is used
    # (with what has been seen so far), or, without a prior, every request is assumed to run
    # to max_new_tokens, which is safe but admits little. Kept small because that cautious
    # start costs a server that starts under load much of its goodput (bench/sim.py).
    min_history: int = 8
    # Output lengths assumed before min_history requests have finished (optional).
    prior: tuple[int, ...] = ()
    # Keep the past per power-of-two bucket of max_new_tokens: a request with a large cap is
    # predicted only from requests whose cap was at least as large (once there are
    # min_history of them), so outputs cut short by small caps do not pull its estimate down.
    bucketed: bool = True
    # At most this many requests run at once (every policy).
    max_running: int = 256
    # Aggressive only: keep this fraction of the pool free when admitting (vLLM's default).
    watermark: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.history_window < 1:
            raise ValueError(f"history_window must be >= 1, got {self.history_window}")
        if not 1 <= self.min_history <= self.history_window:
            raise ValueError(
                f"min_history must be in [1, history_window={self.history_window}], "
                f"got {self.min_history}"
            )
        self.prior = tuple(int(x) for x in self.prior)
        if any(x < 1 for x in self.prior):
            raise ValueError(f"prior output lengths must be >= 1, got {self.prior}")
        if self.max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {self.max_running}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
