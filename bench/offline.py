"""Offline throughput: aiollm's LLM.generate vs transformers' batched, padded generate.

Same machine, same weights (the default SmolLM2-135M-Instruct GGUF in fp32 unless --model),
same 64 prompts, same output lengths (greedy, --max-tokens each, eos ignored on both sides).
Prints both throughputs and their ratio; writes bench/results/offline-DATE.json.
Usage: python bench/offline.py [--num-prompts 64] [--max-tokens 64] [--hf-batch 64]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

WORDS = ("the a of to and in is it that for on with as was by at from this be are or an "
         "story river mountain city music science history garden winter light market ocean "
         "machine language bridge forest letter window engine picture system question").split()


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 120))) for _ in range(n)]


def run_aiollm(model: str | None, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    from aiollm import LLM, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    with LLM(model, kv_tokens=32768, max_prefill_tokens=4096) as llm:
        llm.generate(prompts[:2], SamplingParams(max_tokens=2), progress=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, progress=False)
        elapsed = time.perf_counter() - t0
    return elapsed, sum(o.completion_tokens for o in outs)


def run_hf(model: str | None, prompts: list[str], max_tokens: int, batch: int) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM

    from aiollm.model import default_model_path, load_tokenizer

    path = Path(model or default_model_path())
    kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    hf = AutoModelForCausalLM.from_pretrained(path.parent if kw else path, dtype=torch.float32,
                                              **kw).eval()
    tok = load_tokenizer(str(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hf.generate(**tok(prompts[:2], return_tensors="pt", padding=True), max_new_tokens=2,
                do_sample=False)  # warm-up
    t0 = time.perf_counter()
    generated = 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
            out = hf.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                              do_sample=False, pad_token_id=tok.pad_token_id)
            generated += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return time.perf_counter() - t0, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    prompts = make_prompts(args.num_prompts)
    t_ours, n_ours = run_aiollm(args.model, prompts, args.max_tokens)
    t_hf, n_hf = run_hf(args.model, prompts, args.max_tokens, args.hf_batch)
    ours, hf = n_ours / t_ours, n_hf / t_hf
    print(f"aiollm        {n_ours:6d} tokens in {t_ours:7.2f} s: {ours:8.1f} tok/s")
    print(f"transformers  {n_hf:6d} tokens in {t_hf:7.2f} s: {hf:8.1f} tok/s")
    print(f"ratio {ours / hf:.2f}x")
    commit = tree_commit()
    write_report(result_path("offline"), {
        "bench": "offline", "date": str(date.today()), "commit": commit,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "num_prompts": args.num_prompts, "max_tokens": args.max_tokens, "hf_batch": args.hf_batch,
        "aiollm_tokens_per_s": ours, "hf_tokens_per_s": hf, "ratio": ours / hf,
        "aiollm_s": t_ours, "hf_s": t_hf}, indent=2)


if __name__ == "__main__":
    main()
