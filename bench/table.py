"""Batch metadata from the request table vs from Python request objects.

Builds the metadata of a 256-request decode batch (sequence lengths, req_to_token rows and
the sampling parameters) both ways and prints the time of each and their ratio.
Usage: python bench/table.py [--batch 256] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from aiollm.native import RequestTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                   "presence_penalty", "frequency_penalty", "seed")


@dataclass
class PyRequest:
    prompt_len: int
    output_len: int
    req_row: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int


def from_objects(reqs: list[PyRequest]) -> dict[str, np.ndarray]:
    return {
        "seq_lens": np.array([r.prompt_len + r.output_len for r in reqs], dtype=np.int32),
        "req_rows": np.array([r.req_row for r in reqs], dtype=np.int32),
        **{f: np.array([getattr(r, f) for r in reqs]) for f in SAMPLING_FIELDS},
    }


TABLE_FIELDS = ("prompt_len", "output_len", "req_row") + SAMPLING_FIELDS


def from_table(table: RequestTable, slots: np.ndarray) -> dict[str, np.ndarray]:
    rec = table.gather_fields(TABLE_FIELDS, slots)
    return {
        "seq_lens": rec["prompt_len"] + rec["output_len"],
        "req_rows": rec["req_row"],
        **{f: rec[f] for f in SAMPLING_FIELDS},
    }


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - t0) / repeat)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/table-DATE.json)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    table = RequestTable(4096)
    reqs, slots = [], []
    for i in range(args.batch):
        s = table.alloc()
        r = PyRequest(int(rng.integers(16, 2048)), int(rng.integers(0, 512)), i,
                      float(rng.random()), 0.9, 50, 0.0, 1.0, 0.0, 0.0, int(rng.integers(0, 2**40)))
        for f, v in vars(r).items():
            table[s][f] = v
        reqs.append(r)
        slots.append(s)
    slots = np.array(rng.permutation(slots), dtype=np.int32)
    by_slot = {s: r for s, r in zip(range(args.batch), reqs)}
    reqs = [by_slot[int(s)] for s in slots]

    a, b = from_objects(reqs), from_table(table, slots)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)

    t_obj = best_of(lambda: from_objects(reqs), args.repeat)
    t_tab = best_of(lambda: from_table(table, slots), args.repeat)
    ratio = t_obj / t_tab
    print(f"batch {args.batch}: python objects {t_obj * 1e6:8.1f} us | "
          f"request table {t_tab * 1e6:8.1f} us | ratio {ratio:5.1f}x")
    commit = tree_commit()
    out = Path(args.out or result_path("table"))
    write_report(out, {
        "bench": "table", "date": str(date.today()), "commit": commit,
        "machine": f"{platform.processor() or platform.machine()} ({platform.python_version()})",
        "batch": args.batch, "python_objects_us": t_obj * 1e6, "table_us": t_tab * 1e6,
        "ratio": ratio,
    }, indent=2)


if __name__ == "__main__":
    main()
