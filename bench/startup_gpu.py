"""Time to healthy of `aiollm serve` for several checkouts, with a cold and a warm Triton cache,
and decode speed of each checkout (bench/decode.py), in one run.

For each checkout (NAME:COMMIT=DIR, e.g. main's tree and a branch's copy beside it): a server
starts with an empty TRITON_CACHE_DIR (cold: every kernel compiles) and then again on the
cache that start filled (warm). Each start is timed from spawning the process to its first
200 from /health (polled every 20 ms); the server's log timestamps give the phases (weights,
KV pool, decode-graph capture, warm-up), and the Triton cache the kernel variants compiled,
counted by kernel name and by phase (from each cubin's modification time). Then
bench/decode.py runs in each checkout on its warm cache. Everything goes to one JSON, written
after every step (a run cut short still leaves what it measured), and the logs beside it.

    python3 bench/startup_gpu.py --checkout main:abc1234=. --checkout mine:def5678=../mine \\
        --model bench/configs/llama-3.1-8b --tokenizer tok --out-dir $OUT

The cold starts run first, in the order given, then the warm ones, then decode. --dry-run
keeps everything but bench/decode.py (for the CPU: the model's phases just do not appear).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from results_file import result_path, write_report  # bench/results_file.py
from startup import free_port, healthy  # bench/startup.py: the CPU start-up bench

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
# phase name -> pattern of the log line that ends it (a group: the seconds the line reports)
PHASES = {
    "weights": re.compile(r"weights and tokenizer loaded in ([\d.]+)s"),
    "kv_pool": re.compile(r"KV pool and request table allocated at ([\d.]+)s"),
    "capture": re.compile(r"captured \d+ decode CUDA graphs .* in ([\d.]+)s"),
    "warm_up": re.compile(r"warm-up: .* in ([\d.]+)s"),
    "engine": re.compile(r"device \S+: loaded in ([\d.]+)s"),
}


def checkout_env(path: str, cache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    extra = env.get("STARTUP_EXTRA_PYTHONPATH")  # e.g. the device's wheel dir (/tmp/site)
    env["PYTHONPATH"] = os.path.abspath(path) + (f":{extra}" if extra else "")
    if cache:
        env["TRITON_CACHE_DIR"] = cache
    return env


def log_events(log_path: str, t_spawn: float) -> dict:
    """Seconds after the spawn at which each phase's log line was written, and what the line
    itself reports (the phase's duration, or for weights/KV the time since the load began)."""
    events: dict = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip("\n"))
            if not m:
                continue
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.setdefault("first_log_line", round(stamp - t_spawn, 3))
            for name, pat in PHASES.items():
                p = pat.search(m.group(2))
                if p and name not in events:
                    events[name] = {"at_s": round(stamp - t_spawn, 3), "reported_s": float(p.group(1))}
    return events


def triton_variants(cache: str, bounds: list[tuple[str, float]]) -> dict:
    """Compiled kernel variants in a Triton cache: by kernel name, and by the phase whose end
    (a wall-clock time in `bounds`, ascending) first follows the cubin's modification time."""
    by_name: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    for cubin in glob.glob(os.path.join(cache, "*", "*.cubin")):
        name = os.path.basename(cubin).removesuffix(".cubin")
        by_name[name] = by_name.get(name, 0) + 1
        mtime = os.path.getmtime(cubin)
        phase = next((p for p, end in bounds if mtime <= end), "after")
        by_phase[phase] = by_phase.get(phase, 0) + 1
    return {"total": sum(by_name.values()), "by_kernel": dict(sorted(by_name.items())),
            "by_phase": by_phase}


def one_start(name: str, path: str, cache: str, args, log_path: str) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "aiollm.cli", "serve", args.model, "--port", str(port),
           *args.serve_args]
    env = checkout_env(path, cache)
    with open(log_path, "w") as log:
        t_spawn = time.time()
        proc = subprocess.Popen(cmd, cwd=path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}/health"
        t_healthy = None
        try:
            while time.time() - t_spawn < args.timeout:
                if healthy(url):
                    t_healthy = time.time()
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    events = log_events(log_path, t_spawn)
    res = {"checkout": name, "healthy_s": None if t_healthy is None else round(t_healthy - t_spawn, 3),
           "exit_code": proc.returncode, "events": events, "log": os.path.basename(log_path)}
    bounds = [(p, t_spawn + events[p]["at_s"]) for p in PHASES if p in events]
    if t_healthy is not None:
        bounds.append(("until_healthy", t_healthy))
    res["triton_variants"] = triton_variants(cache, sorted(bounds, key=lambda b: b[1]))
    return res


