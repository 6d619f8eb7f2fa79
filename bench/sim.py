"""Scheduler simulator: the real aiollm.scheduler policies on synthetic traces, no GPU, no model.

Each run replays one Poisson trace through one policy. Every step the engine's loop is
imitated: admit (the policy's own `admit`), pause the most recently admitted requests while
the running batch cannot get its decode tokens (they return to the front of the queue and
are resumed by recomputing prompt + generated tokens), run one mixed step (one decode token
for every running request done with its prefill, one KV token each, and prefill chunks
under the prefill budget: first of running requests still prefilling, then of the admitted
ones, the last of which may start with a first chunk, as in the engine; a prompt's KV is
taken whole at admission, as the policies count it), finish requests that reached their
true length and report them to `on_finish`. Step time comes from a cost model of an
8B-class model on one H100 (see StepCost). KV is counted per token against a fixed pool.

An extra reference policy, "oracle", is the peak rule fed the true output lengths: the
ceiling of what better length prediction could bring.

Reports per policy: throughput, goodput under an SLA (TTFT and mean time per output token
both within bounds), queueing time, evictions, KV utilisation. Writes
bench/results/sim-DATE.json and sim-DATE.png (goodput vs arrival rate per policy; KV in use
over time for one heavy-load run).
Usage: python bench/sim.py [--quick] [--jobs 2] [--quantiles 0.5,0.7,0.9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import date
from itertools import islice
from pathlib import Path

import numpy as np

from aiollm.scheduler import (
    Candidates,
    PeakScheduler,
    RunningBatch,
    SchedulerConfig,
    make_scheduler,
)
from aiollm.scheduler.batch import prefill_chunks
from aiollm.scheduler.past_future import prefill_delay
from commit import tree_commit
from results_file import result_path, write_report
from sim_report import POLICIES, aggregate, plot, print_table, verdict

SLA_GRID = ((1.0, 0.025), (5.0, 0.05), (5.0, 0.025))  # (TTFT s, mean TPOT s) besides the main
# The Past-Future paper's SLA for 7B/13B models: TTFT <= 10 s and the longest gap between two
# tokens of a request (its max-TPOT) <= 1.5 s.
PAPER_SLA = (10.0, 1.5)


@dataclass(frozen=True)
class StepCost:
    """Seconds per step: weights read once, per-request overhead, KV read by decode
    attention, prefill compute. 8B bf16 on an H100: 14.8 GB / 3 TB/s = 4.9 ms of weights,
    128 KiB of KV per token / 3 TB/s = 0.044 us, 16 GFLOP per prefilled token at ~550
    TFLOP/s = 0.03 ms."""

    base: float = 5.5e-3
    per_request: float = 2e-5
    per_kv_token: float = 4.4e-8
    per_prefill_token: float = 3e-5

    def step(self, n_reqs: int, kv_read: int, prefill_tokens: int) -> float:
        return (self.base + self.per_request * n_reqs + self.per_kv_token * kv_read
                + self.per_prefill_token * prefill_tokens)


@dataclass(frozen=True)
class SimConfig:
    pool_tokens: int = 0  # KV pool; 0: the workload's (65,536 tokens: ~8.6 GB of an 8B's KV)
    prefill_budget: int = 8192
    max_running: int = 256
    max_new_tokens: int = 2048  # what clients ask for; the output stops earlier at EOS
    n_requests: int = 1500
    ttft_slo: float = 1.0  # seconds
    tpot_slo: float = 0.05  # seconds per output token, mean over the request


# Output-length distributions (natural lengths, before the max_new_tokens cap) with the
# prompt lengths that go with them. Each returns (prompt_len, output_len) for n requests.
def _uniform(rng, n):
    return rng.integers(64, 513, n), rng.integers(1, 1025, n)


def _lognormal(rng, n):
    return rng.integers(64, 513, n), np.ceil(rng.lognormal(np.log(200), 1.0, n))


def _bimodal(rng, n):
    long = rng.random(n) < 0.4
    out = np.where(long, rng.normal(900, 150, n), rng.normal(80, 20, n))
    return rng.integers(64, 513, n), np.maximum(out, 1)


def _sharegpt_like(rng, n):
    # Shape of ShareGPT conversations (no dataset here): long-tailed prompts; outputs a mix
    # of short replies and a broad body of answers of a few hundred tokens.
    prompt = np.clip(rng.lognormal(np.log(150), 0.9, n), 4, 2048)
    short = rng.random(n) < 0.2
    out = np.where(short, rng.lognormal(np.log(30), 0.7, n), rng.lognormal(np.log(260), 0.6, n))
    return prompt, np.ceil(out)


# The Past-Future paper's synthetic workloads (section 6.1), lengths uniform in the ranges.
def _decode_heavy(rng, n):
    return rng.integers(32, 4097, n), rng.integers(2048, 4097, n)


def _balanced(rng, n):
    return rng.integers(3072, 5121, n), rng.integers(3072, 5121, n)


def _prefill_heavy(rng, n):
    return rng.integers(2048, 4097, n), rng.integers(32, 4097, n)


def _sharegpt_long(rng, n):
    # ShareGPT's shape with the long answers of recent chat models (no dataset here): prompts
    # a few hundred tokens, long-tailed; outputs 15 % short, the rest around 900 with a tail
    # up to the 4096 cap.
    prompt = np.clip(rng.lognormal(np.log(300), 1.0, n), 4, 4096)
    short = rng.random(n) < 0.15
    out = np.where(short, rng.lognormal(np.log(40), 0.7, n), rng.lognormal(np.log(900), 0.7, n))
    return prompt, np.ceil(out)


def _scaled(fn, k):
    """The workload with every length divided by k (for short runs on a real server)."""
    def draw(rng, n):
        p, o = fn(rng, n)
        return np.maximum(np.asarray(p) // k, 1), np.maximum(np.asarray(o) // k, 1)
    return draw


@dataclass(frozen=True)
class Workload:
    draw: object  # (rng, n) -> (prompt_len, output_len)
    max_new_tokens: int  # what clients ask for; the output stops earlier at its length
    pool_tokens: int  # KV pool
    paper: bool = False  # one of the paper's: closed-loop clients rather than Poisson


# Paper workloads: a 131,072-token pool (16 GiB of an 8B model's KV; the paper's 7B on an
# 80 GB GPU holds about as many tokens) holds 15 to 30 balanced requests.
WORKLOADS = {
    "uniform": Workload(_uniform, 2048, 65536), "lognormal": Workload(_lognormal, 2048, 65536),
    "bimodal": Workload(_bimodal, 2048, 65536),
    "sharegpt_like": Workload(_sharegpt_like, 2048, 65536),
    "decode_heavy": Workload(_decode_heavy, 4096, 131072, True),
    "balanced": Workload(_balanced, 5120, 131072, True),
    "prefill_heavy": Workload(_prefill_heavy, 4096, 131072, True),
    "sharegpt_long": Workload(_sharegpt_long, 4096, 131072, True),
    # decode_heavy at 1/8 of every length and of the pool: the GPU check (bench/README.md)
    "decode_heavy_s8": Workload(_scaled(_decode_heavy, 8), 512, 16384, True),
}
PAPER_WORKLOADS = [w for w, v in WORKLOADS.items() if v.paper and not w.endswith("_s8")]


@dataclass
class Trace:
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray  # true output length, capped
    cap: np.ndarray


def make_trace(workload: str, rate: float, sim: SimConfig, seed: int) -> Trace:
    """Lengths of sim.n_requests requests; Poisson arrivals at `rate`, or, for rate 0 (a
    closed loop), arrival times left to the simulation (inf)."""
    rng = np.random.default_rng(seed)
    prompt, out = WORKLOADS[workload].draw(rng, sim.n_requests)
    prompt = np.asarray(prompt, dtype=np.int64)
    cap = np.full(sim.n_requests, sim.max_new_tokens, dtype=np.int64)
    out = np.clip(np.asarray(out, dtype=np.int64), 1, cap)
    if rate == 0:
        return Trace(np.full(sim.n_requests, np.inf), prompt, out, cap)
    arrival = np.cumsum(rng.exponential(1.0 / rate, sim.n_requests))
    return Trace(arrival - arrival[0], prompt, out, cap)


def capacity_rps(workload: str, sim: SimConfig, cost: StepCost) -> float:
    """Requests/s with the pool always full and nothing wasted, from the workload's
    moments: the x-axis unit (load 1.0). A request holds on average P + L/2 tokens for L
    steps, so a full pool holds B = pool * E[L] / E[L (P + L/2)] requests. Real policies
    saturate below it (about 0.85 to 0.95 here)."""
    rng = np.random.default_rng(12345)
    p, o = WORKLOADS[workload].draw(rng, 200_000)
    o = np.clip(o, 1, sim.max_new_tokens)
    b = min(sim.pool_tokens * o.mean() / (o * (p + o / 2)).mean(), sim.max_running)
    step = cost.step(int(b), int(b * (p + o / 2).mean()), int(b * p.mean() / o.mean()))
    return b / (step * o.mean())


class OracleScheduler(PeakScheduler):
    """Peak admission that knows every request's true output length: the most any
    predictor of lengths could get from the peak rule. A reference line, not a policy."""

    name = "oracle"

    def __init__(self, cfg: SchedulerConfig, true_len: np.ndarray):
        super().__init__(cfg)
        self.true_len = true_len
        self.ids = np.zeros(0, np.int64)  # running then waiting; the simulator sets it

    def future_load(self, running, waiting, k):
        held = np.concatenate([running.kv_len, waiting.prompt_len[:k] - 1])
        g = np.concatenate([running.output_len, waiting.output_len[:k]])
        late = prefill_delay(running, waiting.head(k))
        return held, self.true_len[self.ids[: len(running) + k]] - g + late


def simulate(policy: str, trace: Trace, sim: SimConfig, cost: StepCost,
             sched_cfg: SchedulerConfig, timeline: bool = False, clients: int = 0) -> dict:
    """One run. clients > 0: a closed loop of that many clients, each sending its next
    request when its last one finishes (trace.arrival is then ignored)."""
    cfg = replace(sched_cfg, max_running=sim.max_running)
    oracle = policy == OracleScheduler.name
    sched = OracleScheduler(cfg, trace.output) if oracle else make_scheduler(policy, cfg)
    n = trace.arrival.shape[0]
    arrival = trace.arrival.copy()
    issued = n
    if clients:
        arrival[:] = np.inf
        issued = min(clients, n)
        arrival[:issued] = 0.0
    P, L, cap = trace.prompt, trace.output, trace.cap
    kv = np.zeros(n, np.int64)
    g = np.zeros(n, np.int64)
    t_admit, t_first, t_finish = (np.full(n, np.nan) for _ in range(3))
    t_last, stall = np.zeros(n), np.zeros(n)  # last token time, longest gap between tokens
    paused = np.zeros(n, np.int64)
    running = np.zeros(0, np.int64)  # in admission order: the last is the most recent
    left = np.zeros(n, np.int64)  # prompt tokens of a running request still to prefill
    waiting: deque[int] = deque()
    free, now, nxt = sim.pool_tokens, 0.0, 0
    steps, used_time, recomputed = 0, 0.0, 0
    tl: list[tuple[float, int, int, int]] = []
    while nxt < n or running.size or waiting:
        while nxt < n and arrival[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        if not running.size and not waiting:
            now = float(arrival[nxt])
            continue
        look = min(len(waiting), sim.max_running - running.size)
        # The engine's prefill budget goes first to running requests still prefilling, in
        # admission order; what is left starts the admitted prompts (the last maybe with a
        # first chunk only).
        ahead = int(left[running].sum())  # most steps: 0, nothing mid-prefill
        budget = max(sim.prefill_budget - ahead, 0)
        k = 0
        # No policy admits a head whose prompt does not fit in the free pool now: skip the
        # call then (a shortcut of the simulator; the decision is the same).
        if look and budget and P[waiting[0]] + g[waiting[0]] + running.size <= free:
            cand = np.fromiter(islice(waiting, look), np.int64, look)
            if oracle:
                sched.ids = np.concatenate([running, cand])
            # prefill left to running requests after this step's chunks: none here, as they
            # go first and leave budget to admission only once planned whole; passed as the
            # engine passes it, so that the two stay alike
            rest = left[running] - prefill_chunks(left[running], sim.prefill_budget)
            k = sched.admit(RunningBatch(kv[running], g[running], cap[running], None, rest),
                            Candidates(P[cand] + g[cand], cap[cand], g[cand]),
                            sim.pool_tokens, free, budget)
        else:
            cand = np.zeros(0, np.int64)
        new = cand[:k]
        for _ in range(k):
            waiting.popleft()
        fill = P[new] + g[new]  # resumed requests recompute prompt + generated tokens
        assert k == 0 or int(fill.sum()) + running.size <= free, f"{policy} overfilled the pool"
        # The pool cannot give every decoding request its next token: pause the most
        # recently admitted ones; they go back to the front of the queue, oldest first.
        while running.size > free and np.count_nonzero(left[running] == 0) > free:
            v = int(running[-1])
            running = running[:-1]
            free += int(kv[v])
            kv[v] = left[v] = 0
            paused[v] += 1
            waiting.appendleft(v)
        # KV is reserved for the whole prompt at admission, as the policies count it
        free -= int(fill.sum())
        kv[new] = left[new] = fill
        recomputed += int(fill[g[new] > 0].sum())
        t_admit[new] = np.where(np.isnan(t_admit[new]), now, t_admit[new])
        decode = running[left[running] == 0] if ahead else running
        free -= decode.size
        kv[decode] += 1
        took = prefilled = np.zeros(0, np.int64)
        if ahead or k:
            running = np.concatenate([running, new])
            pre = running[left[running] > 0]
            took = prefill_chunks(left[pre], sim.prefill_budget)
            left[pre] -= took
            prefilled = pre[left[pre] == 0]  # their prefill samples their next token
        dt = cost.step(decode.size + np.count_nonzero(took), int(kv[decode].sum()),
                       int(took.sum()))
        now += dt
        used_time += dt * (sim.pool_tokens - free)
        steps += 1
        batch = np.concatenate([decode, prefilled])
        g[batch] += 1
        t_first[prefilled] = np.where(np.isnan(t_first[prefilled]), now, t_first[prefilled])
        old = batch[g[batch] > 1]
        stall[old] = np.maximum(stall[old], now - t_last[old])
        t_last[batch] = now
        fin = batch[g[batch] >= L[batch]]
        if fin.size:
            free += int(kv[fin].sum())
            kv[fin] = 0
            t_finish[fin] = now
            sched.on_finish(g[fin], cap[fin])
            new_issued = min(issued + fin.size, n)  # closed loop: each client sends its next
            arrival[issued:new_issued] = now
            issued = new_issued
            running = running[g[running] < L[running]]
        if timeline:
            tl.append((now, sim.pool_tokens - free, running.size, len(waiting)))
    assert free == sim.pool_tokens
    return _metrics(replace(trace, arrival=arrival), sim, t_admit, t_first, t_finish, stall, paused, steps, used_time,
                    recomputed, tl)


def _metrics(trace, sim, t_admit, t_first, t_finish, stall, paused, steps, used_time,
             recomputed, tl):
    makespan = float(t_finish.max() - trace.arrival[0])
    ttft = t_first - trace.arrival
    tpot = np.where(trace.output > 1, (t_finish - t_first) / np.maximum(trace.output - 1, 1), 0)
    ok = (ttft <= sim.ttft_slo) & (tpot <= sim.tpot_slo)
    # The paper's SLA: TTFT and the longest gap between two tokens of a request (max-TPOT).
    ok_paper = (ttft <= PAPER_SLA[0]) & (stall <= PAPER_SLA[1])
    out = {
        "throughput_tok_s": float(trace.output.sum() / makespan),
        "throughput_req_s": float(trace.output.size / makespan),
        "goodput_req_s": float(ok.sum() / makespan),
        "goodput_tok_s": float(trace.output[ok].sum() / makespan),
        "slo_attained": float(ok.mean()),
        "goodput_paper_req_s": float(ok_paper.sum() / makespan),
        "slo_attained_paper": float(ok_paper.mean()),
        "ttft_over_10s": int((ttft > PAPER_SLA[0]).sum()),
        "gap_over_1_5s": int((stall > PAPER_SLA[1]).sum()),
        "ttft_p50_s": float(np.median(ttft)), "ttft_p99_s": float(np.quantile(ttft, 0.99)),
        "tpot_mean_s": float(tpot.mean()), "tpot_p99_s": float(np.quantile(tpot, 0.99)),
        "stall_p99_s": float(np.quantile(stall, 0.99)),
        "queue_mean_s": float(np.mean(t_admit - trace.arrival)),
        "queue_p99_s": float(np.quantile(t_admit - trace.arrival, 0.99)),
        "evictions": int(paused.sum()), "evicted_requests": int((paused > 0).sum()),
        "recomputed_tokens": recomputed,
        "kv_util": float(used_time / makespan / sim.pool_tokens),
        "makespan_s": makespan, "steps": steps,
    }
    # The same runs judged by other SLAs, to show how much the ranking depends on the bounds.
    for bound_ttft, bound_tpot in SLA_GRID:
        good = (ttft <= bound_ttft) & (tpot <= bound_tpot)
        out[f"goodput_ttft{bound_ttft:g}_tpot{bound_tpot * 1e3:g}"] = float(good.sum() / makespan)
    if tl:
        a = np.array(tl)
        idx = np.linspace(0, len(a) - 1, min(len(a), 1500)).astype(int)
        out["timeline"] = {"t": a[idx, 0].round(3).tolist(),
                           "kv_used": (a[idx, 1] / sim.pool_tokens).round(4).tolist(),
                           "running": a[idx, 2].astype(int).tolist(),
                           "waiting": a[idx, 3].astype(int).tolist()}
    return out


@dataclass(frozen=True)
class Job:
    workload: str
    load: float  # Poisson: arrival rate as a fraction of capacity_rps; closed loop: clients
    rate: float  # Poisson arrivals per second; 0 in a closed loop
    clients: int  # closed-loop clients; 0 for Poisson arrivals
    seed: int
    policy: str  # a POLICIES name, "oracle", or "pf_quantile@Q" for another quantile
    record_timeline: bool


def workload_sim(sim: SimConfig, workload: str) -> SimConfig:
    """sim with the workload's pool (unless sim sets one) and max_new_tokens."""
    w = WORKLOADS[workload]
    return replace(sim, pool_tokens=sim.pool_tokens or w.pool_tokens,
                   max_new_tokens=w.max_new_tokens)


