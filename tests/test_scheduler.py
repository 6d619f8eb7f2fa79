"""Admission policies: the peak computation, the history's predictions, and the promise that
no policy admits what its own prediction says will not fit."""

from __future__ import annotations

import numpy as np
import pytest

from aiollm.scheduler import (
    SCHEDULERS,
    Candidates,
    OutputLengthHistory,
    RunningBatch,
    SchedulerConfig,
    future_peak,
    make_scheduler,
)
from aiollm.scheduler.peak import largest_fitting_prefix


def stepped_peak(held: np.ndarray, remaining: np.ndarray) -> int:
    """The peak by walking every future step: what future_peak must equal."""
    peak = 0
    for t in range(1, int(remaining.max(initial=0)) + 1):
        alive = remaining >= t
        peak = max(peak, int((held[alive] + t).sum()))
    return peak


def test_future_peak_equals_stepping_on_random_batches():
    rng = np.random.default_rng(0)
    for case in range(400):
        n = int(rng.integers(0, 40))
        held = rng.integers(0, 3000, n)
        # Small ranges force ties, which the suffix formula must handle.
        remaining = rng.integers(1, 8 if case % 2 else 400, n)
        assert future_peak(held, remaining) == stepped_peak(held, remaining), (held, remaining)


def test_future_peak_known_values():
    # Two requests: 100 + 10 steps and 0 + 200 steps. At t=10: 110 + 10 = 120; at t=200: 200.
    assert future_peak(np.array([100, 0]), np.array([10, 200])) == 200
    assert future_peak(np.array([100, 95]), np.array([10, 12])) == 110 + 105
    assert future_peak(np.zeros(0, np.int64), np.zeros(0, np.int64)) == 0


def test_largest_fitting_prefix_matches_scan():
    calls = []
    for k_max in range(0, 70):
        for limit in range(0, 75):
            calls.clear()

            def fits(k: int) -> bool:
                assert 1 <= k <= k_max
                calls.append(k)
                return k <= limit

            assert largest_fitting_prefix(k_max, fits) == min(limit, k_max)
            assert len(calls) <= 2 * int(np.log2(max(k_max, 1))) + 2


def history_with(lengths, caps=2048, **kw) -> OutputLengthHistory:
    h = OutputLengthHistory(**{"min_history": 1, **kw})
    h.record(np.asarray(lengths), caps)
    return h


def test_prediction_is_conditional_quantile_capped():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 600, 500)
    for q in (0.1, 0.5, 0.7, 0.95):
        h = history_with(lengths, quantile=q)
        g = rng.integers(0, 650, 200)
        cap = rng.integers(1, 700, 200)
        cap = np.maximum(cap, g)  # a running request has g <= cap
        pred = h.predict(g, cap)
        for gi, ci, pi in zip(g, cap, pred):
            above = lengths[lengths > gi]
            want = np.quantile(above, q, method="inverted_cdf") if above.size else ci
            assert pi == max(min(want, ci), gi + 1)


def test_ignore_eos_predicts_cap_and_is_not_recorded():
    h = history_with([10] * 50)
    assert h.predict([0, 5], [300, 300], [True, False]).tolist() == [300, 10]
    h.record([300] * 40, 300, ignore_eos=True)
    assert len(h) == 50
    assert h.predict(0, 300).item() == 10


def test_prior_until_enough_history_then_window():
    h = OutputLengthHistory(window=100, min_history=20, prior=(50,), quantile=0.5)
    assert h.predict(0, 1000).item() == 50  # only the prior
    h.record([400] * 10, 1000)
    assert h.predict(0, 1000).item() == 400  # prior + 10 seen: mostly seen
    h.record([400] * 10, 1000)
    assert h.predict(60, 1000).item() == 400
    # The window keeps the newest 100: after 100 short ones the long ones are gone.
    h.record([30] * 100, 1000)
    assert len(h) == 100
    assert h.predict(0, 1000).item() == 30
    # Beyond every length seen: the cap.
    assert h.predict(31, 1000).item() == 1000
    no_prior = OutputLengthHistory(min_history=5)
    assert no_prior.predict([0, 7], [64, 900]).tolist() == [64, 900]