def run_decode(name: str, path: str, cache: str, args, log_dir: str) -> dict:
    out = os.path.join(log_dir, f"decode-{name}")
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "bench/decode.py", args.model, "--no-hf", "--out-dir", out,
           "--batch", *map(str, args.decode_batches)]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    t0 = time.time()
    with open(os.path.join(log_dir, f"decode-{name}.log"), "w") as log:
        rc = subprocess.run(cmd, cwd=path, env=checkout_env(path, cache), stdout=log,
                            stderr=subprocess.STDOUT, timeout=args.timeout).returncode
    res: dict = {"checkout": name, "exit_code": rc, "wall_s": round(time.time() - t0, 1)}
    found = sorted(glob.glob(os.path.join(out, "decode-*.json")))
    if found:
        report = json.load(open(found[-1]))
        res["ceilings"] = report["ceilings"]
        for model in report["models"].values():
            res["batches"] = {b: {"tokens_per_s": e["aiollm"]["tokens_per_s"],
                                  "step_ms": e["aiollm"]["step_ms"],
                                  "device_ms_per_step": e["aiollm"]["device_ms_per_step"],
                                  "fraction_of_roofline": e["fraction_of_roofline"]}
                              for b, e in model["batches"].items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", action="append", required=True,
                    help="NAME:COMMIT=DIR, a source tree to run (repeat)")
    ap.add_argument("--model", default="bench/configs/llama-3.1-8b")
    ap.add_argument("--tokenizer", default=None, help="absolute path, or relative to each DIR")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--log-dir", default=None, help="server and decode logs (default: a temp dir)")
    ap.add_argument("--cache-root", default="/tmp/startup-triton")
    ap.add_argument("--dry-run", action="store_true", help="no decode runs, no dummy weights")
    args = ap.parse_args()
    checkouts = []
    for spec in args.checkout:
        label, _, path = spec.partition("=")
        name, _, commit = label.partition(":")
        if not path or not os.path.isdir(path):
            ap.error(f"--checkout {spec!r}: want NAME:COMMIT=DIR with an existing DIR")
        checkouts.append((name, commit or "unknown", os.path.abspath(path)))
    args.serve_args = ["--max-model-len", str(args.max_model_len)]
    if not args.dry_run:
        args.serve_args += ["--load-format", "dummy"]
    if args.tokenizer:
        args.serve_args += ["--tokenizer", args.tokenizer]
    log_dir = args.log_dir or os.path.join(args.out_dir, "startup-logs")
    os.makedirs(log_dir, exist_ok=True)
    os.makedirs(args.out_dir, exist_ok=True)

    try:  # not torch: a CUDA context here would take memory the servers size their KV from
        device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        device = "cpu"
    date = datetime.date.today().isoformat()
    tag = "-".join(c for _, c, _ in checkouts)
    out = result_path("startup", device=device, commit=tag, day=date, out_dir=args.out_dir)
    report = {"bench": "startup_gpu", "date": date, "device": device, "model": args.model,
              "serve_args": args.serve_args, "checkouts": {n: c for n, c, _ in checkouts},
              "starts": [], "decode": []}

    def save():
        write_report(out, report)

    caches = {}
    for state in ("cold", "warm"):
        for name, _, path in checkouts:
            cache = caches.setdefault(name, os.path.join(args.cache_root, name))
            if state == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            res = one_start(name, path, cache, args, os.path.join(log_dir, f"serve-{name}-{state}.log"))
            res["triton_cache"] = state
            report["starts"].append(res)
            save()
            ev = res["events"]
            print(f"{name:12} {state}: healthy {res['healthy_s']} s; capture "
                  f"{ev.get('capture', {}).get('reported_s')} s, warm-up "
                  f"{ev.get('warm_up', {}).get('reported_s')} s; "
                  f"{res['triton_variants']['total']} kernel variants in the cache", flush=True)
    if not args.dry_run:
        for name, _, path in checkouts:
            res = run_decode(name, path, caches[name], args, log_dir)
            report["decode"].append(res)
            save()
            print(f"{name:12} decode (rc {res['exit_code']}): " + ", ".join(
                f"b{b} {v['tokens_per_s']:.1f} tok/s" for b, v in res.get("batches", {}).items()),
                flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
