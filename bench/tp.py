"""Tensor parallelism on 2 GPUs: collectives, batch-1 decode at TP=1 vs TP=2, greedy agreement.

Phases (each adds its part to the results JSON as soon as it is done):
  collectives: in two fresh processes, the time of one all-reduce of the decode-sized messages
      (bf16 [1, hidden] and [8, hidden]) through NCCL and through PyTorch's symmetric-memory
      one-shot all-reduce (NVLink peer loads; multicast stays off), and of the logits'
      all-gather, each captured 50 times in one CUDA graph (as the decode graph runs them);
  decode: for each --shape, aiollm's Engine (random bf16 weights) at TP=1 and TP=2: batch-1
      decode tokens/s (the first token to the last of --steps), and the roofline of a TP=2
      step: (half the weights + the KV read) / copy bandwidth + (2 layers + 1) all-reduces
      + one logits all-gather at the measured times;
  agreement: the TP=1 engine's greedy continuations of random prompts, then the TP=2 engine's
      next token for every prefix of them (teacher-forced top-1 agreement).

Usage (2 GPUs): python bench/tp.py --out bench/results/tp-DATE.json \\
    --shape bench/configs/llama-3.1-8b [--shape bench/configs/llama-3.1-70b --tp1-max-gb 100]
On the CPU (--dry-run): the same code paths on a tiny shape, gloo and fp32, to check the script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import write_report  # noqa: E402


def _time_graph(fn, reps: int = 50) -> float:
    """Seconds per call of fn, captured reps times in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return sorted(times)[len(times) // 2]


def _collectives_worker(rank: int, port: int, hiddens: list[int], vocabs: list[int], out: str):
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, device_id=dev)
    res = {}
    group = dist.group.WORLD
    for h in hiddens:
        for rows in (1, 8):
            x = torch.randn(rows, h, dtype=torch.bfloat16, device=dev)
            key = f"all_reduce_bf16_{rows}x{h}"
            res[f"{key}_nccl_us"] = 1e6 * _time_graph(lambda: dist.all_reduce(x))
            try:
                import torch.distributed._symmetric_memory as symm_mem

                if hasattr(symm_mem, "enable_symm_mem_for_group"):
                    symm_mem.enable_symm_mem_for_group(group.group_name)
                buf = symm_mem.empty(rows * h, dtype=torch.bfloat16, device=dev)
                symm_mem.rendezvous(buf, group.group_name)
                buf.copy_(x.view(-1))
                # one-shot: each GPU reads the peers' buffers over NVLink and sums
                ref = x.clone()
                dist.all_reduce(ref)
                got = torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group.group_name)
                torch.cuda.synchronize()
                res[f"{key}_symm_mem_max_err"] = float((got.view_as(ref) - ref).abs().max())
                res[f"{key}_symm_mem_us"] = 1e6 * _time_graph(
                    lambda: torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group.group_name))
            except Exception as e:  # report, do not stop the bench
                res[f"{key}_symm_mem_error"] = f"{type(e).__name__}: {e}"[:300]
    for v in vocabs:
        x = torch.randn(1, v // 2, dtype=torch.float32, device=dev)
        o = torch.empty(2, v // 2, dtype=torch.float32, device=dev)
        res[f"all_gather_fp32_logits_{v}_nccl_us"] = 1e6 * _time_graph(
            lambda: dist.all_gather_into_tensor(o, x))
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def collectives(hiddens: list[int], vocabs: list[int]) -> dict:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".json")
    mp.spawn(_collectives_worker, args=(port, hiddens, vocabs, out), nprocs=2)
    return json.loads(Path(out).read_text())


async def decode_and_agreement(shape: str, tp: int, steps: int, dry: bool,
                               reference: list | None) -> dict:
    """Batch-1 decode at this TP, and the greedy data of the agreement phase."""
    from aiollm import Engine, SamplingParams

    gpu = not dry
    eng = Engine(shape, load_format="dummy", dtype="bfloat16" if gpu else "float32",
                 device="cuda" if gpu else "cpu", max_model_len=1024, kv_tokens=32768,
                 max_running_requests=64, max_prefill_tokens=8192, cuda_graph_max_batch=1,
                 scheduler="aggressive", warm_up=False, tensor_parallel_size=tp)
    await eng.start()
    out = {"tp": tp}
    try:
        model = eng.runner.model
        out["weight_bytes_per_gpu"] = sum(p.numel() * p.element_size() for p in model.parameters())
        out["kv_bytes_per_token_per_gpu"] = eng.kv_pool.bytes_per_token(
            eng.model_config.num_layers, eng.kv_pool.k_cache[0].shape[1],
            eng.model_config.head_dim, eng.dtype)
        vocab = eng.model_config.vocab_size
        g = torch.Generator().manual_seed(0)
        params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
        for run in range(2):  # the first run compiles and tunes
            prompt = torch.randint(0, min(vocab, 30000), (128,), generator=g).tolist()
            first = None
            async for d in eng.stream(prompt, params):
                if first is None and d.token_ids:
                    first, n_first = time.perf_counter(), len(d.token_ids)
            per_step = (time.perf_counter() - first) / (d.completion_tokens - n_first)
        out.update(step_ms=per_step * 1e3, tokens_per_s=1 / per_step, input_len=128,
                   steps=steps)
        gen = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
        if reference is None:  # TP=1: greedy continuations of 8 random prompts
            prompts = [torch.randint(0, min(vocab, 30000), (64,), generator=g).tolist()
                       for _ in range(8)]
            outs = await asyncio.gather(*(eng.generate(p, gen) for p in prompts))
            out["reference"] = [[p, o.token_ids] for p, o in zip(prompts, outs)]
        else:  # this TP's next token after every prefix of the reference continuations
            one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
            jobs = [(p + cont[:k], cont[k]) for p, cont in reference for k in range(len(cont))]
            got = await asyncio.gather(*(eng.generate(ids, one) for ids, _ in jobs))
            agree = sum(o.token_ids[0] == want for o, (_, want) in zip(got, jobs))
            out["agreement"] = {"positions": len(jobs), "top1_agree": agree,
                                "fraction": agree / len(jobs)}
    finally:
        await eng.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--tp1-max-gb", type=float, default=100.0,
                    help="skip TP=1 for shapes whose weights exceed this (GB)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, gloo, fp32: check the script")
    args = ap.parse_args()
    dry = args.dry_run
    commit = tree_commit()
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(),
           "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE",
                                                  "TORCH_SYMM_MEM_DISABLE_MULTICAST")},
           "shapes": {}}

    def save():
        write_report(args.out, res)

    configs = {s: json.loads((Path(s) / "config.json").read_text()) for s in args.shape}
    if not dry:
        from decode import measure_ceilings

        res["ceilings"] = measure_ceilings()
        try:
            res["collectives"] = collectives(
                sorted({c["hidden_size"] for c in configs.values()}),
                sorted({c["vocab_size"] for c in configs.values()}))
        except Exception as e:
            res["collectives"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        save()
    for shape, c in configs.items():
        r = res["shapes"][shape] = {}
        params_gb = 2 * (c["num_hidden_layers"] * (4 * c["hidden_size"] ** 2 * 0.625
                                                   + 3 * c["hidden_size"] * c["intermediate_size"])
                         + 2 * c["vocab_size"] * c["hidden_size"]) / 1e9
        ref = None
        try:
            if params_gb <= args.tp1_max_gb:
                r["tp1"] = asyncio.run(decode_and_agreement(shape, 1, args.steps, dry, None))
                ref = r["tp1"].pop("reference")
                save()
            r["tp2"] = asyncio.run(decode_and_agreement(shape, 2, args.steps, dry, ref))
            r["tp2"].pop("reference", None)
        except Exception as e:  # keep what was measured, go on with the next shape
            r["error"] = f"{type(e).__name__}: {e}"[:500]
            save()
            continue
        if not dry:
            col, bw = res["collectives"], res["ceilings"]["copy_bw_bytes_per_s"]
            t2 = r["tp2"]
            h, v = c["hidden_size"], c["vocab_size"]
            ar = col.get(f"all_reduce_bf16_1x{h}_nccl_us", 0) * 1e-6
            ag = col.get(f"all_gather_fp32_logits_{v}_nccl_us", 0) * 1e-6
            ctx = 128 + args.steps / 2
            mem = (t2["weight_bytes_per_gpu"] + ctx * t2["kv_bytes_per_token_per_gpu"]) / bw
            step = mem + (2 * c["num_hidden_layers"] + 1) * ar + ag
            t2["roofline"] = {"memory_ms": mem * 1e3, "all_reduce_us": ar * 1e6,
                              "all_gather_us": ag * 1e6, "step_ms": step * 1e3,
                              "tokens_per_s": 1 / step,
                              "fraction_reached": step * 1e3 / t2["step_ms"]}
            if "tp1" in r:
                t2["speedup_vs_tp1"] = t2["tokens_per_s"] / r["tp1"]["tokens_per_s"]
        save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