def test_small_caps_do_not_pull_down_large_cap_predictions():
    # Many requests capped at 16 that all hit the cap, and a few uncapped ones of ~500.
    lengths = np.r_[np.full(300, 16), np.full(40, 500)]
    caps = np.r_[np.full(300, 16), np.full(40, 2048)]
    for bucketed, want in ((True, 500), (False, 16)):
        h = OutputLengthHistory(min_history=32, quantile=0.5, bucketed=bucketed)
        h.record(lengths, caps)
        assert h.predict(0, 2048).item() == want
    # Requests with a small cap are still predicted from everything at least as large.
    h = OutputLengthHistory(min_history=32, quantile=0.5)
    h.record(lengths, caps)
    assert h.predict(0, 16).item() == 16



def test_outputs_cut_at_a_small_cap_never_predict_a_larger_cap():
    """A few requests with max_tokens 1 (a classifier's calls) stop at their cap: each
    says only "at least 1". With too few larger-cap samples, the bucket fell back to all
    of them, predicted 1 token for every max_tokens 60 request, and Past-Future admitted
    a burst the pool could not hold (10 preemptions in a burst of 24 on a 300-token pool,
    none cold). Natural lengths from small caps still count."""
    h = OutputLengthHistory(min_history=8, quantile=0.5)
    h.record([1] * 10, 1)
    assert h.predict(0, 60).item() == 60  # nothing known about outputs past 1: the cap
    assert h.predict(0, 1).item() == 1
    h.record([5] * 10, 16)  # stopped by eos below their cap of 16: natural lengths
    assert h.predict(0, 60).item() == 5
    # the scheduler: 4 prompts of 20 tokens, max_tokens 60, on a 300-token pool hold
    # 4 x 80 at the end; 3 fit, as on a cold start
    sched = make_scheduler("past_future", SchedulerConfig(min_history=8))
    sched.on_finish([1] * 10, [1] * 10)
    k = sched.admit(RunningBatch.empty(), Candidates(np.full(4, 20), np.full(4, 60)),
                    pool_capacity=300, pool_free=300, prefill_budget=4096)
    assert k == 3

def random_state(rng, sched):
    n = int(rng.integers(0, 30))
    g = rng.integers(1, 300, n)
    cap = g + rng.integers(1, 600, n)
    kv = rng.integers(1, 1500, n) + g
    left = np.where(rng.random(n) < 0.1, rng.integers(1, 500, n), 0)  # some mid-prefill
    running = RunningBatch(kv, g, cap, rng.random(n) < 0.1, left)
    m = int(rng.integers(0, 30))
    g_w = np.where(rng.random(m) < 0.3, rng.integers(1, 200, m), 0)  # some resumed
    cap_w = g_w + rng.integers(1, 800, m)
    waiting = Candidates(rng.integers(1, 1500, m) + g_w, cap_w, g_w, rng.random(m) < 0.1)
    capacity = int(kv.sum() + rng.integers(0, 30000))
    free = capacity - int(kv.sum())
    sched.on_finish(rng.integers(1, 700, int(rng.integers(0, 80))), 2048)
    return running, waiting, capacity, free, int(rng.integers(1, 6000))


def predicted_peak(sched, running, waiting, k, budget):
    """The peak of the first k candidates, those still prefilling after a step of `budget`
    prefill tokens running as many steps longer as they have prompt tokens left."""
    held = np.r_[running.kv_len, waiting.prompt_len[:k] - 1]
    g = np.r_[running.output_len, waiting.output_len[:k]]
    pred = np.r_[
        sched.predict(running.output_len, running.max_new_tokens, running.ignore_eos),
        sched.predict(waiting.output_len[:k], waiting.max_new_tokens[:k], waiting.ignore_eos[:k]),
    ]
    prompts = waiting.prompt_len[:k]
    late = np.r_[running.prefill_left, np.clip(np.cumsum(prompts) - budget, 0, prompts)]
    return future_peak(held, pred - g + late)


