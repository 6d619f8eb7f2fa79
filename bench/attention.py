"""Kernel benchmark (GPU only): attention kernels against the GPU's measured ceilings.

Measures, in one run: device-to-device copy bandwidth (bytes read + written) and the bf16
matmul rate, then decode attention (batch 64/256 x context 1k/4k, Llama-3-8B heads: 32 q heads,
8 KV heads, D=128, bf16) as achieved bytes/s against the copy bandwidth, and extend (prefill)
attention at 8 x 2k tokens as causal FLOP/s against the matmul rate. Prints a short table and
writes bench/results/kernels-<date>-<device>.json.

    python bench/attention.py [--tune-serving-shapes] [--out-dir DIR]

AIOLLM_AUTOTUNE applies as in serving (auto: a class missing from aiollm/kernels/configs/
takes the config of a tuned class one step away, a shape or a farther class missing there is
tuned; 1: tune every missing class; 2: retune all). --tune-serving-shapes also tunes the shape
classes a server meets (Llama-3-8B and SmolLM2-135M heads over batch and length buckets;
AIOLLM_AUTOTUNE=1 unless 2 is set, classes borrowed for the timings above included) so that
the shipped config file covers them.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

from aiollm.kernels import decode_attention_triton, extend_attention_triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

HQ, HKV, D = 32, 8, 128
DT = torch.bfloat16
ELT = 2  # bytes per bf16


def median_ms(fn, rep: int = 200) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def copy_bandwidth() -> float:
    src = torch.randn(1 << 29, dtype=DT, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * ELT / (ms * 1e-3)


def matmul_rate(n: int = 8192) -> float:
    a = torch.randn(n, n, dtype=DT, device="cuda")
    b = torch.randn(n, n, dtype=DT, device="cuda")
    ms = median_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3)


def make_pool(num_tokens: int, hkv: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randn(num_tokens, hkv, d, dtype=DT, device="cuda")
    return k, torch.randn_like(k)


def decode_inputs(k_cache, v_cache, B: int, ctx: int, layout: str, hq=HQ, hkv=HKV, d=D,
                  min_ctx: int | None = None, max_other: int | None = None,
                  bound: int | None = None):
    """(run(config=None, num_splits=None), bytes of K/V and q it reads) for B requests of ctx
    tokens (each drawn from [min_ctx, ctx] when given; with max_other, the first B - 1 from
    [min_ctx, max_other] and the last one of ctx: one long context among short ones) over
    slots scattered over (or contiguous in) the first B * ctx of the pool: one set of inputs
    for every config timed. `bound`: the longest context the launch is told of (a CUDA
    graph's, captured at its length limit), ctx by default."""
    n = B * ctx
    slots = torch.randperm(n, device="cuda") if layout == "scattered" else torch.arange(n, device="cuda")
    req_to_token = slots.view(B, ctx).to(torch.int32)
    rows = torch.arange(B, dtype=torch.int32, device="cuda")
    if min_ctx is None:
        lens = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    else:
        lens = torch.randint(min_ctx, (max_other or ctx) + 1, (B,), dtype=torch.int32,
                             device="cuda")
        if max_other is not None:
            lens[-1] = ctx
    q = torch.randn(B, hq, d, dtype=DT, device="cuda")

    def run(config=None, num_splits=None):
        return decode_attention_triton(q, k_cache, v_cache, req_to_token, rows, lens, d**-0.5,
                                       bound or ctx, config=config, num_splits=num_splits)

    return run, 2 * int(lens.sum()) * hkv * d * ELT + 2 * q.numel() * ELT


def decode_case(k_cache, v_cache, B: int, ctx: int, layout: str, hq=HQ, hkv=HKV, d=D,
                num_splits: int | None = None) -> dict:
    run, nbytes = decode_inputs(k_cache, v_cache, B, ctx, layout, hq, hkv, d)
    run(num_splits=num_splits)  # compile, and tune if the config cache says so
    ms = median_ms(lambda: run(num_splits=num_splits))
    return {"batch": B, "context": ctx, "layout": layout, "ms": ms, "bytes": nbytes,
            "bytes_per_s": nbytes / (ms * 1e-3)}


def extend_inputs(k_cache, v_cache, B: int, prefix: int, ext: int, hq=HQ, hkv=HKV, d=D):
    """(run(config=None), FLOPs) for B requests of ext new tokens over a prefix of `prefix`,
    slots scattered over the first B * (prefix + ext) of the pool."""
    seq = prefix + ext
    slots = torch.randperm(B * seq, device="cuda")
    req_to_token = slots.view(B, seq).to(torch.int32)
    i32 = dict(dtype=torch.int32, device="cuda")
    rows = torch.arange(B, **i32)
    pre = torch.full((B,), prefix, **i32)
    ext_lens = torch.full((B,), ext, **i32)
    starts = torch.arange(B, **i32) * ext
    q = torch.randn(B * ext, hq, d, dtype=DT, device="cuda")

    def run(config=None):
        return extend_attention_triton(q, k_cache, v_cache, req_to_token, rows, pre, ext_lens,
                                       starts, d**-0.5, ext, config=config)

    # Each query i attends to prefix + i + 1 keys; 2 FLOPs per multiply-add in QK^T and PV.
    pairs = B * (ext * prefix + ext * (ext + 1) // 2)
    return run, 4 * d * hq * pairs


def extend_case(k_cache, v_cache, B: int, prefix: int, ext: int, hq=HQ, hkv=HKV, d=D) -> dict:
    run, flops = extend_inputs(k_cache, v_cache, B, prefix, ext, hq, hkv, d)
    run()
    ms = median_ms(run)
    return {"batch": B, "prefix": prefix, "extend": ext, "ms": ms, "flops": flops,
            "flops_per_s": flops / (ms * 1e-3)}


def sdpa_case(B: int, n: int) -> dict:
    """torch's own causal attention (flash / cuDNN) on dense [B,H,n,D]: a yardstick."""
    q = torch.randn(B, HQ, n, D, dtype=DT, device="cuda")
    k = torch.randn(B, HKV, n, D, dtype=DT, device="cuda").repeat_interleave(HQ // HKV, 1)
    v = torch.randn_like(k)
    ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    flops = 4 * D * HQ * B * n * (n + 1) // 2
    return {"batch": B, "extend": n, "ms": ms, "flops_per_s": flops / (ms * 1e-3)}


def tune_serving_shapes() -> None:
    if os.environ.get("AIOLLM_AUTOTUNE") != "2":
        os.environ["AIOLLM_AUTOTUNE"] = "1"  # tune the missing classes, not borrow
    for hq, hkv, d in ((32, 8, 128), (9, 3, 64)):
        k_cache, v_cache = make_pool(256 * 8192 if hq == 9 else 256 * 4096, hkv, d)
        for B in (1, 4, 16, 64, 256):
            for ctx in (512, 2048, 4096, 8192):
                if B * ctx <= k_cache.shape[0]:
                    decode_case(k_cache, v_cache, B, ctx, "scattered", hq, hkv, d)
        # a mixed step of the serving workload carries one prompt (bench/attn_serving.py: at
        # the 8B heads 1 x 1,024 wants 128 x 128 tiles, 4 x 1,024 128 x 64 ones)
        for B, ext in ((16, 64), (8, 256), (1, 1024), (2, 4096)):
            extend_case(k_cache, v_cache, B, 0, ext, hq, hkv, d)
        del k_cache, v_cache
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tune-serving-shapes", action="store_true")
    ap.add_argument("--verbose", action="store_true",
                    help="log every tuning candidate and time decode at forced split counts")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("aiollm.kernels").setLevel(logging.DEBUG)
    assert torch.cuda.is_available(), "bench/attention.py needs a CUDA GPU"
    device = torch.cuda.get_device_name()

    copy_bw, mm_rate = copy_bandwidth(), matmul_rate()
    k_cache, v_cache = make_pool(256 * 4096, HKV, D)
    decode = [decode_case(k_cache, v_cache, B, ctx, layout)
              for layout in ("scattered", "contiguous") for B in (64, 256) for ctx in (1024, 4096)]
    extend = [extend_case(k_cache, v_cache, 8, 0, 2048), extend_case(k_cache, v_cache, 8, 1536, 512)]
    forced = []
    if args.verbose:
        forced = [decode_case(k_cache, v_cache, B, 4096, "scattered", num_splits=s)
                  for B in (64, 256) for s in (1, 2, 4, 8)]
        for r, s in zip(forced, (1, 2, 4, 8) * 2):
            r["num_splits"] = s
            print(f"decode b{r['batch']} ctx4096 splits {s}: {r['ms']:.3f} ms "
                  f"{r['bytes_per_s'] / 1e12:.2f} TB/s")
    del k_cache, v_cache
    torch.cuda.empty_cache()
    sdpa = sdpa_case(8, 2048)

    for r in decode:
        r["of_copy_bw"] = r["bytes_per_s"] / copy_bw
    for r in extend:
        r["of_matmul"] = r["flops_per_s"] / mm_rate
    sdpa["of_matmul"] = sdpa["flops_per_s"] / mm_rate

    print(f"\n{device}: copy {copy_bw / 1e12:.2f} TB/s, bf16 matmul {mm_rate / 1e12:.0f} TFLOP/s")
    print(f"{'kernel':<32}{'ms':>9}{'achieved':>16}{'of ceiling':>12}")
    for r in decode:
        name = f"decode b{r['batch']} ctx{r['context']} {r['layout']}"
        print(f"{name:<32}{r['ms']:>9.3f}{r['bytes_per_s'] / 1e12:>10.2f} TB/s{r['of_copy_bw']:>11.0%}")
    for r in extend:
        name = f"extend {r['batch']}x{r['extend']} prefix {r['prefix']}"
        print(f"{name:<32}{r['ms']:>9.3f}{r['flops_per_s'] / 1e12:>8.0f} TFLOP/s{r['of_matmul']:>11.0%}")
    name = f"torch sdpa causal {sdpa['batch']}x{sdpa['extend']}"
    print(f"{name:<32}{sdpa['ms']:>9.3f}{sdpa['flops_per_s'] / 1e12:>8.0f} TFLOP/s{sdpa['of_matmul']:>11.0%}")

    today = datetime.date.today().isoformat()
    result = {
        "date": today, "device": device, "git_commit": tree_commit(),
        "torch": torch.__version__, "triton": triton.__version__,
        "autotune": os.environ.get("AIOLLM_AUTOTUNE", "auto"),
        "shapes": {"num_q_heads": HQ, "num_kv_heads": HKV, "head_dim": D, "dtype": "bfloat16"},
        "copy_bytes_per_s": copy_bw, "matmul_bf16_flops_per_s": mm_rate,
        "decode": decode, "extend": extend, "torch_sdpa_causal": sdpa,
        "decode_forced_splits": forced,
    }
    # every run of non-alphanumerics a dash (stricter than the rule's spaces), as earlier
    # kernels-* files were named; no commit in the name (it is in the report)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")
    path = write_report(result_path("kernels", device=slug, day=today, out_dir=args.out_dir),
                        result)
    print(f"wrote {path}")
    if args.tune_serving_shapes:
        tune_serving_shapes()
        print("tuned the serving shape classes into aiollm/kernels/configs/")


if __name__ == "__main__":
    main()
