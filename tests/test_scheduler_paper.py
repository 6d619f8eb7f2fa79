"""Past-Future's own estimator (estimator="paper"): the conditional inverse-CDF draws, the
paper's peak formula, and admission under 95% of the pool by the largest sampled peak."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from aiollm.scheduler import (
    Candidates,
    OutputLengthHistory,
    RunningBatch,
    SchedulerConfig,
    future_peak,
    make_scheduler,
)
from aiollm.scheduler.sampled import conditional_draw, n_draws
from test_scheduler import stepped_peak  # brute force over every future step


def paper_peak(held: np.ndarray, remaining: np.ndarray) -> int:
    """The paper's formula as written: requests sorted by remaining length r descending,
    max over k of sum_{j<=k} a_j + k * r_k."""
    order = np.argsort(-remaining, kind="stable")
    a, r = held[order], remaining[order]
    return max((int(a[: k + 1].sum() + (k + 1) * r[k]) for k in range(len(a))), default=0)


def test_paper_peak_formula_equals_stepping_and_future_peak():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(0, 30))
        held = rng.integers(0, 3000, n)
        remaining = rng.integers(1, 6 if case % 2 else 300, n)  # small ranges: ties
        want = stepped_peak(held, remaining)
        assert paper_peak(held, remaining) == want
        assert future_peak(held, remaining) == want


def test_conditional_draw_interpolates_the_tail_above_d():
    hist = np.array([10, 20, 30, 40, 70])
    # d = 15, cap = 50: points 15, 20, 30, 40, 50 (70 clipped to the cap), 50: 5 segments.
    d, cap = np.array([15]), np.array([50])
    for u, want in ((0.0, 15.0), (0.1, 17.5), (0.2, 20.0), (0.5, 35.0), (0.9, 50.0)):
        assert conditional_draw(hist, d, cap, np.array([[u]]))[0, 0] == pytest.approx(want)
    # Waiting candidates draw from the whole history: d = 0 is below every past length.
    got = conditional_draw(hist, np.array([0]), np.array([100]), np.array([[1 / 6]]))
    assert got[0, 0] == pytest.approx(10.0)
    # Beyond every past length: uniform between d and the cap; at the cap: the cap.
    assert conditional_draw(hist, np.array([80]), np.array([100]), np.array([[0.25]]))[0, 0] == 85
    assert conditional_draw(hist, np.array([100]), np.array([100]), np.array([[0.3]]))[0, 0] == 100
    # Empty history: uniform on [d, cap].
    assert conditional_draw(np.zeros(0, np.int64), np.array([10]), np.array([20]),
                            np.array([[0.5]]))[0, 0] == 15


def test_conditional_draws_follow_the_conditional_history():
    rng = np.random.default_rng(3)
    hist = np.sort(rng.integers(1, 1000, 400))
    d = np.full(20_000, 300)
    draws = conditional_draw(hist, d, np.full(20_000, 2000), rng.random((1, 20_000)))[0]
    assert draws.min() >= 300 and draws.max() <= 2000
    tail = hist[hist > 300]
    # The median of the draws is the median of the past lengths above d (to a point's width).
    assert abs(np.median(draws) - np.median(tail)) < 10
    # ... and about 1 / (m + 1) of the mass lies between the last past length and the cap.
    assert np.mean(draws > tail.max()) == pytest.approx(1 / (tail.size + 1), abs=0.002)


def test_n_draws_is_the_papers():
    assert [n_draws(b) for b in (0, 1, 40, 50, 51, 67, 100, 101, 200, 201, 256)] == \
        [5, 5, 5, 5, 4, 3, 3, 2, 2, 1, 1]


def exact_batch(n: int, kv: int, remaining: int) -> RunningBatch:
    # ignore_eos requests run exactly to their cap: no draw moves the peak
    return RunningBatch(np.full(n, kv), np.full(n, 10), np.full(n, 10 + remaining), True)


@pytest.mark.parametrize("estimator, fraction", [("paper", 0.95), ("quantile", 1.0)])
def test_peak_must_stay_under_the_reserve(estimator, fraction):
    sched = make_scheduler("past_future", SchedulerConfig(estimator=estimator))
    running = exact_batch(4, 1000, 100)  # peak 4 * 1100 = 4400 at t = 100
    cand = Candidates(np.array([501]), np.array([100]), ignore_eos=True)  # 500 + 100 more
    # With the candidate: 4400 + 600 = 5000 tokens at the peak.
    for capacity in (5000, 5100, 5263, 5264, 6000):
        k = sched.admit(running, cand, capacity, capacity - 4000, 8192)
        assert k == int(5000 <= fraction * capacity), (capacity, k)


def test_admits_exactly_while_the_largest_sampled_peak_fits():
    rng = np.random.default_rng(5)
    cfg = SchedulerConfig(estimator="paper", max_running=64, seed=11)
    sched = make_scheduler("past_future", cfg)
    sched.on_finish(rng.integers(1, 800, 300), 2048)
    checked = 0
    for _ in range(150):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 20))
        g = rng.integers(1, 300, n)
        running = RunningBatch(rng.integers(1, 1500, n) + g, g, np.full(n, 2048))
        waiting = Candidates(rng.integers(1, 1500, m), np.full(m, 2048))
        capacity = int(running.kv_len.sum() + rng.integers(0, 40000))
        free = capacity - int(running.kv_len.sum())
        twin = copy.deepcopy(sched)  # the same generator state: the same draws
        k = sched.admit(running, waiting, capacity, free, 10**6)
        draws = n_draws(n)
        rem = twin.sampled.remaining(np.r_[g, np.zeros(m, np.int64)], np.full(n + m, 2048),
                                     np.zeros(n + m, bool), draws)
        held = np.r_[running.kv_len, waiting.prompt_len - 1]
        budget = min(0.95 * capacity, capacity)

        def fits(j: int) -> bool:
            return max(future_peak(held[: n + j], r[: n + j]) for r in rem) <= budget

        want = max((j for j in range(m + 1) if all(fits(i) for i in range(j + 1))), default=0)
        assert k == want
        checked += k > 0
    assert checked > 20


def test_paper_estimator_fills_no_more_than_the_pool_with_exact_lengths():
    # Requests that all run to their cap: the estimate is exact, so the pool never overflows.
    sched = make_scheduler("past_future", SchedulerConfig(estimator="paper"))
    cands = Candidates(np.full(50, 200), np.full(50, 300), ignore_eos=True)
    k = sched.admit(RunningBatch.empty(), cands, 10_000, 10_000, 10**6)
    held, rem = np.full(k, 199), np.full(k, 300)
    assert future_peak(held, rem) <= 9500 < future_peak(np.full(k + 1, 199), np.full(k + 1, 300))


def test_paper_prediction_is_the_conditional_median_and_bad_estimator_rejected():
    sched = make_scheduler("past_future", SchedulerConfig(estimator="paper", min_history=1))
    sched.on_finish(np.array([10, 20, 30]), 100)
    # d = 0: points 0, 10, 20, 30, 100, u = 0.5 -> 20; d = 25: points 25, 30, 100 -> 30
    assert sched.predict(np.array([0, 25]), np.array([100, 100])).tolist() == [20, 30]
    with pytest.raises(ValueError, match="estimator"):
        SchedulerConfig(estimator="median")
    h = OutputLengthHistory(min_history=4)
    assert h.samples() is None  # too thin: every request is assumed to run to its cap


@pytest.mark.parametrize("estimator", ["quantile", "paper"])
def test_blind_cap_hides_fixed_lengths_and_learns_them(estimator):
    cfg = SchedulerConfig(estimator=estimator, blind_cap=1000, min_history=1)
    sched = make_scheduler("past_future", cfg)
    assert sched.name == "past_future"
    # ignore_eos with max_new_tokens 50: without a history the policy must assume 1000
    assert sched.predict(np.array([10]), np.array([50]), np.array([True])).tolist() == [1000]
    sched.on_finish(np.array([40, 40, 40]), np.array([40, 40, 40]), np.array([True] * 3))
    # learned: lengths of 40 from requests whose fixed cap it never saw
    assert 40 <= sched.predict(np.array([0]), np.array([50]), np.array([True]))[0] < 1000
    # without the blind cap, ignore_eos is exact and never recorded
    plain = make_scheduler("past_future", SchedulerConfig(estimator=estimator, min_history=1))
    plain.on_finish(np.array([40]), np.array([40]), np.array([True]))
    assert plain.predict(np.array([10]), np.array([50]), np.array([True])).tolist() == [50]
    assert len(plain.history) == 0
    # admission sees the hidden cap: 4 requests of 100-token prompts, 1000 each by the cap
    blind = make_scheduler("conservative", SchedulerConfig(blind_cap=1000))
    cands = Candidates(np.full(4, 101), np.full(4, 10), ignore_eos=True)
    assert blind.admit(RunningBatch.empty(), cands, 2500, 2500, 10**6) == 2
    assert make_scheduler("conservative").admit(RunningBatch.empty(), cands, 2500, 2500, 10**6) == 4
