"""Settings of the admission policies (one dataclass, checked once)."""

from __future__ import annotations

from dataclasses import dataclass


ESTIMATORS = ("quantile", "paper")


@dataclass(slots=True)
class SchedulerConfig:
    # Past-Future: a request that has produced g tokens is predicted to stop at this quantile
    # of the past output lengths that exceed g. Every request of the batch is predicted at
    # once, so a median-like value already overstates the peak (in reality some finish early
    # while others run long); lower admits more and preempts more. Of 0.15..0.7 in
    # bench/sim.py, 0.25 gave the best goodput overall, with a quarter of the preemptions
    # of the aggressive policy (bench/README.md).
    quantile: float = 0.25
    # Past-Future's estimate of the future: "quantile" (each request at `quantile` of its
    # conditional history, one peak) or "paper" (the paper's: draws by inverse-CDF
    # interpolation, the largest of min(5, 200 // batch + 1) sampled peaks, under
    # paper_pool_fraction of the pool; sampled.py).
    estimator: str = "quantile"
    # The paper's estimator admits while its largest sampled peak stays under this fraction.
    paper_pool_fraction: float = 0.95
    # Seed of the paper estimator's draws (one generator per scheduler).
    seed: int = 0
    # Benchmarks only: show the policy ignore_eos requests as ordinary ones that may run up
    # to this many new tokens, and learn their lengths when they finish (blind.py). None: off.
    blind_cap: int | None = None
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
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not 0.0 < self.paper_pool_fraction <= 1.0:
            raise ValueError(
                f"paper_pool_fraction must be in (0, 1], got {self.paper_pool_fraction}")
        if self.blind_cap is not None and self.blind_cap < 1:
            raise ValueError(f"blind_cap must be >= 1, got {self.blind_cap}")
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
