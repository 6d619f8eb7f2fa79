"""Greedy top-1 agreement of our bf16 model with Hugging Face transformers on the same weights.

    python bench/accuracy.py --tokenizer DIR [--out bench/results/accuracy-DATE-DEVICE.json]

Our engine generates greedily in bf16 on the GPU. Each transformers model then reads the
same token sequences (prompt + our output, teacher-forced) and gives its top-1 token at every
generated position. Reported: the share of positions where two models pick the same token,
for ours against transformers in fp32 (the reference) and in bf16, and for transformers'
bf16 against its fp32 and against itself with eager attention (how far two correct bf16
implementations drift apart on the same weights).

Two models: Llama-shaped random weights (transformers' own initialisation, saved in bf16,
random token prompts), and the default model's real weights (its GGUF, dequantized) where
the file is on the machine. CUDA only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three primary colors:",
    "1, 2, 3, 4,",
    "Translate to French: good morning",
    "The quick brown fox",
    "Water boils at",
    "The three laws of thermodynamics are",
    "import numpy as np\n\ndef softmax(x):",
    "My favourite recipe for pancakes:",
    "Q: What is the largest planet in the solar system?\nA:",
    "Write a haiku about the sea.",
    "The history of the Roman Empire began",
    "Photosynthesis is the process by which",
    "In 1969, astronauts",
]


async def greedy(model: str | None, prompts, max_tokens: int, device="cuda", dtype="bfloat16",
                 **opts):
    """Our greedy token ids for each prompt (text or token ids), and the engine (stopped)."""
    from aiollm import Engine, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    async with Engine(model, device=device, dtype=dtype, kv_tokens=16384, **opts) as eng:
        outs = await asyncio.gather(*(eng.generate(p, params) for p in prompts))
        return [o.token_ids for o in outs], eng


def top1(models: dict, prompts: list[list[int]], outs: list[list[int]]) -> dict[str, torch.Tensor]:
    """Each model's top-1 token at every generated position, teacher-forced on our greedy
    outputs `outs` ("ours": the outputs themselves)."""
    tops = {"ours": [torch.tensor(out) for out in outs]}
    with torch.no_grad():
        for name, model in models.items():
            tops[name] = [model(torch.tensor([p + out], device="cuda")).logits[0, len(p) - 1 : -1]
                          .argmax(-1).cpu() for p, out in zip(prompts, outs)]
    return {k: torch.cat(v) for k, v in tops.items()}


def agreement(tops: dict[str, torch.Tensor]) -> dict[str, float]:
    pairs = [("ours", "hf32"), ("ours", "hf16"), ("hf16", "hf32"), ("hf16", "hf16_eager")]
    return {f"{a}_vs_{b}": round((tops[a] == tops[b]).float().mean().item(), 4)
            for a, b in pairs if a in tops and b in tops}


def random_llama(path: str, seed: int = 0):
    """A Llama-3-style model (GQA, llama3 rope scaling) with transformers' own random
    initialisation, saved in bf16 to `path`; returns its vocabulary size."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                      max_position_embeddings=4096, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 1024},
                      tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(
        path, safe_serialization=True)
    return cfg.vocab_size


def random_prompts(vocab: int, seed: int) -> list[list[int]]:
    """The random model's prompts: random token ids, short to long."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, vocab, (n,), generator=g).tolist()
            for n in (5, 17, 64, 200, 333, 1000)]


def hf_models(load, with_eager: bool = True) -> dict:
    """transformers in fp32, bf16 and (optionally) bf16 with eager attention; `load(dtype,
    **kw)` builds one."""
    torch.backends.cuda.matmul.allow_tf32 = False
    models = {"hf32": load(torch.float32), "hf16": load(torch.bfloat16)}
    if with_eager:
        models["hf16_eager"] = load(torch.bfloat16, attn_implementation="eager")
    return {k: m.cuda().eval() for k, m in models.items()}


def measure_random(tokenizer: str | None, max_tokens: int = 64, seed: int = 0) -> dict:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as path:
        vocab = random_llama(path, seed)
        models = hf_models(lambda dt, **kw: AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, **kw))
        prompts = random_prompts(vocab, seed)
        # the directory has no tokenizer of its own: token ids in, token ids out
        outs, _ = asyncio.run(greedy(path, prompts, max_tokens, tokenizer=tokenizer))
    tops = top1(models, prompts, outs)
    return {"positions": len(tops["ours"]), **agreement(tops)}


def hf_from_gguf(path: str, dtype=torch.float32, attn_implementation: str | None = None):
    """transformers' own Llama on a GGUF file's weights (dequantized)."""
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return model.to(dtype)


def measure_default(max_tokens: int = 64) -> dict:
    from aiollm.model import default_model_path

    path = default_model_path()
    models = hf_models(lambda dt, **kw: hf_from_gguf(path, dt, **kw))
    outs, eng = asyncio.run(greedy(None, PROMPTS, max_tokens))
    prompts = [eng.tokenize(p) for p in PROMPTS]
    tops = top1(models, prompts, outs)
    return {"positions": len(tops["ours"]), **agreement(tops)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=os.environ.get("AIOLLM_TEST_TOKENIZER"),
                    help="a tokenizer directory for the random model (any; ids in, ids out)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                    help="random-weight models to measure (none: only the default model)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.cuda.get_device_name()
    commit = tree_commit()
    report = {"bench": "accuracy", "date": str(date.today()), "device": device,
              "commit": commit, "max_tokens": args.max_tokens, "random": {}}
    for seed in args.seeds:
        report["random"][str(seed)] = r = measure_random(args.tokenizer, args.max_tokens, seed)
        print(f"random weights, seed {seed}:", json.dumps(r))
    try:
        report["default_model"] = measure_default(args.max_tokens)
        print("default model:", json.dumps(report["default_model"]))
    except FileNotFoundError as e:
        print(f"default model skipped: {e}")
    out = args.out or result_path("accuracy", device=device)
    write_report(out, report)
    print("wrote", out)


if __name__ == "__main__":
    main()
