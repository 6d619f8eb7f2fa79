"""GPU clocks and power while a benchmark runs, sampled by nvidia-smi.

An H200 serving LightLLM's workload draws its 700 W limit and lowers its SM clock to keep
it (about 1,590 of 1,980 MHz, bench/README.md "Serving on the H200"): a result measured at
the power cap is not comparable with a short kernel timing at full clock. The serving
scripts run `--sample` in the background during the measured passes and print the summary
beside their results.

    python bench/gpu_clocks.py --sample FILE.csv   # becomes nvidia-smi, sampling into FILE
    python bench/gpu_clocks.py FILE.csv            # the summary of a sampled file, as JSON
"""

from __future__ import annotations

import json
import os
import statistics
import sys

FIELDS = "timestamp,clocks.sm,power.draw,utilization.gpu,clocks_throttle_reasons.active"
SW_POWER_CAP = 0x4  # nvidia-smi clocks_event_reasons: the software power cap holds the clock


def sampler_command(path: str, period_ms: int = 500) -> list[str]:
    """nvidia-smi's command that appends one CSV line per period to path (no header or
    units: timestamp, SM clock MHz, power W, utilization %, event-reason bit mask)."""
    return ["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
            f"--loop-ms={period_ms}", f"--filename={path}"]


def summarize(path: str, busy_percent: float = 50.0) -> dict:
    """Medians over the samples with the GPU busy (utilization >= busy_percent) of the SM
    clock (MHz) and power (W), the lowest busy clock, and the share of busy samples whose
    clock the power cap held. An empty dict when no sample was busy. Raises OSError when
    the file cannot be read; lines that do not parse (a GPU that reports [N/A]) are
    skipped."""
    busy = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            try:
                sm, power, util, reasons = (float(parts[1]), float(parts[2]), float(parts[3]),
                                            int(parts[4], 16))
            except (IndexError, ValueError):
                continue
            if util >= busy_percent:
                busy.append((sm, power, reasons))
    if not busy:
        return {}
    return {
        "busy_samples": len(busy),
        "sm_clock_mhz_median": statistics.median(b[0] for b in busy),
        "sm_clock_mhz_min": min(b[0] for b in busy),
        "power_w_median": round(statistics.median(b[1] for b in busy), 1),
        "power_capped_share": round(sum(b[2] & SW_POWER_CAP != 0 for b in busy) / len(busy), 3),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sample":
        cmd = sampler_command(sys.argv[2])
        os.execvp(cmd[0], cmd)  # the caller's pid is nvidia-smi's: it stops it with kill
    elif len(sys.argv) == 2:
        print(json.dumps(summarize(sys.argv[1])))
    else:
        sys.exit("usage: gpu_clocks.py FILE.csv | --sample FILE.csv")
