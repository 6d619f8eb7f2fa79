"""Fused MoE layer benchmark (GPU): against a per-expert PyTorch loop and against its roofline.

One sparse layer of a model shape (default: Qwen3-30B-A3B: hidden 2048, 128 experts, top-8,
expert intermediate 768; random bf16 weights, random routing), at each token count:

- fused: aiollm's SparseMoe forward (router, routing, alignment, two grouped GEMMs, top-k sum),
  timed replayed from a CUDA graph as decode steps run it, and eagerly;
- loop: the same layer as a loop over the experts that got tokens (kernels' PyTorch reference,
  as transformers computes it), eager;
- roofline: max(bytes / copy bandwidth, FLOPs / matmul rate), with bytes = the experts actually
  touched by this routing (+ router, activations) and FLOPs = 2 x T x top_k x 3 x H x I; both
  ceilings measured in the same run;
- cuBLAS at the layer's shapes (from t x top_k >= experts): torch.mm on the pairs as one dense
  [T*k, H] x [H, 2I] and [T*k, I] x [I, H] product, and torch.bmm on the same work split evenly
  over the experts (no padding, no imbalance); the roofline again with the dense rate in place
  of the 8192^3 one ("at shapes"), beside, not instead of, the roofline above.

Before timing, every token-count class of the autotuner is tuned for this shape (AIOLLM_AUTOTUNE
applies, 1 unless set: 1 tunes missing keys, 2 retunes all), so aiollm/kernels/configs/<gpu>.json covers
serving too; --configs-out copies that file out. --precompile N first compiles every tuning
candidate in N worker processes (Triton's disk cache is shared), so that tuning, which runs
one candidate at a time, finds them compiled. --breakdown T... times each stage of the layer
alone (eager) at those token counts. Prints tables, writes
bench/results/moe-DATE-DEVICE-COMMIT.json (COMMIT: bench/commit.py).

    python bench/moe.py [bench/configs/qwen3-30b-a3b] [--tokens 1 8 64 256 4096]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import torch
import triton.testing

from aiollm.kernels import fused_moe_gemv
from aiollm.kernels.activation import silu_and_mul_triton
from aiollm.kernels.autotune import CONFIG_DIR, gpu_slug
from aiollm.kernels.fused_moe import GEMV_MAX_TOKENS, _forward, fused_moe_ref, moe_path
from aiollm.kernels.fused_moe_gemm import _gate_up, _gemm
from aiollm.kernels.fused_moe_gemm_configs import (
    TOKEN_CLASSES,
    _block_ms,
    _candidates,
    moe_configs,
)
from aiollm.kernels.fused_moe_grouped_mm import grouped_mm, usable_for
from aiollm.kernels.moe_align import moe_align_triton, moe_route_ref, moe_route_triton
from aiollm.kernels.moe_combine import moe_combine_triton
from aiollm.model.hf_config import load_hf_config
from aiollm.model.moe import SparseMoe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

# Without a GPU the script runs end to end on the CPU (fp32, the reference path, wall-clock
# timing, tiny sizes): a dry run that checks the script, not a measurement.
GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
DT = torch.bfloat16 if GPU else torch.float32


def median_ms(fn, rep: int = 100) -> float:
    if GPU:
        return float(triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[1]


def ceilings() -> dict[str, float]:
    n, mm_n = (1 << 29, 8192) if GPU else (1 << 20, 256)  # 1 GiB of bf16 on the GPU
    x = torch.randn(n, dtype=DT, device=DEV)
    y = torch.empty_like(x)
    copy_bw = 2 * x.numel() * x.element_size() / (median_ms(lambda: y.copy_(x)) * 1e-3)
    del x, y
    a = torch.randn(mm_n, mm_n, dtype=DT, device=DEV)
    b = torch.randn(mm_n, mm_n, dtype=DT, device=DEV)
    mm = 2 * mm_n**3 / (median_ms(lambda: a @ b) * 1e-3)
    del a, b
    if GPU:
        torch.cuda.empty_cache()
    return {"copy_bw_bytes_per_s": copy_bw, "matmul_flops_per_s": mm}


def cublas_at_shapes(t: int, H: int, I: int, E: int, k: int) -> dict:
    """cuBLAS (torch.mm / torch.bmm, bf16) on this layer's own GEMM shapes at t tokens:
    "dense": one [t*k, H] x [H, 2I] and one [t*k, I] x [I, H] product (the pairs as if one
    expert took them all: the matmul rate at the layer's prefill sizes); "balanced": the same
    as batched products over E experts of t*k/E rows each (the layer's work with no padding
    and no imbalance). Times in ms (median), rates in FLOP/s; no SiLU, gather or top-k sum."""
    pairs, rows = t * k, t * k // E
    flops = 2 * pairs * 3 * H * I
    x = torch.randn(pairs, H, dtype=DT, device=DEV)
    h = torch.randn(pairs, I, dtype=DT, device=DEV)
    w13 = torch.randn(H, 2 * I, dtype=DT, device=DEV)
    w2 = torch.randn(I, H, dtype=DT, device=DEV)
    dense = median_ms(lambda: x @ w13) + median_ms(lambda: h @ w2)
    bx, bh = x[: E * rows].view(E, rows, H), h[: E * rows].view(E, rows, I)
    bw13 = torch.randn(E, H, 2 * I, dtype=DT, device=DEV)
    bw2 = torch.randn(E, I, H, dtype=DT, device=DEV)
    balanced = median_ms(lambda: torch.bmm(bx, bw13)) + median_ms(lambda: torch.bmm(bh, bw2))
    del x, h, w13, w2, bx, bh, bw13, bw2
    if GPU:
        torch.cuda.empty_cache()
    return {"dense_ms": dense, "dense_flops_per_s": flops / (dense * 1e-3),
            "balanced_bmm_ms": balanced,
            "balanced_bmm_flops_per_s": 2 * E * rows * 3 * H * I / (balanced * 1e-3)}


def make_layer(model_dir: str) -> tuple[SparseMoe, object]:
    config = load_hf_config(model_dir)
    with torch.device(DEV):
        layer = SparseMoe(config).to(DT)
    gen = torch.Generator(device=DEV).manual_seed(0)
    for p in layer.parameters():
        p.data.normal_(0.0, 0.02, generator=gen)
    return layer.eval().requires_grad_(False), config


def graph_ms(fn) -> float | None:
    """Median time of fn replayed from a CUDA graph (captured after one eager run); None
    (and the error printed) when the capture fails."""
    fn()
    if not GPU:
        return median_ms(fn)
    try:
        return _graph_ms(fn)
    except RuntimeError as exc:
        print(f"CUDA graph capture failed: {exc}")
        torch.cuda.synchronize()
        return None


def capture(fn) -> torch.cuda.CUDAGraph:
    """fn captured into a CUDA graph, after one run on a side stream (its warm-up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _graph_ms(fn) -> float:
    return median_ms(capture(fn).replay)


def _compile_tasks(config, classes: list[int]) -> list[tuple[int, str, dict]]:
    """(tokens, kernel, config) for every tuning candidate, one per distinct compile."""
    m, H = config.moe, config.hidden_size
    seen, tasks = set(), []

    def add(t, kind, cfg):
        key = (kind, tuple(sorted(cfg.items())))
        if key not in seen:
            seen.add(key)
            tasks.append((t, kind, cfg))

    for t in classes:
        bms = _block_ms(t, m.top_k, m.num_experts)
        for cfg in _candidates(bms, True):
            add(t, "up", cfg)
        for bm in bms:
            for cfg in _candidates([bm], False):
                add(t, "down", {"BLOCK_M": bm, **cfg})
        if t <= GEMV_MAX_TOKENS:
            for c in fused_moe_gemv.UP_CANDIDATES:
                add(t, "gemv_up", fused_moe_gemv._as_config(c))
            for c in fused_moe_gemv.DOWN_CANDIDATES:
                add(t, "gemv_down", fused_moe_gemv._as_config(c))
    return tasks


@torch.inference_mode()
def _compile_worker(args) -> int:
    """Launch each task once (results unused): compiles land in Triton's disk cache."""
    model_dir, tasks = args
    layer, config = make_layer(model_dir)
    w13, w2 = layer.experts.gate_up_proj, layer.experts.down_proj
    m, H, inter = config.moe, config.hidden_size, config.moe.intermediate_size
    done = 0
    for t, kind, cfg in tasks:
        x = torch.randn(t, H, dtype=DT, device=DEV)
        tw, ids = moe_route_triton(layer.gate(x), m.top_k, m.norm_topk_prob)
        act = torch.randn((t * m.top_k, inter), dtype=DT, device=DEV)
        try:
            if kind in ("up", "down"):
                aligned = moe_align_triton(ids, m.num_experts, cfg["BLOCK_M"])
                if kind == "up":
                    _gate_up(x, w13, aligned, tw, m.top_k, cfg)
                else:
                    y = torch.empty((t * m.top_k, H), dtype=DT, device=DEV)
                    _gemm(act, w2, y, aligned, tw, 1, False, True, cfg)
            elif kind == "gemv_up":
                fused_moe_gemv._gate_up(x, w13, act, ids, 0, cfg)
            else:
                fused_moe_gemv._down(act, w2, torch.empty_like(x), ids, tw, 0, cfg)
            done += 1
        except Exception:  # noqa: BLE001 - one may not fit (shared memory); tuning skips it too
            pass
    if GPU:
        torch.cuda.synchronize()
    return done


def precompile(model_dir: str, config, classes: list[int], workers: int) -> tuple[int, int]:
    tasks = _compile_tasks(config, classes)
    shards = [(model_dir, tasks[i::workers]) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        done = sum(pool.map(_compile_worker, shards))
    return done, len(tasks)


def breakdown(layer, config, t: int) -> dict:
    """Each stage of the layer alone (eager, median ms) at t tokens, with the tuned configs."""
    m, H = config.moe, config.hidden_size
    E, k, inter = m.num_experts, m.top_k, m.intermediate_size
    w13, w2 = layer.experts.gate_up_proj, layer.experts.down_proj
    x = torch.randn(t, H, dtype=DT, device=DEV)
    logits = layer.gate(x)
    tw, ids = moe_route_triton(logits, k, m.norm_topk_prob)
    inputs = (x, w13, w2, tw, ids, 0)
    out = {"tokens": t, "router_ms": median_ms(lambda: layer.gate(x)),
           "route_ms": median_ms(lambda: moe_route_triton(logits, k, m.norm_topk_prob))}
    act = torch.randn((t * k, inter), dtype=DT, device=DEV)
    path = moe_path(t, E, H, inter, k, x.device, inputs)
    out["path_config"] = path
    if path.get("GEMV", 0):
        up, down = fused_moe_gemv.gemv_configs(t, TOKEN_CLASSES, E, H, inter, k, x.device, inputs)
        y = torch.empty_like(x)
        out.update(path="gemv", configs=[up, down],
                   gate_up_ms=median_ms(lambda: fused_moe_gemv._gate_up(x, w13, act, ids, 0, up)),
                   down_and_sum_ms=median_ms(lambda: fused_moe_gemv._down(act, w2, y, ids, tw, 0,
                                                                          down)))
        return out
    up, down = moe_configs(t, E, H, inter, k, x.device, inputs)
    aligned = moe_align_triton(ids, E, up["BLOCK_M"])
    y = torch.empty((t * k, H), dtype=DT, device=DEV)
    padded = int(aligned.num_padded[0])
    out.update(path="grouped", configs=[up, down], padded_pairs=padded,
               align_ms=median_ms(lambda: moe_align_triton(ids, E, up["BLOCK_M"])),
               gate_up_ms=median_ms(lambda: _gate_up(x, w13, aligned, tw, k, up)),
               down_ms=median_ms(lambda: _gemm(act, w2, y, aligned, tw, 1, False, True, down)),
               combine_ms=median_ms(lambda: moe_combine_triton(y, ids, 0, E)),
               torch_sum_ms=median_ms(lambda: y.view(t, k, H).sum(dim=1)))
    # rate on the padded rows, which the MMAs compute, and on the pairs alone
    for name, flops in (("gate_up", 2 * 2 * inter * H), ("down", 2 * inter * H)):
        out[f"{name}_tflops_padded"] = flops * padded / (out[f"{name}_ms"] * 1e9)
        out[f"{name}_tflops_pairs"] = flops * t * k / (out[f"{name}_ms"] * 1e9)
    if usable_for(x):  # the stages of the torch._grouped_mm forms, on the compact layout
        al = moe_align_triton(ids, E, 0, tokens=True)
        rows = x.index_select(0, al.tokens)
        h = grouped_mm(rows, w13, al.ends)
        out.update(
            compact_align_ms=median_ms(lambda: moe_align_triton(ids, E, 0, tokens=True)),
            gather_ms=median_ms(lambda: x.index_select(0, al.tokens)),
            mm_gate_up_ms=median_ms(lambda: grouped_mm(rows, w13, al.ends)),
            silu_ms=median_ms(lambda: silu_and_mul_triton(h)),
            mm_down_ms=median_ms(lambda: grouped_mm(act, w2, al.ends)),
            gate_up_compact_ms=median_ms(lambda: _gate_up(x, w13, aligned, tw, k, up, True)),
            combine_weighted_ms=median_ms(
                lambda: moe_combine_triton(y, ids, 0, E, tw, al.positions)))
        for name, flops in (("mm_gate_up", 2 * 2 * inter * H), ("mm_down", 2 * inter * H)):
            out[f"{name}_tflops"] = flops * t * k / (out[f"{name}_ms"] * 1e9)
        # the whole experts part by each form (eager), whichever the tuner chose
        for name, tm in (("triton", 0), ("torch_mm_down", 1), ("torch_mm_both", 2),
                         ("torch_mm_gate_up", 3)):
            out[f"form_{name}_ms"] = median_ms(lambda: _forward({"GEMV": 0, "TORCH_MM": tm},
                                                                *inputs))
    return out


def probe_grouped_mm() -> dict:
    """Whether torch._grouped_mm exists, equals a loop, and captures in a CUDA graph here."""
    info = {"torch": torch.__version__, "exists": hasattr(torch, "_grouped_mm")}
    x = torch.randn(64, 256, dtype=DT, device=DEV)
    info["usable"] = usable_for(x)
    if info["usable"] and GPU:
        w = torch.randn(4, 128, 256, dtype=DT, device=DEV)
        ends = torch.tensor([10, 10, 40, 64], dtype=torch.int32, device=DEV)
        info["graph_ms"] = graph_ms(lambda: grouped_mm(x, w, ends))
        info["captures"] = info["graph_ms"] is not None
    return info


def drop_configs(first_class: int) -> None:
    """Remove the fused-MoE keys of token classes >= first_class from this GPU's config file."""
    if not GPU:
        print("no GPU: no config file to drop keys from")
        return
    path = CONFIG_DIR / f"{gpu_slug(torch.cuda.current_device())}.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    dropped = 0
    for kernel, keys in table.items():
        if kernel.startswith("fused_moe"):
            for key in [k for k in keys if int(re.search(r"-t(\d+)", k)[1]) >= first_class]:
                del keys[key]
                dropped += 1
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"dropped {dropped} cached fused-MoE configs of classes >= {first_class} "
          f"from {path.name}")


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="bench/configs/qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 256, 4096])
    ap.add_argument("--tune-classes", type=int, nargs="*", default=list(TOKEN_CLASSES[:14]),
                    help="token counts to tune before timing (default: every class to 8192)")
    ap.add_argument("--configs-out", default=None, help="copy the tuned config file here")
    ap.add_argument("--precompile", type=int, default=0, metavar="N",
                    help="compile every tuning candidate in N processes first (GPU)")
    ap.add_argument("--breakdown", type=int, nargs="*", default=[],
                    help="token counts at which to time each stage alone")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--drop-configs-from", type=int, default=None, metavar="T",
                    help="only drop this GPU's cached fused-MoE configs of the token classes "
                         "from T on (so that AIOLLM_AUTOTUNE=1 retunes those), then exit")
    args = ap.parse_args()
    os.environ.setdefault("AIOLLM_AUTOTUNE", "1")  # tune the missing classes, not borrow
    if args.drop_configs_from is not None:
        drop_configs(args.drop_configs_from)
        return

    device = torch.cuda.get_device_name() if GPU else "cpu-dry-run"
    ceil = ceilings()
    print(f"{device}: copy {ceil['copy_bw_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {ceil['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    grouped_mm_probe = probe_grouped_mm()
    print(f"torch._grouped_mm: {grouped_mm_probe}")
    layer, config = make_layer(args.model)
    m, H = config.moe, config.hidden_size
    E, k, I = m.num_experts, m.top_k, m.intermediate_size
    expert_bytes = 3 * H * I * 2

    t0 = time.perf_counter()
    if args.precompile and GPU:
        done, total = precompile(args.model, config, args.tune_classes, args.precompile)
        print(f"precompiled {done}/{total} candidates in {time.perf_counter() - t0:.1f} s "
              f"({args.precompile} processes)")
    for t in args.tune_classes:
        layer(torch.randn(t, H, dtype=DT, device=DEV))  # tunes the class if it is missing
    if GPU:
        torch.cuda.synchronize()
    tune_s = time.perf_counter() - t0
    print(f"tuned/loaded {len(args.tune_classes)} token classes in {tune_s:.1f} s")

    rows = []
    for t in args.tokens:
        x = torch.randn(t, H, dtype=DT, device=DEV)
        _, ids = moe_route_ref(layer.gate(x), k, m.norm_topk_prob)
        touched = int(torch.unique(ids).numel())
        nbytes = touched * expert_bytes + E * H * 2 + 2 * t * H * 2 + t * k * (2 * I + H) * 2
        flops = 2 * t * k * 3 * H * I + 2 * t * E * H
        roof_ms = 1e3 * max(nbytes / ceil["copy_bw_bytes_per_s"],
                            flops / ceil["matmul_flops_per_s"])
        fused_graph = graph_ms(lambda: layer(x))
        fused_eager = median_ms(lambda: layer(x))

        def loop():
            w, i = moe_route_ref(layer.gate(x), k, m.norm_topk_prob)
            return fused_moe_ref(x, layer.experts.gate_up_proj, layer.experts.down_proj, w, i)

        err = (layer(x).float() - loop().float()).abs().max().item()
        loop_ms = median_ms(loop, rep=50)
        rows.append({"tokens": t, "experts_touched": touched, "bytes": nbytes, "flops": flops,
                     "roofline_ms": roof_ms, "fused_graph_ms": fused_graph,
                     "fused_eager_ms": fused_eager, "loop_ms": loop_ms,
                     "fraction_of_roofline": roof_ms / (fused_graph or fused_eager),
                     "speedup_vs_loop": loop_ms / (fused_graph or fused_eager),
                     "max_abs_diff_vs_loop": err,
                     "bound": "memory" if nbytes / ceil["copy_bw_bytes_per_s"]
                     >= flops / ceil["matmul_flops_per_s"] else "compute"})
        if t * k >= E:
            shapes = cublas_at_shapes(t, H, I, E, k)
            roof_shapes = 1e3 * max(nbytes / ceil["copy_bw_bytes_per_s"],
                                    flops / shapes["dense_flops_per_s"])
            rows[-1]["cublas_at_shapes"] = shapes
            rows[-1]["roofline_at_shapes_ms"] = roof_shapes
            rows[-1]["fraction_of_roofline_at_shapes"] = roof_shapes / (fused_graph or fused_eager)

    print(f"{'tokens':>6} {'experts':>7} {'roof ms':>8} {'fused ms':>9} {'eager ms':>9} "
          f"{'loop ms':>8} {'of roof':>8} {'vs loop':>8} {'bound':>8}")
    for r in rows:
        print(f"{r['tokens']:6d} {r['experts_touched']:7d} {r['roofline_ms']:8.4f} "
              f"{r['fused_graph_ms'] or float('nan'):9.4f} {r['fused_eager_ms']:9.4f} "
              f"{r['loop_ms']:8.3f} "
              f"{r['fraction_of_roofline']:8.1%} {r['speedup_vs_loop']:7.1f}x {r['bound']:>8}")
    for r in rows:
        if "cublas_at_shapes" in r:
            c = r["cublas_at_shapes"]
            print(f"{r['tokens']:6d} tokens, cuBLAS on the layer's shapes: dense "
                  f"{c['dense_ms']:.4f} ms ({c['dense_flops_per_s'] / 1e12:.0f} TFLOP/s), balanced bmm "
                  f"{c['balanced_bmm_ms']:.4f} ms ({c['balanced_bmm_flops_per_s'] / 1e12:.0f} "
                  f"TFLOP/s); fused {r['fraction_of_roofline_at_shapes']:.1%} of the roofline "
                  f"at the dense rate")
    commit = tree_commit()
    report = {"bench": "moe", "date": str(date.today()), "device": device, "commit": commit,
              "model": Path(args.model).name, "hidden": H, "experts": E, "top_k": k,
              "expert_intermediate": I, "dtype": str(DT).removeprefix("torch."), "ceilings": ceil,
              "tune_seconds": tune_s, "grouped_mm_probe": grouped_mm_probe, "rows": rows,
              "paths": {t: moe_path(t, E, H, I, k, torch.device(DEV)) for t in args.tokens},
              "breakdown": []}
    out = result_path("moe", device=device, commit=commit, out_dir=args.out_dir)
    write_report(out, report, indent=2)  # again below, with the breakdown
    # on the CPU only under TRITON_INTERPRET=1 (a check of this script, not a measurement)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    for t in args.breakdown if GPU or interp else []:
        b = breakdown(layer, config, t)
        report["breakdown"].append(b)
        write_report(out, report, indent=2)
        print(f"stages at {b['tokens']} tokens ({b['path']}): " + ", ".join(
            f"{n} {v:.4f}" for n, v in b.items() if n.endswith("_ms")) + " ms; " + ", ".join(
            f"{n} {v:.0f}" for n, v in b.items() if "tflops" in n))
    print(f"wrote {out}")
    if args.configs_out and GPU:
        src = CONFIG_DIR / f"{gpu_slug(torch.cuda.current_device())}.json"
        shutil.copy(src, args.configs_out)


if __name__ == "__main__":
    main()