@pytest.mark.parametrize("name", ["past_future", "conservative"])
def test_peak_policies_admit_exactly_what_their_prediction_fits(name):
    rng = np.random.default_rng(2)
    cfg = SchedulerConfig(max_running=40)
    sched = make_scheduler(name, cfg)
    admitted_some = 0
    for _ in range(300):
        running, waiting, capacity, free, budget = random_state(rng, sched)
        k = sched.admit(running, waiting, capacity, free, budget)
        assert 0 <= k <= len(waiting)
        pool = free + int(running.kv_len.sum())
        forced = len(running) == 0 and k == 1  # the progress rule
        if k and not forced:
            assert predicted_peak(sched, running, waiting, k, budget) <= pool
            admitted_some += 1
        # Maximal: one more would overflow the prediction or break a shared limit (its
        # prefill would not start within the budget).
        if k < len(waiting) and len(running) + k < cfg.max_running:
            over_budget = k >= 1 and waiting.prompt_len[:k].sum() >= budget
            assert over_budget or predicted_peak(sched, running, waiting, k + 1, budget) > pool
    assert admitted_some > 30


def test_aggressive_admits_what_fits_now():
    rng = np.random.default_rng(3)
    sched = make_scheduler("aggressive", SchedulerConfig(max_running=40, watermark=0.01))
    for _ in range(300):
        running, waiting, capacity, free, budget = random_state(rng, sched)
        k = sched.admit(running, waiting, capacity, free, budget)
        room = free - len(running) - int(0.01 * capacity)
        if k and len(running):
            assert waiting.prompt_len[:k].sum() <= room
        more = waiting.prompt_len[: k + 1].sum()
        if k < len(waiting) and len(running) + k < 40 and waiting.prompt_len[:k].sum() < budget:
            assert more > room


@pytest.mark.parametrize("name", ["aggressive", "past_future", "conservative"])
def test_budget_admits_a_first_chunk_but_kv_counts_whole_prompts(name):
    # 1,024-token prompts, a 2,048-token step with three decodes: the head whole and a
    # first chunk of 1,021 tokens of the next (the planner prefills its rest next step).
    sched = make_scheduler(name)
    running = RunningBatch([1100] * 3, [10] * 3, [20] * 3, [True] * 3)
    cands = Candidates([1024] * 5, [16] * 5, ignore_eos=[True] * 5)
    pool = 100_000
    assert sched.admit(running, cands, pool, pool - 3300, 2048 - 3) == 2
    # the prompts before a candidate take the whole budget: its prefill cannot start
    assert sched.admit(running, cands, pool, pool - 3300, 2048) == 2
    assert sched.admit(running, cands, pool, pool - 3300, 2049) == 3
    # a candidate with a single token of budget left still starts
    mixed = Candidates([1000, 1047, 500], [16] * 3, ignore_eos=[True] * 3)
    assert sched.admit(running, mixed, pool, pool - 3300, 1001) == 2
    # a head longer than the whole budget is admitted alone, as before
    assert sched.admit(running, Candidates([5000, 10], [16] * 2), pool, pool - 3300, 2048) == 1
    # KV: the second prompt's first chunk would fit in the pool, its whole prompt does not
    # (aggressive: 3 decode tokens and a 1% watermark of 50 beside the prompts; the peak
    # policies: 3,330 held by the batch at its end plus 2 x 1,033 passes the pool of 5,000)
    assert sched.admit(running, cands, 5000, 3 + 50 + 1024 + 1021, 2045) == 1


def chunked_peak(held, runs, prefill, budget):
    """The most KV tokens a batch holds after any step when its prefill is chunked: every
    step shares `budget` prefill tokens in batch order among the requests with `prefill`
    tokens left; one samples a token in each step that ends its prefill and in each later
    one, holds held + (tokens sampled, at least 1) and frees them all after the step that
    samples its runs-th token (as peak.py counts a request prefilled at once)."""
    held, runs, left = (np.array(x, np.int64) for x in (held, runs, prefill))
    sampled = np.zeros_like(held)
    peak = 0
    while (sampled < runs).any():
        alive = sampled < runs
        prefilling = alive & (left > 0)
        take = np.minimum(left, np.maximum(budget - (np.cumsum(left * prefilling)
                                                     - left * prefilling), 0)) * prefilling
        sampled += alive & ((left == 0) | (take == left))
        left -= take
        peak = max(peak, int((held[alive] + np.maximum(sampled[alive], 1)).sum()))
    return peak


