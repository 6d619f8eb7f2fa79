"""Decode attention: the split rule's count against one split, at serving batch sizes (GPU).

decode_splits.num_kv_splits cuts each context into more splits when batch x KV heads
gives fewer than about four programs a multiprocessor. At serving shapes of Qwen3-30B-A3B
(32 query / 4 KV heads) `bench/attn_serving.py --heads 32 4` read one split faster than the
rule's two at 96 requests of ~1,100 tokens (0.070 against 0.076-0.13 ms), but its single
timings moved by more than that between configs that launch the same variant. This times
the table's config (AIOLLM_AUTOTUNE as set) with the rule's split count and with 1, 2 and 4
splits, in ROUNDS interleaved rounds, and prints each variant's median of rounds.

    python bench/decode_splits.py [--heads 32 4] [--batch 32 48 64 96 128]
        [--contexts 1024 1200 1800 2048] [--long 32768] [--bound 32768] [--out PATH]

With --long L the last request of each batch has L tokens (the others drawn from the pair's
range), and 8 and 16 splits are timed too: one long context among short ones, which a
launch with one split gives to a single program per KV head. With --bound N every launch
is told its longest context may be N tokens, as a CUDA graph captured at that length limit
is (the rule then launches long-only splits from 8,192 on: decode_splits.long_splits).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402
from results_file import write_report  # noqa: E402
from attention import HKV, HQ, D, decode_inputs, make_pool, median_ms  # noqa: E402

from aiollm.kernels.decode_attention_configs import _config  # noqa: E402
from aiollm.kernels.decode_splits import long_splits, num_kv_splits  # noqa: E402

ROUNDS = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs=2, default=[HQ, HKV], metavar=("HQ", "HKV"))
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 1200, 1800, 2048],
                    help="LO HI pairs: each request's tokens drawn from [LO, HI]")
    ap.add_argument("--long", type=int, default=None, metavar="L",
                    help="the last request of each batch has L tokens")
    ap.add_argument("--bound", type=int, default=None, metavar="N",
                    help="the launches' longest context, as a CUDA graph's length limit")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if len(args.contexts) % 2 or any(lo > hi for lo, hi in zip(args.contexts[::2],
                                                                  args.contexts[1::2])):
        ap.error(f"--contexts takes LO HI pairs with LO <= HI, got {args.contexts}")
    contexts = list(zip(args.contexts[::2], args.contexts[1::2]))
    assert torch.cuda.is_available(), "bench/decode_splits.py needs a CUDA GPU"
    hq, hkv = args.heads
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    longest = max([hi for _, hi in contexts] + [args.long or 0])
    if args.bound is not None and args.bound < longest:
        ap.error(f"--bound must be at least the longest context, got {args.bound}")
    if args.long is not None and args.long < longest:
        ap.error(f"--long must be at least every context's HI, got {args.long}")
    k_cache, v_cache = make_pool(max(args.batch) * longest, hkv, D)
    rows = []
    for lo, hi in contexts:
        for B in args.batch:
            top = args.long or hi
            run, nbytes = decode_inputs(k_cache, v_cache, B, top, "scattered", hq, hkv, min_ctx=lo,
                                        max_other=hi if args.long else None, bound=args.bound)
            variants = {"rule": None, "1": 1, "2": 2, "4": 4}
            if args.long:
                variants.update({"8": 8, "16": 16})
            for splits in variants.values():
                run(num_splits=splits)  # compile (and resolve the table's config)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(ROUNDS):
                for name, splits in variants.items():
                    times[name].append(median_ms(lambda: run(num_splits=splits), rep=50))
            med = {name: statistics.median(ts) for name, ts in times.items()}
            bound = args.bound or top
            cfg = _config(B, hq, hkv, D, torch.bfloat16, torch.device("cuda"), bound, None)
            rule = num_kv_splits(B, hkv, bound, sms, cfg["split_tokens"])
            if rule == 1 and long_splits(bound) > 1:
                rule = f"long-only {long_splits(bound)}"
            rows.append({"batch": B, "context": [lo, hi], "long": args.long, "bound": bound,
                         "config": cfg,
                         "rule_splits": rule, "ms": med, "rounds_ms": times, "bytes": nbytes})
            others = "  ".join(f"{n}: {med[n]:.4f}" for n in variants if n != "rule")
            print(f"b{B:<4} ctx {lo}-{hi}{f' + one of {args.long}' if args.long else ''}"
                  f"{f' (bound {args.bound})' if args.bound else ''}: "
                  f"rule ({rule} splits) {med['rule']:.4f} ms; {others}  "
                  f"({nbytes / med['1'] / 1e9:.2f} TB/s at 1)")
    if args.out:
        write_report(args.out, {
            "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
            "git_commit": tree_commit(), "heads": [hq, hkv], "rounds": ROUNDS, "rows": rows})


if __name__ == "__main__":
    main()
