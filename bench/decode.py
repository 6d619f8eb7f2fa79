"""Decode throughput against the roofline of the same run, with HF transformers as a baseline.

On a CUDA GPU, for each model shape (a directory with a config.json; random weights):
  1. measures the copy bandwidth (device-to-device copy, bytes read + written) and the bf16
     matmul rate (8192^3), the two ceilings;
  2. runs aiollm's Engine at each batch size: B requests of --input-len random tokens, each
     generating --steps tokens (ignore_eos), timed from each request's first token to its
     last (the decode phase); tokens/s = B / time per step;
  3. runs transformers' generate on the same shape at the same batch sizes (decode time =
     time for --hf-steps tokens minus time for 1 token);
  4. computes the roofline of a decode step: max(bytes / copy bandwidth, flops / matmul rate)
     with bytes = weights + KV read (B x mean context x KV bytes per token) and
     flops = 2 x params x B.
Prints a table, writes bench/results/decode-DATE-DEVICE-MODELS-COMMIT.json (COMMIT: bench/commit.py) and, per shape, a roofline JSON
that bench/serve.py --roofline-json reads.

Usage: python bench/decode.py bench/configs/llama-3.1-8b bench/configs/llama-3.2-1b
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402


def measure_ceilings() -> dict[str, float]:
    from triton.testing import do_bench

    n = 1 << 30  # 2 GiB of bf16
    x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    copy_bw = 2 * x.numel() * x.element_size() / (ms * 1e-3)
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    matmul = 2 * 8192**3 / (ms * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return {"copy_bw_bytes_per_s": copy_bw, "matmul_flops_per_s": matmul}


async def aiollm_decode(model_dir: str, batches: list[int], input_len: int, steps: int,
                        cuda_graph: bool, tokenizer: str | None) -> tuple[dict, dict]:
    from aiollm import Engine, SamplingParams

    max_b = max(batches)
    eng = Engine(model_dir, load_format="dummy", dtype="bfloat16",
                 max_model_len=input_len + steps + 8, kv_tokens=max_b * (input_len + steps + 8),
                 max_running_requests=max_b, max_prefill_tokens=16384, cuda_graph=cuda_graph,
                 cuda_graph_max_batch=max_b, scheduler="aggressive", tokenizer=tokenizer)
    await eng.start()
    named = list(eng.runner.model.named_parameters())
    moe = eng.model_config.moe
    shape = {
        "params": sum(p.numel() for _, p in named),
        # a token reads only its top-k experts: the roofline counts the experts a batch touches
        "active_params": eng.model_config.num_params(active=True),
        "expert_bytes": sum(p.numel() * p.element_size() for n, p in named if ".experts." in n),
        "moe_experts_top_k": [moe.num_experts, moe.top_k] if moe else None,
        "weight_bytes": sum(p.numel() * p.element_size() for _, p in named),
        "kv_bytes_per_token": eng.kv_pool.bytes_per_token(
            eng.model_config.num_layers, eng.model_config.num_kv_heads,
            eng.model_config.head_dim, torch.bfloat16),
    }
    vocab = eng.model_config.vocab_size
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    results = {}
    try:
        for b in [1] + batches:  # the first batch-1 run warms up (compiles, tunes)
            prompts = torch.randint(0, min(vocab, 30000), (b, input_len)).tolist()

            async def one(p):
                first = None
                async for d in eng.stream(p, params):
                    if first is None and d.token_ids:
                        first, n_first = time.perf_counter(), len(d.token_ids)
                return first, n_first, time.perf_counter(), d.completion_tokens

            m = eng.metrics
            before = [_hist(h) for h in (m.step_model, m.step_host, m.step_gpu_gap)]
            runs = await asyncio.gather(*(one(p) for p in prompts))
            after = [_hist(h) for h in (m.step_model, m.step_host, m.step_gpu_gap)]
            per_step = sum((end - first) / (n - n_first) for first, n_first, end, n in runs) / b
            # the engine's own view, over every step of the run (prefill included): device
            # time per step, loop (host) time per step, device idle gap before a step
            (dm, dn), (hm, hn), (gm, gn) = ((a[0] - b_[0], a[1] - b_[1])
                                            for a, b_ in zip(after, before))
            results[b] = {"step_ms": per_step * 1e3, "tokens_per_s": b / per_step,
                          "device_ms_per_step": 1e3 * dm / max(dn, 1),
                          "host_ms_per_step": 1e3 * hm / max(hn, 1),
                          "gpu_gap_us_per_step": 1e6 * gm / max(gn, 1), "steps": dn}
    finally:
        await eng.stop()
    return results, shape


def _hist(metric) -> tuple[float, float]:
    samples = {s.name: s.value for s in metric.collect()[0].samples}
    return samples[f"{metric._name}_sum"], samples[f"{metric._name}_count"]


def hf_decode(model_dir: str, batches: list[int], input_len: int, steps: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    res = {}
    for b in batches:
        ids = torch.randint(0, 30000, (b, input_len), device="cuda")
        mask = torch.ones_like(ids)

        def gen(n):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            return time.perf_counter() - t0

        gen(2)
        t1, tn = gen(1), gen(steps)
        per_step = (tn - t1) / (steps - 1)
        res[b] = {"step_ms": per_step * 1e3, "tokens_per_s": b / per_step}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def roofline(shape: dict, ceil: dict, b: int, context: float) -> float:
    weights = shape["weight_bytes"]
    if shape.get("moe_experts_top_k"):  # expected share of experts b tokens touch (uniform)
        e, k = shape["moe_experts_top_k"]
        weights -= shape["expert_bytes"] * (1 - k / e) ** b
    bytes_ = weights + b * context * shape["kv_bytes_per_token"]
    flops = 2 * shape.get("active_params", shape["params"]) * b
    t = max(bytes_ / ceil["copy_bw_bytes_per_s"], flops / ceil["matmul_flops_per_s"])
    return b / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="directories with a config.json")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--hf-steps", type=int, default=32)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer for the engine (default: the default model's)")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()

    device = torch.cuda.get_device_name()
    ceil = measure_ceilings()
    print(f"{device}: copy {ceil['copy_bw_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {ceil['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    commit = tree_commit()
    report = {"bench": "decode", "date": str(date.today()), "device": device, "commit": commit,
              "ceilings": ceil, "input_len": args.input_len, "steps": args.steps, "models": {}}
    rows = []
    for m in args.models:
        name = Path(m).name
        ours, shape = asyncio.run(aiollm_decode(m, args.batch, args.input_len, args.steps,
                                                not args.no_cuda_graph, args.tokenizer))
        hf = {} if args.no_hf else hf_decode(m, args.batch, args.input_len, args.hf_steps)
        context = args.input_len + args.steps / 2
        entry = {"shape": shape, "batches": {}}
        for b in args.batch:
            roof = roofline(shape, ceil, b, context)
            e = {"aiollm": ours[b], "hf": hf.get(b), "roofline_tokens_per_s": roof,
                 "fraction_of_roofline": ours[b]["tokens_per_s"] / roof}
            entry["batches"][b] = e
            rows.append((name, b, ours[b]["tokens_per_s"], ours[b]["step_ms"],
                         hf[b]["tokens_per_s"] if b in hf else float("nan"), roof))
        report["models"][name] = entry
        write_report(Path(args.out_dir) / f"roofline-{name}.json", {
            **ceil, "weight_bytes": shape["weight_bytes"],
            "kv_bytes_per_token": shape["kv_bytes_per_token"],
            "flops_per_token": 2 * shape.get("active_params", shape["params"])}, indent=2)
    print(f"{'model':14} {'batch':>5} {'aiollm tok/s':>13} {'ms/step':>8} {'HF tok/s':>9} "
          f"{'roofline':>9} {'of roof':>8}")
    for name, b, tps, ms, hf_tps, roof in rows:
        print(f"{name:14} {b:5d} {tps:13.1f} {ms:8.2f} {hf_tps:9.1f} {roof:9.1f} {tps / roof:8.1%}")
    print(f"{'model':14} {'batch':>5} {'device ms':>10} {'host ms':>8} {'gap us':>7}")
    for name, entry in report["models"].items():
        for b, e in entry["batches"].items():
            a = e["aiollm"]
            print(f"{name:14} {b:5d} {a['device_ms_per_step']:10.2f} {a['host_ms_per_step']:8.2f} "
                  f"{a['gpu_gap_us_per_step']:7.1f}")
    names = "-".join(Path(m).name for m in args.models)
    path = result_path("decode", device=device, tags=[names], commit=commit,
                       out_dir=args.out_dir)
    write_report(path, report, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