def test_chunked_candidate_runs_longer_by_the_prompt_it_has_left():
    # One request decodes 50 more tokens holding 1,000; a candidate of 250 prompt tokens
    # asks for 10. Prefilled at once, the two peak at 1,269 tokens (the candidate's last
    # step: 1,010 + 259), so a pool of 1,269 takes it. With 100 prefill tokens a step its
    # prefill takes 3 steps and it ends 2 steps later, holding 2 tokens more for the
    # request beside it: the pool would be 2 tokens short.
    sched = make_scheduler("conservative")
    running = RunningBatch([1000], [0], [50], [True])
    cand = Candidates([250], [10], ignore_eos=[True])
    pool = 1269
    assert chunked_peak([1000, 249], [50, 10], [0, 250], 250) == pool
    assert chunked_peak([1000, 249], [50, 10], [0, 250], 100) == pool + 2
    assert sched.admit(running, cand, pool, pool - 1000, 250) == 1
    assert sched.admit(running, cand, pool, pool - 1000, 100) == 0
    # the same of a running request mid-prefill, 150 of its prompt left after this step
    mid = RunningBatch([1000, 250], [0, 0], [50, 10], [True, True], [0, 150])
    assert sched.admit(mid, Candidates([1], [1]), pool + 1, 20, 100) == 0
    assert sched.admit(mid, Candidates([1], [1]), pool + 153, 172, 100) == 1


@pytest.mark.parametrize("name, estimator", [("conservative", "quantile"),
                                             ("past_future", "quantile"),
                                             ("past_future", "paper")])
def test_peak_policies_never_overrun_the_pool_with_chunked_prefill(name, estimator):
    # Exact lengths (ignore_eos: every policy predicts the cap), so what a peak policy
    # admits must fit the pool at every step, however the prefill is cut into chunks.
    rng = np.random.default_rng(5)
    sched = make_scheduler(name, SchedulerConfig(max_running=40, estimator=estimator,
                                                 paper_pool_fraction=1.0))
    chunked = 0
    for _ in range(200):
        n, m = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        budget = int(rng.integers(1, 400))
        g = rng.integers(0, 20, n)
        cap = g + rng.integers(1, 60, n)
        kv = rng.integers(1, 600, n) + g
        pre = np.where(rng.random(n) < 0.3, rng.integers(2, 400, n), 0)  # mid-prefill
        took = np.minimum(pre, np.maximum(budget - (np.cumsum(pre) - pre), 0))
        if took.sum() >= budget:
            continue  # no budget left for admission: the engine admits no one
        prompt, cap_w = rng.integers(1, 600, m), rng.integers(1, 60, m)
        # a pool the first j fill exactly, were they prefilled at once
        j = int(rng.integers(1, m + 1))
        exact = future_peak(np.r_[kv, prompt[:j] - 1], np.r_[cap - g, cap_w[:j]])
        capacity = max(chunked_peak(kv, cap - g, pre, budget), exact)
        k = sched.admit(RunningBatch(kv, g, cap, True, pre - took),
                        Candidates(prompt, cap_w, ignore_eos=True),
                        capacity, capacity - int(kv.sum()), budget - int(took.sum()))
        held = np.r_[kv, prompt[:k] - 1]
        runs = np.r_[cap - g, cap_w[:k]]
        prefill = np.r_[pre, prompt[:k]]
        chunked += int(prefill.sum() > budget)
        assert chunked_peak(held, runs, prefill, budget) <= capacity
    assert chunked > 30


def test_resumed_request_is_charged_for_what_it_has_left():
    # Both need 1000 tokens of prefill; the resumed one has one token left to produce, the
    # new one 500. Only the resumed one fits a pool of 1200.
    sched = make_scheduler("past_future")
    empty = RunningBatch.empty()
    other = RunningBatch([100], [10], [20], [True])  # something running: no progress rule
    resumed = Candidates([1000], [500], output_len=[499], ignore_eos=[True])
    fresh = Candidates([1000], [500], output_len=[0], ignore_eos=[True])
    assert sched.admit(other, resumed, 1300, 1200, 4096) == 1
    assert sched.admit(other, fresh, 1300, 1200, 4096) == 0
    # With nothing running the head is admitted if its prompt fits now, whatever the forecast.
    assert sched.admit(empty, fresh, 1200, 1200, 4096) == 1
    assert sched.admit(empty, Candidates([1300], [500]), 1200, 1200, 4096) == 0


