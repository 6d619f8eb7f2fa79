"""Attention launch configs at the shapes of LightLLM's serving workload, every candidate timed.

    python bench/attn_serving.py [--heads 32 8] [--out PATH]

The tuner's classes key decode attention by (batch, longest context) bucket and extend
attention by the longest new-token run, and `bench/attention.py --tune-serving-shapes` tunes
them at class-edge shapes (batch 256 at 2,048 tokens, 4 prompts of 1,024). A mixed step of the
serving workload (8B heads, 32 query / 8 KV of 128, bf16) is instead ~96 decodes at ~1,100
tokens of context and one 1,024-token prompt with no prefix; a prefill burst is two such
prompts. This times each candidate config (and forced split counts for decode) at those
shapes, with the table's choice (config=None, AIOLLM_AUTOTUNE as set) beside them, so a
class's config can be judged where it is used. `--heads HQ HKV` sets the head counts (32 8
for the 8B shape; 32 4 for Qwen3-30B-A3B's). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402
from results_file import write_report  # noqa: E402
from attention import HQ, HKV, D, decode_inputs, extend_inputs, make_pool, median_ms  # noqa: E402

# the modules, not the functions aiollm.kernels re-exports under the same names
da = importlib.import_module("aiollm.kernels.decode_attention_configs")
ea = importlib.import_module("aiollm.kernels.extend_attention")


def decode_cases(k_cache, v_cache, B: int, lo: int, hi: int, hq: int, hkv: int) -> list[dict]:
    run, nbytes = decode_inputs(k_cache, v_cache, B, hi, "scattered", hq, hkv, min_ctx=lo)
    out = []
    for cfg, splits in [(None, None)] + [(c, s) for c in da.CANDIDATES for s in (None, 1, 2, 4)
                                         if s is None or s <= hi // c["BLOCK_N"]]:
        run(cfg, splits)
        ms = median_ms(lambda: run(cfg, splits))
        out.append({"kernel": "decode", "batch": B, "context": [lo, hi], "config": cfg,
                    "num_splits": splits, "ms": ms, "tb_per_s": nbytes / ms / 1e9})
    return out


def extend_cases(k_cache, v_cache, B: int, prefix: int, ext: int, hq: int, hkv: int
                 ) -> list[dict]:
    run, flops = extend_inputs(k_cache, v_cache, B, prefix, ext, hq, hkv)
    out = []
    for cfg in [None] + ea.CANDIDATES:
        run(cfg)
        ms = median_ms(lambda: run(cfg))
        out.append({"kernel": "extend", "batch": B, "prefix": prefix, "extend": ext,
                    "config": cfg, "ms": ms, "tflops": flops / ms / 1e9})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs=2, default=[HQ, HKV], metavar=("HQ", "HKV"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/attn_serving.py needs a CUDA GPU"
    hq, hkv = args.heads
    k_cache, v_cache = make_pool(256 * 4096, hkv, D)
    rows = []
    for B, prefix, ext in ((1, 0, 1024), (2, 0, 1024), (1, 1024, 1024)):
        rows += extend_cases(k_cache, v_cache, B, prefix, ext, hq, hkv)
    for B, lo, hi in ((96, 1024, 1200), (64, 1024, 1200), (32, 1024, 1200)):
        rows += decode_cases(k_cache, v_cache, B, lo, hi, hq, hkv)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        shape = (f"extend {r['batch']}x{r['extend']} prefix {r['prefix']}" if r["kernel"] == "extend"
                 else f"decode b{r['batch']} ctx {r['context'][0]}-{r['context'][1]}")
        groups.setdefault(shape, []).append(r)
    for shape, rs in groups.items():
        table = rs[0]
        best = sorted(rs[1:], key=lambda r: r["ms"])[:5]
        rate = "tflops" if table["kernel"] == "extend" else "tb_per_s"
        print(f"{shape}: table {table['ms']:.4f} ms ({table[rate]:.1f}); best:")
        for r in best:
            print(f"   {r['ms']:.4f} ms ({r[rate]:.1f})  {r['config']} splits {r.get('num_splits')}")
    if args.out:
        write_report(args.out, {
            "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
            "git_commit": tree_commit(), "heads": [hq, hkv], "rows": rows})


if __name__ == "__main__":
    main()
