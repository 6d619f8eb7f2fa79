"""Where a step's time goes while prompts arrive among running streams: host and device.

    python bench/profile_mixed.py bench/configs/llama-3.1-8b --tokenizer DIR --batch 96

`--batch` streams decode (random weights, CUDA graphs on); then, under torch.profiler,
`--waves` times `--prompts` new prompts of `--input-len` tokens arrive at once. Each step
is then listed with the loop's host time in prepare and launch, the device time of its
kernels, the device idle time between its first and last kernel (the device waiting for the
host inside the step) and the idle gap before it. The CUDA runtime calls that took longest
on the loop's thread follow: a call that blocks the host shows there.

The kernels of the steps with prompt tokens are then listed by name with their device time a
step (graph replays included: compare with AIOLLM_PREFILL_GRAPHS=0, the eager steps).

`--cprofile PATH` runs cProfile instead of torch.profiler around the launches of steps that
carry prompt tokens (the eager ones) and prints where their host time goes, by function: the
device idles whenever such a launch takes longer than the step queued before it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import pstats
import time
import gzip
import json
import os
import tempfile

import torch


async def run(args):
    from aiollm import Engine, SamplingParams

    n_new = args.prompts * args.waves
    total_len = args.context + args.decode_steps + 16
    eng = Engine(args.model, load_format="dummy", dtype="bfloat16", tokenizer=args.tokenizer,
                 max_model_len=total_len, max_running_requests=args.batch + n_new,
                 kv_tokens=(args.batch + n_new + 8) * total_len)
    await eng.start()
    runner = eng.runner
    g = torch.Generator().manual_seed(0)

    def prompt(n):
        return torch.randint(100, 30000, (n,), generator=g).tolist()

    short = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    try:  # warm-up: compile the prefill and decode kernels at these shapes
        await asyncio.gather(*(eng.generate(prompt(args.input_len), short)
                               for _ in range(args.prompts)))
        long = SamplingParams(max_tokens=args.decode_steps, temperature=0, ignore_eos=True)
        streams = [eng.stream(prompt(args.context), long) for _ in range(args.batch)]

        async def drain(s):
            async for _ in s:
                pass
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.gather(*firsts)
        tasks = [asyncio.ensure_future(drain(s)) for s in streams]
        await asyncio.sleep(0.2)

        def annotate(fn, label):
            def wrapped(*a):
                with torch.profiler.record_function(label(*a)):
                    return fn(*a)
            return wrapped
        if args.cprofile:
            prof, launches = cProfile.Profile(), []
            launch = runner.launch

            def profiled(inp):  # only the eager steps: decode batches replay a graph
                if inp.batch is None:
                    return launch(inp)
                t = time.perf_counter()
                out = prof.runcall(launch, inp)
                launches.append((inp.batch.input_ids.shape[0], time.perf_counter() - t))
                return out
            runner.launch = profiled
            prepare = runner.prepare

            def profiled_prepare(step, table):  # the eager steps' batch building
                if step.num_tokens == len(step.reqs):
                    return prepare(step, table)
                t = time.perf_counter()
                out = prof.runcall(prepare, step, table)
                launches.append(("prepare", time.perf_counter() - t))
                return out
            runner.prepare = profiled_prepare
            for _ in range(args.waves):
                await asyncio.gather(*(eng.generate(prompt(args.input_len), short)
                                       for _ in range(args.prompts)))
                await asyncio.sleep(0.05)
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return prof, launches
        runner.prepare = annotate(runner.prepare, lambda step, _t: (
            f"aiollm.prepare reqs={len(step.reqs)} tokens={step.num_tokens}"))
        runner.launch = annotate(runner.launch, lambda inp: "aiollm.launch")
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(args.waves):
                await asyncio.gather(*(eng.generate(prompt(args.input_len), short)
                                       for _ in range(args.prompts)))
                await asyncio.sleep(0.05)
            torch.cuda.synchronize()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await eng.stop()
    return prof


def analyse(trace: dict, top: int) -> dict:
    ev = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    ann = sorted((e for e in ev if e.get("cat") == "user_annotation"
                  and e["name"].startswith("aiollm.")), key=lambda e: e["ts"])
    loop_tid = ann[0]["tid"]
    runtime = sorted((e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver")),
                     key=lambda e: e["ts"])
    dev = collections.defaultdict(list)  # a graph launch's kernels share its correlation id
    for e in ev:
        if (e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
                and "correlation" in e.get("args", {})):
            dev[e["args"]["correlation"]].append(e)
    steps, prev_end, cur = [], None, None
    for a in ann:
        if a["name"].startswith("aiollm.prepare"):
            cur = {"step": a["name"].split(" ", 1)[1], "prepare_ms": a["dur"] / 1e3,
                   "t0": a["ts"], "t1": a["ts"] + a["dur"]}
            continue
        if cur is None:
            continue
        cur["launch_ms"] = a["dur"] / 1e3
        t0, t1 = cur.pop("t0"), a["ts"] + a["dur"]
        cur.pop("t1")
        ks = [k for r in runtime
              if r["tid"] == loop_tid and t0 <= r["ts"] <= t1
              and r.get("args", {}).get("correlation") in dev
              for k in dev[r["args"]["correlation"]]]
        if ks:
            start = min(k["ts"] for k in ks)
            end = max(k["ts"] + k["dur"] for k in ks)
            busy = sum(k["dur"] for k in ks)
            cur.update(device_span_ms=(end - start) / 1e3, device_busy_ms=busy / 1e3,
                       idle_in_step_ms=(end - start - busy) / 1e3,
                       gap_before_ms=None if prev_end is None else (start - prev_end) / 1e3,
                       kernels=len(ks))
            by_name = collections.Counter()
            for k in ks:
                by_name[k["name"][:90]] += k["dur"] / 1e3
            cur["kernel_ms"] = dict(by_name.most_common())
            prev_end = end
        steps.append(cur)
        cur = None
    calls = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in runtime:
        if r["tid"] == loop_tid:
            c = calls[r["name"]]
            c[0] += 1
            c[1] += r["dur"] / 1e3
            c[2] = max(c[2], r["dur"] / 1e3)
    worst = sorted(calls.items(), key=lambda kv: -kv[1][1])[:top]
    return {"steps": steps, "runtime_calls": [
        {"name": n, "count": c, "total_ms": round(t, 3), "max_ms": round(m, 3)}
        for n, (c, t, m) in worst]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--batch", type=int, default=96, help="streams decoding")
    ap.add_argument("--context", type=int, default=1024, help="their prompt length")
    ap.add_argument("--decode-steps", type=int, default=400)
    ap.add_argument("--prompts", type=int, default=2, help="prompts arriving at once")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--waves", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--trace", default=None, help="also write the chrome trace here (.json.gz)")
    ap.add_argument("--out", default=None, help="the analysis as JSON")
    ap.add_argument("--cprofile", default=None,
                    help="cProfile the eager launches instead; write the stats here")
    args = ap.parse_args()
    prof = asyncio.run(run(args))
    if args.cprofile:
        prof, launches = prof
        prof.dump_stats(args.cprofile)
        print("eager prepare/launch (tokens, host ms):",
              [(n, round(1e3 * s, 2)) for n, s in launches])
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(args.top)
        st.sort_stats("cumulative").print_stats(args.top)
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    if args.trace:
        with gzip.open(args.trace, "wt") as f:
            json.dump(trace, f)
    res = analyse(trace, args.top)
    print(f"{'step':<22} {'prep ms':>8} {'launch ms':>9} {'dev busy':>8} {'dev span':>8} "
          f"{'idle in':>8} {'gap before':>10} {'kernels':>7}")
    for s in res["steps"]:
        gap = s.get("gap_before_ms")
        print(f"{s['step']:<22} {s['prepare_ms']:8.2f} {s['launch_ms']:9.2f} "
              f"{s.get('device_busy_ms', 0):8.2f} {s.get('device_span_ms', 0):8.2f} "
              f"{s.get('idle_in_step_ms', 0):8.2f} {'' if gap is None else f'{gap:.2f}':>10} "
              f"{s.get('kernels', 0):7d}")
    def has_prompt(s):  # "reqs=R tokens=T": more tokens than requests
        reqs, tokens = (int(part.split("=")[1]) for part in s["step"].split())
        return tokens > reqs and "kernel_ms" in s
    prompt_steps = [s for s in res["steps"] if has_prompt(s)]
    if prompt_steps:
        total = collections.Counter()
        for s in prompt_steps:
            total.update(s["kernel_ms"])
        busy = sum(total.values())
        print(f"\nkernels of the {len(prompt_steps)} steps with prompt tokens "
              f"({', '.join(s['step'] for s in prompt_steps)}), device ms a step by name:")
        for name, ms in total.most_common(args.top):
            print(f"  {ms / len(prompt_steps):8.3f} ms {100 * ms / busy:5.1f}%  {name}")
    print("\nCUDA runtime/driver calls on the loop thread, by total time:")
    for c in res["runtime_calls"]:
        print(f"  {c['total_ms']:9.2f} ms total {c['max_ms']:8.2f} max {c['count']:6d} x  "
              f"{c['name']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
