"""Fused MoE layer benchmark (GPU): against a per-expert PyTorch loop and against its roofline.

One sparse layer of a model shape (default: Qwen3-30B-A3B: hidden 2048, 128 experts, top-8,
expert intermediate 768; random bf16 weights, random routing), at each token count:

- fused: aiollm's SparseMoe forward (router, routing, alignment, two grouped GEMMs, top-k sum),
  timed replayed from a CUDA graph as decode steps run it, and eagerly;
- loop: the same layer as a loop over the experts that got tokens (kernels' PyTorch reference,
  as transformers computes it), eager;
- roofline: max(bytes / copy bandwidth, FLOPs / matmul rate), with bytes = the experts actually
  touched by this routing (+ router, activations) and FLOPs = 2 x T x top_k x 3 x H x I; both
  ceilings measured in the same run.

Before timing, every token-count class of the autotuner is tuned for this shape (AIOLLM_AUTOTUNE
applies: 1 tunes missing keys), so aiollm/kernels/configs/<gpu>.json covers serving too;
--configs-out copies that file out. Prints a table, writes bench/results/moe-DATE-DEVICE.json.

    python bench/moe.py [bench/configs/qwen3-30b-a3b] [--tokens 1 8 64 256 4096]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path

import torch
import triton.testing

from aiollm.kernels.autotune import CONFIG_DIR, gpu_slug
from aiollm.kernels.fused_moe import TOKEN_CLASSES, fused_moe_ref
from aiollm.kernels.moe_align import moe_route_ref
from aiollm.model.config import load_hf_config
from aiollm.model.moe import SparseMoe

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


def make_layer(model_dir: str) -> tuple[SparseMoe, object]:
    config = load_hf_config(model_dir)
    with torch.device(DEV):
        layer = SparseMoe(config).to(DT)
    gen = torch.Generator(device=DEV).manual_seed(0)
    for p in layer.parameters():
        p.data.normal_(0.0, 0.02, generator=gen)
    return layer.eval().requires_grad_(False), config


def graph_ms(fn) -> float:
    """Median time of fn replayed from a CUDA graph (captured after one eager run)."""
    fn()
    if not GPU:
        return median_ms(fn)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="bench/configs/qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 256, 4096])
    ap.add_argument("--tune-classes", type=int, nargs="*", default=list(TOKEN_CLASSES[:14]),
                    help="token counts to tune before timing (default: every class to 8192)")
    ap.add_argument("--configs-out", default=None, help="copy the tuned config file here")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()

    device = torch.cuda.get_device_name() if GPU else "cpu-dry-run"
    ceil = ceilings()
    print(f"{device}: copy {ceil['copy_bw_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {ceil['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    layer, config = make_layer(args.model)
    m, H = config.moe, config.hidden_size
    E, k, I = m.num_experts, m.top_k, m.intermediate_size
    expert_bytes = 3 * H * I * 2

    t0 = time.perf_counter()
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
                     "fraction_of_roofline": roof_ms / fused_graph,
                     "speedup_vs_loop": loop_ms / fused_graph, "max_abs_diff_vs_loop": err,
                     "bound": "memory" if nbytes / ceil["copy_bw_bytes_per_s"]
                     >= flops / ceil["matmul_flops_per_s"] else "compute"})

    print(f"{'tokens':>6} {'experts':>7} {'roof ms':>8} {'fused ms':>9} {'eager ms':>9} "
          f"{'loop ms':>8} {'of roof':>8} {'vs loop':>8} {'bound':>8}")
    for r in rows:
        print(f"{r['tokens']:6d} {r['experts_touched']:7d} {r['roofline_ms']:8.4f} "
              f"{r['fused_graph_ms']:9.4f} {r['fused_eager_ms']:9.4f} {r['loop_ms']:8.3f} "
              f"{r['fraction_of_roofline']:8.1%} {r['speedup_vs_loop']:7.1f}x {r['bound']:>8}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"bench": "moe", "date": str(date.today()), "device": device, "commit": commit,
              "model": Path(args.model).name, "hidden": H, "experts": E, "top_k": k,
              "expert_intermediate": I, "dtype": str(DT).removeprefix("torch."), "ceilings": ceil,
              "tune_seconds": tune_s, "rows": rows}
    out = Path(args.out_dir) / f"moe-{date.today()}-{device.replace(' ', '-')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if args.configs_out and GPU:
        src = CONFIG_DIR / f"{gpu_slug(torch.cuda.current_device())}.json"
        shutil.copy(src, args.configs_out)


if __name__ == "__main__":
    main()
