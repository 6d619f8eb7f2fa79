"""Reporting for bench/sim.py: mean over seeds, the verdict, the printed table and the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

POLICIES = ("past_future", "aggressive", "conservative")
COLORS = {"past_future": "tab:green", "aggressive": "tab:blue", "conservative": "tab:orange",
          "oracle": "tab:red"}


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean over seeds of every numeric metric, per (workload, load, policy)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["load"], r["policy"]), []).append(r)
    out = []
    for (w, load, pol), rs in groups.items():
        row = {"workload": w, "load": load, "rate": rs[0]["rate"], "policy": pol,
               "seeds": len(rs)}
        for k, v in rs[0].items():
            if k not in row and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = float(np.mean([x[k] for x in rs]))
        out.append(row)
    return sorted(out, key=lambda r: (r["workload"], r["load"], r["policy"]))


def verdict(rows: list[dict], heavy: float) -> dict:
    """Past-Future's goodput against the better baseline, per workload: the worst ratio
    over all loads, and the worst ratio over loads >= heavy."""
    out = {}
    for w in sorted({r["workload"] for r in rows}):
        by = {(r["load"], r["policy"]): r["goodput_req_s"] for r in rows if r["workload"] == w}
        ratios = {}
        for load in sorted({lo for lo, _ in by}):
            best = max(by.get((load, p), 0.0) for p in ("aggressive", "conservative"))
            ratios[load] = by[(load, "past_future")] / best if best > 0 else float("inf")
        heavy_r = [v for lo, v in ratios.items() if lo >= heavy]
        out[w] = {"pf_over_best_baseline": ratios, "min_ratio": min(ratios.values()),
                  "min_ratio_heavy": min(heavy_r) if heavy_r else None}
    return out


def print_table(rows: list[dict]) -> None:
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p not in POLICIES, p))
    cols = ("goodput_req_s", "throughput_tok_s", "ttft_p50_s", "queue_mean_s", "evictions",
            "kv_util")
    for w in sorted({r["workload"] for r in rows}):
        print(f"\n{w}")
        print(f"{'load':>5} {'req/s':>6} {'policy':>19} " + " ".join(f"{c:>16}" for c in cols))
        for r in (r for r in rows if r["workload"] == w):
            if r["policy"] not in policies:
                continue
            vals = " ".join(f"{r[c]:16.3f}" if isinstance(r[c], float) else f"{r[c]:16d}"
                            for c in cols)
            print(f"{r['load']:5.2f} {r['rate']:6.2f} {r['policy']:>19} {vals}")


def _color(policy: str, policies: list[str]) -> str:
    # Fixed colours for the named policies; the quantile variants get shades of grey.
    if policy in COLORS:
        return COLORS[policy]
    variants = [p for p in policies if p not in COLORS]
    return str(0.15 + 0.6 * variants.index(policy) / max(len(variants) - 1, 1))


def plot(rows: list[dict], timeline: dict, sim, path: Path) -> None:
    """Goodput vs arrival rate per workload (top), KV in use over time of one run (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in rows})
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p not in POLICIES, p))
    fig = plt.figure(figsize=(4.2 * len(workloads), 8.4), constrained_layout=True)
    grid = fig.add_gridspec(2, len(workloads))
    for i, w in enumerate(workloads):
        ax = fig.add_subplot(grid[0, i])
        for p in policies:
            pts = [(r["rate"], r["goodput_req_s"]) for r in rows
                   if r["workload"] == w and r["policy"] == p]
            ax.plot(*zip(*pts), marker="o", ms=3, label=p, lw=2 if p in POLICIES else 1,
                    color=_color(p, policies))
        ax.set_title(w)
        ax.set_xlabel("arrival rate (req/s)")
        ax.set_ylabel("goodput (req/s within SLA)" if i == 0 else "")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    for p, tl in timeline["runs"].items():
        ax.plot(tl["t"], tl["kv_used"], lw=1, label=f"{p} ({tl['evictions']} evictions)",
                color=_color(p, policies))
    ax.set_title(f"KV pool in use, {timeline['workload']} at load {timeline['load']} "
                 f"({sim.pool_tokens} tokens)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("fraction of pool")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"bench/sim.py: SLA TTFT <= {sim.ttft_slo} s, mean TPOT <= "
                 f"{sim.tpot_slo * 1e3:.0f} ms; {sim.n_requests} requests per point")
    fig.savefig(path, dpi=110)
