"""Summarise a server's step log (AIOLLM_STEP_LOG: one JSON line per step, written at stop)
per burst of work: the log is cut wherever no step was launched for `--gap` seconds, which on
a benchmark server separates the runs (each client start takes seconds).

Per burst: steps, wall seconds, the device's share (sum of device_s over the wall), the
device's idle time between steps (gap_s: the host launched the next step late), and for
decode steps (no prefill token) and prefill steps apart: count, median device_s, and where
the step was constrained, median forward_s and the median and sum of the device's wait for
the mask (device_s - forward_s: the sampling queued after the forward had ended), and the
median host time to fill the mask and to queue the sampling; and the Triton kernel compiles
that happened within the burst (count, seconds, kernel names).

Usage: python bench/step_log.py steps.jsonl[.gz] [--gap 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics


def bursts(recs: list[dict], gap: float) -> list[list[dict]]:
    out: list[list[dict]] = []
    last = None
    for r in sorted(recs, key=lambda r: r["launched"]):
        if last is None or r["launched"] - last > gap:
            out.append([])
        out[-1].append(r)
        last = r["launched"]
    return out


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summary(steps: list[dict]) -> dict:
    wall = max(r["processed"] for r in steps) - min(r["launched"] for r in steps)
    dev = [r["device_s"] for r in steps if r.get("device_s") is not None]
    # the first step's gap is the idle time before the burst
    gaps = [r["gap_s"] for r in steps[1:] if r.get("gap_s") is not None]
    row = {"steps": len(steps), "wall_s": wall, "device_s": sum(dev),
           "device_share": sum(dev) / wall if wall > 0 else None, "idle_gap_s": sum(gaps)}
    for kind, sel in (("decode", lambda r: r["prefill_tokens"] == 0),
                      ("prefill", lambda r: r["prefill_tokens"] > 0)):
        part = [r for r in steps if sel(r) and r.get("device_s") is not None]
        con = [r for r in part if r.get("forward_s") is not None]
        waits = [r["device_s"] - r["forward_s"] for r in con]
        row[kind] = {"steps": len(part), "device_ms_p50": _ms(_med([r["device_s"] for r in part])),
                     "constrained": len(con),
                     "forward_ms_p50": _ms(_med([r["forward_s"] for r in con])),
                     "mask_wait_ms_p50": _ms(_med(waits)), "mask_wait_s_sum": sum(waits),
                     # the host's part: fill the mask, then queue the sampling (None before
                     # these fields were logged)
                     "mask_host_ms_p50": _ms(_med([r["mask_host_s"] for r in con
                                                   if r.get("mask_host_s") is not None])),
                     "sample_host_ms_p50": _ms(_med([r["sample_host_s"] for r in con
                                                     if r.get("sample_host_s") is not None]))}
    return row


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1e3 * x, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    # the benches keep step logs gzipped next to their results
    with (gzip.open(a.log, "rt") if a.log.endswith(".gz") else open(a.log)) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    compiles = [r for r in recs if "compile" in r]  # kernel compiles, not steps
    recs = [r for r in recs if "launched" in r]
    groups = bursts(recs, a.gap)
    rows = [summary(b) for b in groups]
    for row, b in zip(rows, groups):
        t0, t1 = b[0].get("turn_start") or b[0]["launched"], b[-1]["processed"]
        inside = [c for c in compiles if t0 <= c["at"] <= t1]
        row["compiles"] = len(inside)
        row["compile_s"] = sum(c["s"] for c in inside)
        row["compiled"] = sorted({c["compile"] for c in inside})
    for i, r in enumerate(rows):
        d, p = r["decode"], r["prefill"]
        print(f"burst {i}: {r['steps']} steps, {r['wall_s']:.2f} s wall, device "
              f"{r['device_share'] or 0:.0%}, idle between steps {r['idle_gap_s']:.3f} s; decode {d['steps']} x {d['device_ms_p50']} ms "
              f"(constrained {d['constrained']}: forward {d['forward_ms_p50']} ms, mask wait "
              f"p50 {d['mask_wait_ms_p50']} ms, sum {d['mask_wait_s_sum']:.3f} s, host: mask "
              f"{d['mask_host_ms_p50']} ms, sampling {d['sample_host_ms_p50']} ms); prefill "
              f"{p['steps']} x {p['device_ms_p50']} ms (mask wait sum {p['mask_wait_s_sum']:.3f} s); "
              f"{r['compiles']} kernel compiles, {r['compile_s']:.2f} s {r['compiled']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