def scheduler_for(policy: str, sched_cfg: SchedulerConfig) -> tuple[str, SchedulerConfig]:
    """(scheduler name, config) of a policy label: pf_paper and pf_quantile are Past-Future
    with the paper's and the quantile estimator; @Q sets the quantile."""
    name, _, q = policy.partition("@")
    cfg = replace(sched_cfg, quantile=float(q)) if q else sched_cfg
    if name.startswith("pf_"):
        return "past_future", replace(cfg, estimator=name[3:])
    return name, cfg


def run_job(job: Job, sim: SimConfig, cost: StepCost, sched_cfg: SchedulerConfig) -> dict:
    sim = workload_sim(sim, job.workload)
    name, cfg = scheduler_for(job.policy, sched_cfg)
    t0 = time.perf_counter()
    m = simulate(name, make_trace(job.workload, job.rate, sim, job.seed), sim, cost, cfg,
                 job.record_timeline, job.clients)
    return {**asdict(job), **m, "wall_s": time.perf_counter() - t0}


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores (Python {platform.python_version()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--loads", default="0.6,0.8,0.9,1.0,1.25",
                    help="Poisson workloads: arrival rates as fractions of the idealised "
                         "capacity (capacity_rps)")
    ap.add_argument("--clients", default="10,25,50,100",
                    help="the paper's workloads: closed-loop client counts")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--n-requests", type=int, default=SimConfig.n_requests,
                    help="requests per Poisson run")
    ap.add_argument("--paper-n-requests", type=int, default=400,
                    help="requests per closed-loop run (the paper's workloads)")
    ap.add_argument("--pool-tokens", type=int, default=0, help="KV pool (default: the workload's)")
    ap.add_argument("--ttft-slo", type=float, default=SimConfig.ttft_slo, help="seconds")
    ap.add_argument("--tpot-slo", type=float, default=SimConfig.tpot_slo, help="seconds")
    ap.add_argument("--quantile", type=float, default=SchedulerConfig().quantile,
                    help="Past-Future's quantile (pf_quantile)")
    ap.add_argument("--quantiles", default="",
                    help="also run pf_quantile at these quantiles (comma list)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--no-oracle", action="store_true",
                    help="skip the reference runs of peak admission with true lengths")
    ap.add_argument("--heavy", type=float, default=1.0, help="loads >= this count as heavy")
    ap.add_argument("--timeline", default="decode_heavy@50", help="WORKLOAD@LOAD of the KV plot")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/sim-DATE.json)")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the PNG of a results file")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        path = Path(args.replot).with_suffix(".png")
        plot(saved["results"], saved["kv_timeline"], SimConfig(**saved["sim"]), path)
        print(f"wrote {path}")
        return
    if args.quick:
        args.loads, args.clients, args.seeds = "0.6,1.1", "10,50", 1
        args.n_requests, args.paper_n_requests = 300, 100

    sim = SimConfig(pool_tokens=args.pool_tokens, n_requests=args.n_requests,
                    ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo)
    paper_sim = replace(sim, n_requests=args.paper_n_requests)
    cost = StepCost()
    sched_cfg = SchedulerConfig(quantile=args.quantile, max_running=sim.max_running)
    workloads = args.workloads.split(",")
    policies = args.policies.split(",") + [f"pf_quantile@{q}" for q in args.quantiles.split(",")
                                           if q]
    if not args.no_oracle:
        policies.append(OracleScheduler.name)
    tl_workload, _, tl_load = args.timeline.partition("@")
    capacity = {w: capacity_rps(w, workload_sim(sim, w), cost)
                for w in workloads if not WORKLOADS[w].paper}
    jobs, job_sim = [], []
    for w in workloads:
        closed = WORKLOADS[w].paper
        for x in (args.clients if closed else args.loads).split(","):
            load = float(x)
            for seed in range(args.seeds):
                for p in policies:
                    timeline = seed == 0 and w == tl_workload and load == float(tl_load)
                    jobs.append(Job(w, load, 0.0 if closed else capacity[w] * load,
                                    int(load) if closed else 0, seed, p, timeline))
                    job_sim.append(paper_sim if closed else sim)
    # the slowest first, so two workers finish together
    order = sorted(range(len(jobs)), key=lambda i: -WORKLOADS[jobs[i].workload].max_new_tokens)
    jobs, job_sim = [jobs[i] for i in order], [job_sim[i] for i in order]

    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as ex:
        runs = list(ex.map(run_job, jobs, job_sim, [cost] * len(jobs),
                           [sched_cfg] * len(jobs), chunksize=1))
    wall = time.perf_counter() - t0
    rows = aggregate([{k: v for k, v in r.items() if k != "timeline"} for r in runs])
    print_table(rows)
    verdicts = verdict(rows, args.heavy)
    print("\nbest policy per workload and load, and Past-Future's goodput over aggressive:")
    for w, v in verdicts.items():
        for load, r in v.items():
            print(f"  {w:16s} {load:6g}  ours: {r['ours']['best']:12s} paper: "
                  f"{r['paper']['best']:12s} pf_paper/aggr {r['paper']['pf_paper_over_aggr']:.2f} "
                  f"pf_quantile/aggr {r['paper']['pf_quantile_over_aggr']:.2f}")
    print(f"{len(jobs)} runs in {wall:.0f} s")

    timeline = {"workload": tl_workload, "load": float(tl_load),
                "runs": {r["policy"]: {**r["timeline"], "evictions": r["evictions"]}
                         for r in runs if "timeline" in r}}
    commit = tree_commit()
    out = Path(args.out or result_path("sim"))
    write_report(out, {
        "bench": "sim", "date": str(date.today()), "commit": commit,
        "machine": machine(),
        "wall_s": wall, "sim": asdict(sim), "paper_n_requests": args.paper_n_requests,
        "paper_sla": PAPER_SLA, "step_cost": asdict(cost),
        "workloads": {w: {"max_new_tokens": WORKLOADS[w].max_new_tokens,
                          "pool_tokens": workload_sim(sim, w).pool_tokens,
                          "closed_loop": WORKLOADS[w].paper} for w in workloads},
        "scheduler": asdict(sched_cfg), "capacity_rps": capacity, "verdict": verdicts,
        "results": rows, "kv_timeline": timeline,
    })
    plot(rows, timeline, sim, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
