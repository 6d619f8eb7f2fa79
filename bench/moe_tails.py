"""Where the fused-MoE layer's time goes at 4,096 tokens of Qwen3-30B-A3B (GPU): the routing's
imbalance, and the grouped GEMMs against cuBLAS.

Each expert's pairs are padded to a multiple of BLOCK_M (128), so with random routing about
half the experts (256 pairs each on average, 16 either side) end in a block of a few pairs,
which runs a tile of 64 rows (SPLIT 1). This script times the GEMMs alone and the whole
experts part (alignment, gate/up, down, top-k combine), replayed from CUDA graphs, in
interleaved rounds (medians), under three routings (random bf16 weights):

- random: softmax top-8 of random logits, 4,096 tokens (the bench/moe.py layer's routing);
- balanced: every expert exactly 256 pairs (4,096 tokens): no partial block at all;
- tails: every expert exactly 264 pairs (4,224 tokens): every expert ends in 8 pairs,

with the H200's tuned configs of the 4,096-token class and variants of them (MERGE: the
tails inside the previous block's tile, fused_moe_gemm_kernel.py; the tile order's GROUP_M).
cuBLAS's batched GEMM on the balanced routing (no gather, no padding) is the comparator,
and the experts' GEMM FLOPs over this run's dense bf16 matmul rate their compute roofline
(layer_compute_roofline_ms: no router GEMM in it).
nvidia-smi samples the SM clock and power during sustained runs of the dense matmul and of
the experts part. Writes bench/results/moe-tails-DATE-DEVICE-COMMIT.json.

    python bench/moe_tails.py [--rounds 5] [--warm N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import triton.testing

from aiollm.kernels.fused_moe import _grouped
from aiollm.kernels.fused_moe_gemm import _gate_up, _gemm
from aiollm.kernels.moe_align import moe_align_triton, moe_route_triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402
from results_file import result_path, write_report  # noqa: E402
from gpu_clocks import sampler_command  # noqa: E402

E, K_TOP, H, I = 128, 8, 2048, 768
# the H200's configs of the 4,096-token class (aiollm/kernels/configs/NVIDIA_H200.json)
UP = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "FUSED": 2, "GROUP_M": 8, "SPLIT": 1,
      "TMA": 1, "num_stages": 4, "num_warps": 8}
DOWN = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "SPLIT": 1, "TMA": 1,
        "num_stages": 4, "num_warps": 8}
UP_FORMS = {"tuned": UP, "merge": {**UP, "MERGE": 1}, "group-4": {**UP, "GROUP_M": 4}}
DOWN_FORMS = {"tuned": DOWN, "merge": {**DOWN, "MERGE": 1},
              "group-16": {**DOWN, "GROUP_M": 16}}
LAYERS = {"tuned": ("tuned", "tuned"), "merge up": ("merge", "tuned"),
          "merge both": ("merge", "merge")}


def routing(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, 8] float32, topk_ids [T, 8] int32) of one routing kind."""
    if kind == "random":
        logits = torch.randn(4096, E, device="cuda", generator=gen)
        return moe_route_triton(logits, K_TOP, True)
    per = {"balanced": 256, "tails": 264}[kind]
    T = E * per // K_TOP
    # the labels sorted, token t takes positions t, t + T, ..., t + 7T: its k-th expert is
    # (t + k * T) // per, and T = 16 * per, so its eight experts are 16 apart (all differ)
    labels = torch.arange(E, device="cuda").repeat_interleave(per)
    ids = labels.view(K_TOP, T).t().contiguous()
    perm = torch.randperm(T, device="cuda", generator=gen)
    ids = ids[perm].to(torch.int32)
    assert all((ids[:, a] != ids[:, b]).all() for a in range(K_TOP) for b in range(a))
    w = torch.softmax(torch.randn(T, K_TOP, device="cuda", generator=gen), dim=1)
    return w, ids


def graph_of(fn) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph, after one run outside it (Triton compiles there)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def replay_ms(g: torch.cuda.CUDAGraph) -> float:
    """Median ms of one replay of g (triton's do_bench: L2 flushed between replays)."""
    return float(triton.testing.do_bench(g.replay, warmup=10, rep=100, return_mode="median"))


