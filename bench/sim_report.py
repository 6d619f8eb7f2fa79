"""Reporting for bench/sim.py: mean over seeds, the verdict, the printed table and the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# pf_paper / pf_quantile: Past-Future with the paper's sampled estimator / a fixed quantile.
POLICIES = ("pf_paper", "pf_quantile", "aggressive", "conservative")
COLORS = {"pf_paper": "tab:green", "pf_quantile": "tab:olive", "aggressive": "tab:blue",
          "conservative": "tab:orange", "oracle": "tab:red"}
# The goodput of each SLA in a result row: ours (TTFT <= 1 s, mean TPOT <= 50 ms) and the
# paper's (TTFT <= 10 s, longest gap between two tokens <= 1.5 s).
SLAS = {"ours": "goodput_req_s", "paper": "goodput_paper_req_s"}


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
    """Per workload and load, for each SLA: the policy of highest goodput (the oracle is a
    reference, not a candidate), its margin over the runner-up, and each Past-Future
    estimator's goodput over aggressive's. `heavy` is kept for the caller's summary."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["workload"], {}).setdefault(r["load"], {})[r["policy"]] = r
    for w, loads in out.items():
        for load, by in loads.items():
            res = {}
            for sla, key in SLAS.items():
                good = {p: by[p][key] for p in POLICIES if p in by}
                ranked = sorted(good, key=good.get, reverse=True)
                aggr = good.get("aggressive", 0.0)

                def ratio(a: float, b: float) -> float:
                    return a / b if b > 0 else (1.0 if a == 0 else float("inf"))

                res[sla] = {
                    # within 1 % of the best: a tie (one seed of a few hundred requests)
                    "best": ranked[0] if good[ranked[0]] > 1.01 * good[ranked[1]] else "tie",
                    "leaders": [p for p in ranked if good[p] >= good[ranked[0]] / 1.01],
                    "goodput": good,
                    "best_over_next": ratio(good[ranked[0]], good[ranked[1]]) if len(ranked) > 1
                    else None,
                    "pf_paper_over_aggr": ratio(good.get("pf_paper", 0.0), aggr),
                    "pf_quantile_over_aggr": ratio(good.get("pf_quantile", 0.0), aggr),
                    "oracle": by["oracle"][key] if "oracle" in by else None,
                }
            loads[load] = res
    return out


def print_table(rows: list[dict]) -> None:
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p not in POLICIES, p))
    cols = ("goodput_req_s", "goodput_paper_req_s", "throughput_tok_s", "ttft_p50_s",
            "evictions", "stall_p99_s", "gap_over_1_5s", "kv_util")
    for w in sorted({r["workload"] for r in rows}):
        print(f"\n{w}")
        print(f"{'load':>5} {'req/s':>6} {'policy':>19} " + " ".join(f"{c[:16]:>16}" for c in cols))
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
    """Goodput vs load per workload under our SLA (top) and the paper's (middle); KV in use
    over time of one run (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in rows})
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p not in POLICIES, p))
    fig = plt.figure(figsize=(3.6 * len(workloads), 11), constrained_layout=True)
    grid = fig.add_gridspec(3, len(workloads))
    titles = {"ours": "TTFT <= 1 s, mean TPOT <= 50 ms",
              "paper": "paper: TTFT <= 10 s, max gap <= 1.5 s"}
    for row, (sla, key) in enumerate(SLAS.items()):
        for i, w in enumerate(workloads):
            ax = fig.add_subplot(grid[row, i])
            closed = any(r.get("clients") for r in rows if r["workload"] == w)
            for p in policies:
                pts = [(r["load"], r[key]) for r in rows
                       if r["workload"] == w and r["policy"] == p]
                ax.plot(*zip(*pts), marker="o", ms=3, label=p, lw=2 if p in POLICIES else 1,
                        color=_color(p, policies))
            ax.set_title(f"{w}\n{titles[sla]}", fontsize=9)
            ax.set_xlabel("closed-loop clients" if closed else "load (x capacity)")
            ax.set_ylabel("goodput (req/s within SLA)" if i == 0 else "")
            ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    ax = fig.add_subplot(grid[2, :])
    for p, tl in timeline["runs"].items():
        ax.plot(tl["t"], tl["kv_used"], lw=1, label=f"{p} ({tl['evictions']} evictions)",
                color=_color(p, policies))
    ax.set_title(f"KV pool in use, {timeline['workload']} at load {timeline['load']}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("fraction of pool")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("bench/sim.py: goodput per policy under each SLA")
    fig.savefig(path, dpi=100)