def test_running_counted_at_full_prompt_mid_prefill():
    # The engine counts a request mid-prefill at its whole prompt (1000) though it holds
    # only 200 of it yet, so free + held passes the pool: the pool is the bound.
    sched = make_scheduler("past_future", SchedulerConfig(min_history=1, prior=(50,)))
    running = RunningBatch([1000], [0], [50])
    assert sched.admit(running, Candidates([400], [50]), 1500, 1300, 4096) == 1
    assert sched.admit(running, Candidates([500], [50]), 1500, 1300, 4096) == 0


def run_engine_loop(sched, lengths, prompt, pool, steps=4000):
    """A minimal engine loop: admit, one KV token per running request per step, finish at
    the true length. Returns (finished, overflows, peak occupancy)."""
    n = len(lengths)
    kv, g = np.zeros(n, np.int64), np.zeros(n, np.int64)
    cap = np.full(n, int(lengths.max()) * 2)
    running, queue, free = np.zeros(0, np.int64), list(range(n)), pool
    overflows, peak, finished = 0, 0, 0
    for _ in range(steps):
        cand = np.array(queue[:64], dtype=np.int64)
        k = sched.admit(RunningBatch(kv[running], g[running], cap[running]),
                        Candidates(prompt[cand], cap[cand]), pool, free, 10**9)
        new, queue = cand[:k], queue[k:]
        free -= int(prompt[new].sum()) + len(running)
        overflows += free < 0
        kv[new], kv[running] = prompt[new], kv[running] + 1
        peak = max(peak, pool - free)
        batch = np.r_[running, new]
        g[batch] += 1
        done = g[batch] >= lengths[batch]
        free += int(kv[batch[done]].sum())
        finished += int(done.sum())
        sched.on_finish(g[batch[done]], cap[batch[done]])
        running = batch[~done]
        if not queue and not len(running):
            break
    return finished, overflows, peak


def test_exact_predictions_fill_the_pool_without_overflow():
    # Every request has output 60 and the history knows it: Past-Future's forecast is exact,
    # so the pool may be filled to the brim but never past it.
    rng = np.random.default_rng(4)
    lengths = np.full(400, 60)
    prompt = rng.integers(20, 200, 400)
    pool = 3000
    sched = make_scheduler("past_future", SchedulerConfig(min_history=1, prior=(60,)))
    finished, overflows, peak = run_engine_loop(sched, lengths, prompt, pool)
    assert (finished, overflows) == (400, 0)
    assert peak >= 0.97 * pool
    # Conservative with the same caps (120) never overflows either, but holds back more.
    cons = make_scheduler("conservative")
    finished_c, overflows_c, peak_c = run_engine_loop(cons, lengths, prompt, pool)
    assert (finished_c, overflows_c) == (400, 0)
    assert peak_c < peak


def test_make_scheduler_and_config_errors():
    assert set(SCHEDULERS) == {"past_future", "aggressive", "conservative"}
    assert make_scheduler().name == "aggressive"  # the default: bench/README.md
    with pytest.raises(ValueError, match="unknown scheduler 'fifo'"):
        make_scheduler("fifo")
    with pytest.raises(ValueError, match="quantile"):
        SchedulerConfig(quantile=0.0)
    with pytest.raises(ValueError, match="min_history"):
        SchedulerConfig(history_window=10, min_history=11)


def test_predicted_peak_is_the_running_batch_s_future_peak():
    """Scheduler.predicted_peak (LightLLM's /token_load reads it): the peak of the running
    batch alone, each request running its predicted length (the cap, with no past) and
    starting late by the prefill it has left; the paper estimator answers it without
    drawing (its draws, seeded, stay the admission's)."""
    running = RunningBatch(kv_len=[10, 5, 7], output_len=[0, 3, 0],
                           max_new_tokens=[4, 10, 6], prefill_left=[0, 0, 2])
    remaining = np.array([4, 7, 8])  # cap - output_len + prefill_left
    want = stepped_peak(np.array([10, 5, 7]), remaining)
    for name in sorted(SCHEDULERS):
        assert make_scheduler(name).predicted_peak(running) == want, name
    paper = make_scheduler("past_future", SchedulerConfig(estimator="paper"))
    before = paper.sampled.rng.bit_generator.state
    assert paper.predicted_peak(running) == want
    assert paper.sampled.rng.bit_generator.state == before
    empty = RunningBatch(kv_len=[], output_len=[], max_new_tokens=[])
    assert make_scheduler().predicted_peak(empty) == 0