def sustained(fn, seconds: float = 1.5) -> tuple[float, float]:
    """Runs fn back to back for about `seconds`: (start, end) in time.time()."""
    torch.cuda.synchronize()
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    return t0, time.time()


def clocks_between(path: str, t0: float, t1: float) -> dict:
    """Median SM clock (MHz) and power (W) of nvidia-smi's samples in [t0, t1]."""
    from datetime import datetime
    mhz, watts = [], []
    for line in open(path):
        p = [x.strip() for x in line.split(",")]
        try:
            ts = datetime.strptime(p[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            if t0 + 0.2 <= ts <= t1:
                mhz.append(float(p[1]))
                watts.append(float(p[2]))
        except (ValueError, IndexError):
            continue
    if not mhz:
        return {}
    return {"sm_mhz": statistics.median(mhz), "power_w": statistics.median(watts),
            "samples": len(mhz)}


@torch.inference_mode()
def _warm(forms: list[tuple[str, dict]]) -> str:
    """Compiles the kernels of `forms` (Triton's disk cache is shared) at a small routing."""
    dt = torch.bfloat16
    x = torch.randn(64, H, device="cuda", dtype=dt)
    tw, ids = moe_route_triton(torch.randn(64, E, device="cuda"), K_TOP, True)
    aligned = moe_align_triton(ids, E, 128)
    w13 = torch.zeros(E, 2 * I, H, device="cuda", dtype=dt)
    w2 = torch.zeros(E, H, I, device="cuda", dtype=dt)
    act = torch.zeros(64 * K_TOP, I, device="cuda", dtype=dt)
    y = torch.empty(64 * K_TOP, H, device="cuda", dtype=dt)
    try:
        for kind, cfg in forms:
            if kind == "up":
                _gate_up(x, w13, aligned, tw, K_TOP, cfg)
            else:
                _gemm(act, w2, y, aligned, tw, 1, False, True, cfg)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 (reported; main skips the form)
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""


def warm(workers: int) -> None:
    """Compiles every form in `workers` spawned processes; prints those that fail."""
    import multiprocessing
    forms = [("up", c) for c in UP_FORMS.values()] + [("down", c) for c in DOWN_FORMS.values()]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for (kind, cfg), err in zip(forms, pool.map(_warm, [[f] for f in forms])):
            if err:
                print(f"{kind} {cfg}: {err}")


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--warm", type=int, default=0, metavar="N",
                    help="compile the forms in N processes first")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "a GPU benchmark"
    if args.warm:
        t0 = time.time()
        warm(args.warm)
        print(f"compiled the forms in {time.time() - t0:.0f} s")
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    w13 = (torch.randn(E, 2 * I, H, device=dev, generator=gen) * 0.02).to(dt)
    w2 = (torch.randn(E, H, I, device=dev, generator=gen) * 0.02).to(dt)
    csv = tempfile.mktemp(suffix=".csv")
    windows: dict[str, tuple[float, float]] = {}  # read in `finally`, even after a failure
    sampler = subprocess.Popen(sampler_command(csv, 100), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    report = {"bench": "moe-tails", "date": str(date.today()),
              "device": torch.cuda.get_device_name(), "commit": tree_commit(),
              "up_forms": UP_FORMS, "down_forms": DOWN_FORMS, "cases": {}}
    try:
        a = torch.randn(8192, 8192, device=dev, dtype=dt)
        b = torch.randn(8192, 8192, device=dev, dtype=dt)
        mm_ms = float(triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200,
                                              return_mode="median"))
        report["matmul_tflops"] = 2 * 8192**3 / mm_ms / 1e9
        windows["matmul"] = sustained(lambda: a @ b)  # clocks read once nvidia-smi ends
        del a, b
        print(f"matmul {report['matmul_tflops']:.0f} TFLOP/s")
        for kind in ("random", "balanced", "tails"):
            tw, ids = routing(kind, gen)
            T = ids.shape[0]
            x = torch.randn(T, H, device=dev, dtype=dt, generator=gen) * 0.5
            aligned = moe_align_triton(ids, E, 128)
            padded = int(aligned.num_padded[0])
            act = torch.randn(T * K_TOP, I, device=dev, dtype=dt, generator=gen)
            y = torch.empty(T * K_TOP, H, device=dev, dtype=dt)
            ref_up = _gate_up(x, w13, aligned, tw, K_TOP, UP)
            _gemm(act, w2, y, aligned, tw, 1, False, True, DOWN)
            ref_down = y.clone()
            graphs, diffs, errors = {}, {}, {}

            def offer(name, run, ref):
                """Runs a form once (its difference from ref), then captures its graph."""
                try:
                    out = run()
                    diffs[name] = (out.float() - ref.float()).abs().max().item()
                    graphs[name] = graph_of(run)
                except Exception as exc:  # noqa: BLE001 (a form that cannot run here)
                    errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    print(f"  {name}: {errors[name]}")
                    torch.cuda.synchronize()

            for name, cfg in UP_FORMS.items():
                offer(f"up-{name}", lambda c=cfg: _gate_up(x, w13, aligned, tw, K_TOP, c), ref_up)
            for name, cfg in DOWN_FORMS.items():
                y.zero_()
                offer(f"down-{name}",
                      lambda c=cfg: _gemm(act, w2, y, aligned, tw, 1, False, True, c) or y,
                      ref_down)
            base_out = _grouped(x, w13, w2, tw, ids, 0, (UP, DOWN))
            for name, (u, d) in LAYERS.items():
                offer(f"layer-{name}", lambda c=(UP_FORMS[u], DOWN_FORMS[d]):
                      _grouped(x, w13, w2, tw, ids, 0, c), base_out)
            if kind == "balanced":  # cuBLAS, no gather and no padding: rows already by expert
                xs = torch.randn(E, 256, H, device=dev, dtype=dt, generator=gen)
                hs = torch.empty(E, 256, 2 * I, device=dev, dtype=dt)
                acts = torch.randn(E, 256, I, device=dev, dtype=dt, generator=gen)
                ys = torch.empty(E, 256, H, device=dev, dtype=dt)
                graphs["cublas-bmm-up"] = graph_of(
                    lambda: torch.bmm(xs, w13.transpose(1, 2), out=hs))
                graphs["cublas-bmm-down"] = graph_of(
                    lambda: torch.bmm(acts, w2.transpose(1, 2), out=ys))
            times = {n: [] for n in graphs}
            for _ in range(args.rounds):
                for n, g in graphs.items():
                    times[n].append(replay_ms(g))
            flops_up = 2 * T * K_TOP * 2 * I * H
            flops_down = 2 * T * K_TOP * I * H
            case = {"tokens": T, "padded_rows": padded, "max_abs_diff": diffs, "errors": errors,
                    "median_ms": {n: statistics.median(v) for n, v in times.items()},
                    "rounds_ms": times}
            case["tflops_on_pairs"] = {
                n: (flops_up if n.startswith("up-") or n.endswith("-up") else
                    flops_down if n.startswith("down-") or n.endswith("-down") else
                    flops_up + flops_down) / ms / 1e9
                for n, ms in case["median_ms"].items()}
            roof = (flops_up + flops_down) / (report["matmul_tflops"] * 1e9)
            case["layer_compute_roofline_ms"] = roof
            for n in ("layer-tuned", "layer-merge both"):
                if n in graphs:
                    windows[f"{kind} {n}"] = sustained(graphs[n].replay)
            report["cases"][kind] = case
            print(f"== {kind}: {T} tokens, {padded} padded rows, compute roofline "
                  f"{roof:.4f} ms (experts' GEMMs only)")
            for n, ms in case["median_ms"].items():
                print(f"  {n:28s} {ms:8.4f} ms  {case['tflops_on_pairs'][n]:6.0f} TFLOP/s "
                      f"on pairs  diff {diffs.get(n, 0):.4g}")
            del graphs
            torch.cuda.empty_cache()
    finally:
        sampler.terminate()
        sampler.wait()
        report["clocks"] = {n: clocks_between(csv, *w) for n, w in windows.items()}
        print(f"SM clocks and power (median of nvidia-smi samples): {report['clocks']}")
        os.unlink(csv) if os.path.exists(csv) else None
    out = result_path("moe-tails", device=report["device"], commit=report["commit"],
                      out_dir=args.out_dir)
    write_report(out, report, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
