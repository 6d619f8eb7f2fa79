"""How often bf16 rounding alone flips the top-1 token of a random-weight Llama: the floor
under bench/accuracy.py's agreement numbers.

    python bench/precision_floor.py [--seeds 0 1 2 ...] [--out bench/results/...json]

CPU only. For each seed, the Llama-shaped random model of bench/accuracy.py (transformers'
initialisation, bf16 weights) and its prompts; transformers in fp32 generates the greedy
continuations. A plain Llama forward then reads each sequence once in float64 (the reference)
and once per variant in float32 with chosen tensors rounded to bf16 and back; reported is the
share of positions whose top-1 token matches the reference, at the generated positions (what
bench/accuracy.py scores) and at all positions.

The variants emulate designs, not kernels (no accumulation order, no tiling):
- transformers_bf16: every tensor in bf16, the residual stream too;
- aiollm_bf16: our GPU path: sub-block outputs in bf16, the residual stream in fp32, logits in
  fp32 from the bf16 final-norm output;
- least_bf16: only what bf16 tensor-core matmuls and a bf16 KV cache force: matmul inputs
  (norm outputs, attention output, SwiGLU output, the attention probabilities), q, and K/V;
- one rounding point at a time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commit import tree_commit  # noqa: E402  (bench/ is scripts, not a package)
from results_file import result_path, write_report  # noqa: E402

# The points of a decoder layer where a bf16 design may round (see forward()).
POINTS = ("norm", "final_norm", "qkv", "kv", "probs", "attn_out", "o", "gate_up", "act", "down",
          "residual")
LEAST = {"norm", "final_norm", "kv", "probs", "attn_out", "act"}
VARIANTS = {
    "transformers_bf16": set(POINTS),
    "aiollm_bf16": set(POINTS) - {"residual"},
    "least_bf16": LEAST,
    **{f"only_{p}": {p} for p in ("norm", "final_norm", "kv", "probs", "attn_out", "act")},
}


def rope_tables(cfg, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim] of transformers' rotary for this config (llama3 scaling)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1), torch.arange(n)[None])
    return cos[0], sin[0]


def forward(weights: dict, cfg, ids: list[int], rounded: set, dtype=torch.float32) -> torch.Tensor:
    """Logits [T, vocab] of one sequence (causal, no cache); tensors named in `rounded` pass
    through bf16."""
    def r(x, point):
        return x.to(torch.bfloat16).to(dtype) if point in rounded else x

    W = {k: v.to(dtype) for k, v in weights.items()}
    T, H, KV = len(ids), cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    cos, sin = (t.to(dtype)[:, None] for t in rope_tables(cfg, T))

    def rope(x):
        return x * cos + torch.cat((-x[..., D // 2:], x[..., : D // 2]), -1) * sin

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = r(norm(x, W[p + "input_layernorm.weight"]), "norm")
        q, k, v = (r(h @ W[p + f"self_attn.{n}_proj.weight"].T, "qkv").view(T, -1, D)
                   for n in "qkv")
        q, k, v = r(rope(q), "kv"), r(rope(k), "kv"), r(v, "kv")
        k, v = (t.repeat_interleave(H // KV, 1) for t in (k, v))
        s = torch.einsum("thd,shd->hts", q, k).mul(D**-0.5).masked_fill(~causal, float("-inf"))
        e = torch.exp(s - s.amax(-1, keepdim=True))
        # flash attention multiplies bf16 probabilities by V and divides by the fp32 sum
        o = torch.einsum("hts,shd->thd", r(e, "probs"), v) / e.sum(-1).T[..., None]
        o = r(r(o.reshape(T, H * D), "attn_out") @ W[p + "self_attn.o_proj.weight"].T, "o")
        x = r(x + o, "residual")
        h = r(norm(x, W[p + "post_attention_layernorm.weight"]), "norm")
        gate = r(h @ W[p + "mlp.gate_proj.weight"].T, "gate_up")
        up = r(h @ W[p + "mlp.up_proj.weight"].T, "gate_up")
        d = r(r(F.silu(gate) * up, "act") @ W[p + "mlp.down_proj.weight"].T, "down")
        x = r(x + d, "residual")
    return r(norm(x, W["model.norm.weight"]), "final_norm") @ W["lm_head.weight"].T


def sequences(model, vocab: int, seed: int, max_tokens: int) -> list[tuple[int, list[int]]]:
    """(prompt length, prompt + fp32 greedy continuation) for bench/accuracy.py's prompts."""
    from accuracy import random_prompts

    out = []
    for prompt in random_prompts(vocab, seed):
        n = len(prompt)
        seq = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False,
                             attention_mask=torch.ones(1, n, dtype=torch.long))
        out.append((n, seq[0].tolist()))
    return out


def measure_seed(seed: int, max_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    from accuracy import random_llama  # bench/ is on the path when this runs as a script

    with tempfile.TemporaryDirectory() as path:
        random_llama(path, seed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg, weights = model.config, model.state_dict()
    with torch.no_grad():
        seqs = sequences(model, cfg.vocab_size, seed, max_tokens)
        refs = [forward(weights, cfg, s, set(), torch.float64) for _, s in seqs]
        # the emulator is a faithful Llama: its fp32 logits against transformers' own
        hf = [model(torch.tensor([s])).logits[0].double() for _, s in seqs]
        check = max(((a - b).norm() / b.norm()).item() for a, b in zip(refs, hf))
        result = {"positions": sum(len(s) for _, s in seqs),
                  "generated_positions": len(seqs) * max_tokens,
                  "emulator_vs_transformers_fp32_rel_err": check, "variants": {}}
        for name, rounded in VARIANTS.items():
            same = [(forward(weights, cfg, s, rounded).argmax(-1) == ref.argmax(-1))
                    for (_, s), ref in zip(seqs, refs)]
            gen = torch.cat([m[n - 1 : -1] for (n, _), m in zip(seqs, same)])
            result["variants"][name] = {"generated": int(gen.sum()),
                                        "all": int(sum(m.sum() for m in same))}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    commit = tree_commit()
    report = {"bench": "precision_floor", "date": str(date.today()), "device": platform.processor()
              or platform.machine(), "commit": commit, "seeds": {}}
    for seed in args.seeds:
        t0 = time.time()
        report["seeds"][str(seed)] = r = measure_seed(seed, args.max_tokens)
        print(f"seed {seed} ({time.time() - t0:.0f} s): emulator vs transformers fp32, "
              f"relative error {r['emulator_vs_transformers_fp32_rel_err']:.1e}", flush=True)
    runs = list(report["seeds"].values())
    n_gen = sum(r["generated_positions"] for r in runs)
    n_all = sum(r["positions"] for r in runs)
    report["total"] = {}
    print(f"\n{'variant':<20} {'generated':>18} {'all positions':>18}")
    for name in VARIANTS:
        gen = sum(r["variants"][name]["generated"] for r in runs) / n_gen
        allp = sum(r["variants"][name]["all"] for r in runs) / n_all
        report["total"][name] = {"generated": round(gen, 4), "all": round(allp, 4)}
        print(f"{name:<20} {gen:>11.2%} of {n_gen:<5} {allp:>11.2%} of {n_all}")
    out = Path(args.out or result_path("precision-floor"))
    write_report(out, report)
    print("wrote", out)


if __name__ == "__main__":
    main()
