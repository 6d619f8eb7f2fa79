"""The step log: per-step timings for benchmark diagnostics (bench/step_log.py summarises it).

With AIOLLM_STEP_LOG=path the Engine records one entry per completed step, kept in memory
and written to `path` as JSON lines when it stops, so that logging costs a step no I/O.
"""

from __future__ import annotations

import json
import os
import time


class StepLog:
    """Entries of completed steps. Times are time.perf_counter() seconds: turn_start (the
    loop's turn that planned it began), issued (its launch returned; None on the CPU, where
    the launch is the computation), launched (it became the step in flight: after its
    sampling was queued, and after the previous step's tokens were handed out), done_seen
    (the loop saw it done), processed (its tokens were handed out); device_s the step's
    device time, gap_s the device's idle time before it, forward_s the forward's part of
    device_s in a constrained step (the rest waited for its mask), all from CUDA events and
    None on the CPU; mask_host_s and sample_host_s the host seconds a
    constrained step took to fill its mask and to queue its sampling (None otherwise); reqs,
    tokens and prefill_tokens its size. Kernel compiles get entries of their own:
    {"compile": kernel name, "at": perf_counter seconds it began, "s": seconds it took} (a
    Triton kernel variant compiled or loaded from its cache while serving stalls the loop; the
    times place it in a step's turn)."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []
        self._hooks = _watch_compiles(self.records)

    @classmethod
    def from_env(cls) -> StepLog | None:
        """The log $AIOLLM_STEP_LOG names, or None when it is unset or empty."""
        path = os.environ.get("AIOLLM_STEP_LOG")
        return cls(path) if path else None

    def record(self, step, out, launched: float, done_seen: float, device_s: float | None,
               gap_s: float | None) -> None:
        """Add the entry of a completed step (engine.planner.Step) and its
        step_results.Launched `out`."""
        fwd = out.forward_end
        self.records.append({
            "launched": launched, "done_seen": done_seen, "processed": time.perf_counter(),
            "device_s": device_s, "gap_s": gap_s,
            "forward_s": out.start.elapsed_time(fwd) / 1e3 if fwd and out.done else None,
            "mask_host_s": out.mask_host_s, "sample_host_s": out.sample_host_s,
            "turn_start": out.turn_start, "issued": out.issued,
            "reqs": len(step.reqs), "tokens": step.num_tokens,
            "prefill_tokens": sum(n for n in step.extend_lens if n > 1)})

    def write(self) -> None:
        """Write every entry to the path, one JSON object a line (the file is replaced), and
        stop watching compiles."""
        if self._hooks is not None:
            self._hooks()
            self._hooks = None
        with open(self.path, "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in self.records)


def _watch_compiles(records: list[dict]):
    """Append an entry to `records` for each Triton kernel compile (or load from Triton's
    cache) through Triton's JIT hooks (triton.knobs.runtime, Triton >= 3.4); returns the
    function that restores the hooks, or None where Triton lacks them or others use them."""
    try:
        from triton import knobs
        rt = knobs.runtime
        if rt.jit_cache_hook is not None or rt.jit_post_compile_hook is not None:
            return None
    except (ImportError, AttributeError):
        return None
    started: list[float] = []  # compiles run one at a time on the launching thread

    def before(**_) -> bool:
        started.append(time.perf_counter())
        return False  # a true value would make Triton skip the compile

    def after(*, fn, **_) -> None:
        t = time.perf_counter()
        t0 = started.pop() if started else t
        records.append({"compile": getattr(fn, "name", str(fn)), "at": t0, "s": t - t0})

    rt.jit_cache_hook, rt.jit_post_compile_hook = before, after

    def restore() -> None:
        rt.jit_cache_hook = rt.jit_post_compile_hook = None
    return restore
