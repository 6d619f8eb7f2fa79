"""The fused MoE layer with and without programmatic dependent launch (GPU), in one process.

The layer of bench/moe.py (Qwen3-30B-A3B shape by default, random bf16 weights and routing,
the committed or tuned configs) is captured into two CUDA graphs per token count: one with
the MoE kernels launched with PDL (aiollm/kernels/pdl.py, as steps run them) and one with
plain launches (pdl.suspended()). Both must give the same output bit for bit; their replays
are then timed in alternating rounds, against bench/moe.py's roofline, its ceilings measured in
the same run. Prints a table, writes bench/results/moe-pdl-DATE-DEVICE-COMMIT.json.

    python bench/moe_pdl.py [bench/configs/qwen3-30b-a3b] [--tokens 256 2048 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from aiollm.kernels import pdl
from aiollm.kernels.moe_align import moe_route_ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402
from moe import DEV, DT, GPU, capture, ceilings, make_layer, median_ms  # noqa: E402


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="bench/configs/qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024, 2048, 4096])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()
    if not GPU:
        sys.exit("needs a CUDA GPU (PDL is a GPU launch attribute)")
    device = torch.cuda.get_device_name()
    ceil = ceilings()
    layer, config = make_layer(args.model)
    m, H = config.moe, config.hidden_size
    k, inter = m.top_k, m.intermediate_size
    rows = []
    for t in args.tokens:
        x = torch.randn(t, H, dtype=DT, device=DEV)
        out = {}

        def fwd(name):
            out[name] = layer(x)

        with pdl.suspended():
            layer(x)  # tunes the class if its configs are missing (tuning launches plainly)
        graphs = {"pdl": capture(lambda: fwd("pdl"))}
        with pdl.suspended():
            graphs["plain"] = capture(lambda: fwd("plain"))
        for g in graphs.values():
            g.replay()
        torch.cuda.synchronize()
        equal = torch.equal(out["pdl"], out["plain"])
        times = {"pdl": [], "plain": []}
        for _ in range(args.rounds):
            for name, g in graphs.items():
                times[name].append(median_ms(g.replay))
        # bench/moe.py's roofline: the experts this routing touches, or the FLOPs
        _, ids = moe_route_ref(layer.gate(x), k, m.norm_topk_prob)
        touched = int(torch.unique(ids).numel())
        E = m.num_experts
        nbytes = (touched * 3 * H * inter * 2 + E * H * 2 + 2 * t * H * 2
                  + t * k * (2 * inter + H) * 2)
        flops = 2 * t * k * 3 * H * inter + 2 * t * E * H
        roof_ms = 1e3 * max(nbytes / ceil["copy_bw_bytes_per_s"],
                            flops / ceil["matmul_flops_per_s"])
        row = {"tokens": t, "bit_equal": equal, "roofline_ms": roof_ms}
        for name, ts in times.items():
            row[f"{name}_ms"] = ts
            row[f"{name}_median_ms"] = statistics.median(ts)
            row[f"{name}_of_roofline"] = roof_ms / statistics.median(ts)
        rows.append(row)
        print(f"{t:6d} tokens: pdl {row['pdl_median_ms']:.4f} ms "
              f"({row['pdl_of_roofline']:.1%}), plain {row['plain_median_ms']:.4f} ms "
              f"({row['plain_of_roofline']:.1%}), bit-equal {equal}", flush=True)
        del graphs
    commit = tree_commit()
    report = {"bench": "moe_pdl", "date": str(date.today()), "device": device, "commit": commit,
              "model": Path(args.model).name, "ceilings": ceil, "rounds": args.rounds,
              "rows": rows}
    path = result_path("moe-pdl", device=device, commit=commit, out_dir=args.out_dir)
    write_report(path, report, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
