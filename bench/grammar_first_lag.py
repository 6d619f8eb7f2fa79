"""What a server's first grammar request costs the event loop: the worst overshoot of a task
that sleeps 5 ms in a loop (every other stream's tokens wait that long) while the first
json_object request builds xgrammar's view of the tokenizer and compiles, and while a second
one (cached) runs. Each pass is a fresh interpreter (the build is once a process), an Engine
of the default model's shape and tokenizer (a ServingTokenizer) with dummy weights.
`--route` builds the view by aiollm/engine/grammar_vocab.py (backend, the default), by its
fallback, from_huggingface of transformers' fast tokenizer around the backend (fast), or as
before it, from_huggingface of the directory's transformers tokenizer (directory).
`--xgrammar-imported` imports xgrammar first, as a GPU server's start does
(engine/warm_up.py): what is left is the view's build and the compile.

    python bench/grammar_first_lag.py [--passes 5] [--route backend|fast|directory]
        [--xgrammar-imported] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

PERIOD = 0.005  # the probe's sleep
ROUTES = ("backend", "fast", "directory")


async def _probe(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(PERIOD)
        worst[0] = max(worst[0], time.perf_counter() - t - PERIOD)


async def _timed(eng, params) -> tuple[float, float]:
    """(seconds of one generate(), the probe's worst overshoot meanwhile)."""
    stop, worst = asyncio.Event(), [0.0]
    probe = asyncio.ensure_future(_probe(stop, worst))
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await eng.generate("Hi", params)
    took = time.perf_counter() - t0
    stop.set()
    await probe
    return took, worst[0]


def _use_route(route: str) -> None:
    """Builds the view by `route` ("fast" or "directory") rather than grammar_vocab's."""
    from aiollm.engine import grammar

    def from_huggingface(tokenizer, vocab_size, stop_ids):
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        hf = (tokenizer.hf_tokenizer if route == "directory" else
              PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer))
        return xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size,
                                                  stop_token_ids=stop_ids or None)
    grammar.tokenizer_info = from_huggingface


async def _one_pass() -> dict:
    from aiollm import Engine, SamplingParams
    from aiollm.constraint import Constraint, GrammarSpec

    params = SamplingParams(max_tokens=2, constraint=Constraint(
        GrammarSpec("json_object", "", "response_format")))
    async with Engine(None, load_format="dummy", kv_tokens=256, max_model_len=64,
                      warm_up=False) as eng:
        await _timed(eng, SamplingParams(max_tokens=2))  # the first plain request's costs
        first, first_lag = await _timed(eng, params)
        second, second_lag = await _timed(eng, params)
    return {"tokenizer": type(eng.tokenizer).__name__, "first_ms": 1e3 * first,
            "first_worst_lag_ms": 1e3 * first_lag, "cached_ms": 1e3 * second,
            "cached_worst_lag_ms": 1e3 * second_lag}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--route", choices=ROUTES, default="backend")
    ap.add_argument("--xgrammar-imported", action="store_true")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a pass's child
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.one:
        if a.xgrammar_imported:
            import xgrammar  # noqa: F401
        if a.route != "backend":
            _use_route(a.route)
        print(json.dumps(asyncio.run(_one_pass())))
        return
    rows = []
    for _ in range(a.passes):
        cmd = [sys.executable, __file__, "--one", "--route", a.route] + (
            ["--xgrammar-imported"] * a.xgrammar_imported)
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"first json_object {r['first_ms']:6.0f} ms, worst loop lag "
              f"{r['first_worst_lag_ms']:6.1f} ms; cached {r['cached_ms']:5.0f} ms, "
              f"{r['cached_worst_lag_ms']:5.1f} ms", flush=True)
    median = {k: round(statistics.median(r[k] for r in rows), 1)
              for k in rows[0] if k.endswith("_ms")}
    print("median:", median)
    commit = tree_commit()
    tags = ([a.route] if a.route != "backend" else []) + (
        ["xgrammar-imported"] * a.xgrammar_imported)
    out = Path(a.out or result_path("grammar-first-lag", tags=tags, commit=commit))
    write_report(out, {"bench": "grammar_first_lag", "date": str(date.today()),
                       "commit": commit, "machine": "CPU (2 cores, shared)",
                       "route": a.route, "xgrammar_imported": a.xgrammar_imported,
                       "median": median,
                       "passes": rows}, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
