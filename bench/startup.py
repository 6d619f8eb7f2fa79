"""Start-up time of `aiollm serve`: process start to the first 200 from /health.

Starts the server `--runs` times (one discarded cold start first unless --no-prime, so the
caches are warm and the OS has the files in its page cache), polls /health every 10 ms, and
reports each run's time to healthy and the median. The server's own log lines with their
timestamps go to --log-dir, so the phases (imports, model load, tokenizer) can be read off.
--cold starts every run on its own empty AIOLLM_CACHE_DIR (a new user's first start: the
GGUF parsed, dequantized and its tokenizer converted), removed after the run.

    .venv/bin/python bench/startup.py                   # default model, 3 warm starts
    .venv/bin/python bench/startup.py --runs 5 -- --max-model-len 512
    .venv/bin/python bench/startup.py --cold            # 3 first starts, empty caches

Arguments after `--` are passed to `aiollm serve`. Writes bench/results/startup-DATE-COMMIT.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from commit import tree_commit  # bench/commit.py (bench/ is on the path of its scripts)
from results_file import result_path, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def one_start(serve_args: list[str], timeout: float, log_path: str | None,
              cache_dir: str | None = None) -> tuple[float, float | None]:
    """(seconds from spawning `aiollm serve` to its first 200 on /health, CPU seconds the
    server had used by then); stops the server after. `cache_dir`: its AIOLLM_CACHE_DIR
    (None: the one of this process's environment)."""
    port = free_port()
    cmd = [sys.executable, "-m", "aiollm.cli", "serve", "--port", str(port), *serve_args]
    env = dict(os.environ, **({"AIOLLM_CACHE_DIR": cache_dir} if cache_dir else {}))
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/health"
        while time.perf_counter() - t0 < timeout:
            if healthy(url):
                return time.perf_counter() - t0, cpu_seconds(proc.pid)
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before healthy "
                                   f"(log: {log_path})")
            time.sleep(0.01)
        raise TimeoutError(f"not healthy after {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-prime", action="store_true",
                    help="do not discard a first start (measure a cold start as run 1)")
    ap.add_argument("--cold", action="store_true",
                    help="every run on its own empty AIOLLM_CACHE_DIR (implies --no-prime)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--log-dir", default=None, help="keep each server's log here")
    ap.add_argument("--out", default=None, help="results JSON (default: bench/results/...)")
    ap.add_argument("serve_args", nargs="*", help="after --: arguments of `aiollm serve`")
    args = ap.parse_args()
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)

    def log_path(name: str) -> str | None:
        return os.path.join(args.log_dir, f"{name}.log") if args.log_dir else None

    prime = None
    if not (args.no_prime or args.cold):
        prime = one_start(args.serve_args, args.timeout, log_path("prime"))[0]
        print(f"prime (discarded): {prime:.2f} s")
    times, cpus, loads = [], [], []
    for i in range(args.runs):
        loads.append(os.getloadavg()[0])
        cache_dir = tempfile.mkdtemp(prefix="aiollm-cold-") if args.cold else None
        try:
            t, cpu = one_start(args.serve_args, args.timeout, log_path(f"run{i}"), cache_dir)
        finally:
            if cache_dir:
                shutil.rmtree(cache_dir, ignore_errors=True)
        times.append(t)
        cpus.append(cpu)
        print(f"run {i}: {t:.2f} s to healthy, {cpu or float('nan'):.2f} CPU s "
              f"(load average before: {loads[-1]:.2f})")
    median = statistics.median(times)
    print(f"median of {len(times)}: {median:.2f} s")

    date = datetime.date.today().isoformat()
    rev = tree_commit(ROOT)
    result = {"bench": "startup", "date": date, "commit": rev, "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "serve_args": args.serve_args, "cold": args.cold, "prime_s": prime, "runs_s": times,
              "cpu_s": cpus, "load_average_before": loads, "median_s": median}
    out = args.out or result_path("startup", commit=rev, day=date,
                                  out_dir=os.path.join(HERE, "results"))
    write_report(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
