"""Where a fused MoE layer's time goes when it runs from a CUDA graph (GPU).

bench/moe.py's breakdown times each stage alone and eagerly, which adds each launch's host
time and leaves the stages' sum above the graph's replay. This captures the layer
(bench/moe.py's make_layer: random bf16 weights, random routing) at each token count in one
CUDA graph, replays it under torch.profiler (CUPTI records the graph's kernel nodes) and
reports each kernel's device time per replay, in microseconds, beside the replay's median
wall time (triton's do_bench). The configs are the committed ones (no tuning). --paths also times, from graphs in the same
process, each forward fused_moe.moe_path offers from TORCH_MM_MIN_TOKENS on (the Triton GEMMs,
torch._grouped_mm for down, for both, for gate/up), routing done, with the class's GEMM configs.

    python bench/moe_profile.py [bench/configs/qwen3-30b-a3b] [--tokens 4096 2048] [--paths]
        [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402
from moe import DEV, DT, GPU, ceilings, graph_ms, make_layer, median_ms  # noqa: E402

from aiollm.kernels.fused_moe import fused_moe_triton  # noqa: E402
from aiollm.kernels.fused_moe_gemm_configs import moe_configs  # noqa: E402
from aiollm.kernels.moe_align import moe_route_triton  # noqa: E402

PATHS = {"triton": 0, "grouped_mm down": 1, "grouped_mm both": 2, "grouped_mm gate/up": 3}

REPLAYS = 20


def kernel_times(graph: torch.cuda.CUDAGraph) -> list[tuple[str, float, int]]:
    """(kernel name, µs per replay, launches per replay), longest first."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
    rows = [(e.key, e.self_device_time_total / REPLAYS, e.count // REPLAYS)
            for e in prof.key_averages() if e.self_device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])


def path_times(layer, config, t: int) -> dict[str, float | None]:
    """{forward: ms replayed from a CUDA graph (None: the capture failed)} of the experts part
    at t tokens by each forward in PATHS, with the class's committed GEMM configs."""
    m, H = config.moe, config.hidden_size
    x = torch.randn(t, H, dtype=DT, device=DEV)
    tw, ids = moe_route_triton(layer.gate(x), m.top_k, m.norm_topk_prob)
    w13, w2 = layer.experts.gate_up_proj, layer.experts.down_proj
    cfgs = moe_configs(t, m.num_experts, H, m.intermediate_size, m.top_k, x.device,
                       (x, w13, w2, tw, ids, 0))
    return {name: graph_ms(lambda mm=mm: fused_moe_triton(x, w13, w2, tw, ids, configs=cfgs,
                                                          torch_mm=mm))
            for name, mm in PATHS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="bench/configs/qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 2048])
    ap.add_argument("--paths", action="store_true")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()
    if not GPU:
        sys.exit("moe_profile.py needs a GPU (CUDA graphs and CUPTI)")
    layer, config = make_layer(args.model)
    ceil = ceilings()
    moe = config.moe
    out = {"bench": "moe_profile", "date": date.today().isoformat(),
           "device": torch.cuda.get_device_name(), "commit": tree_commit(),
           "ceilings": ceil, "rows": []}
    for t in args.tokens:
        x = torch.randn(t, config.hidden_size, dtype=DT, device=DEV)
        layer(x)  # compiles (configs committed: no tuning at these classes)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            layer(x)
        replay_ms = median_ms(graph.replay)
        kernels = kernel_times(graph)
        flops = 2 * t * moe.top_k * 3 * config.hidden_size * moe.intermediate_size
        roof_ms = 1e3 * flops / ceil["matmul_flops_per_s"]
        print(f"\n{t} tokens: replay {replay_ms * 1e3:.1f} us, compute roofline "
              f"{roof_ms * 1e3:.1f} us ({roof_ms / replay_ms:.1%}); kernels per replay:")
        for name, us, n in kernels:
            print(f"  {us:8.1f} us  x{n}  {name[:100]}")
        print(f"  {sum(us for _, us, _ in kernels):8.1f} us  sum of kernels")
        out["rows"].append({"tokens": t, "replay_ms": replay_ms, "roofline_ms": roof_ms,
                            "kernels": [{"name": n, "us": us, "launches": c}
                                        for n, us, c in kernels]})
        if args.paths:
            paths = path_times(layer, config, t)
            print("  forwards from graphs (routing done): " + ", ".join(
                f"{name} {ms * 1e3:.1f} us" if ms else f"{name} failed" for name, ms in paths.items()))
            out["rows"][-1]["paths_ms"] = paths
    path = result_path("moe-profile", device=out["device"], commit=out["commit"],
                       day=out["date"], out_dir=args.out_dir)
    write_report(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
