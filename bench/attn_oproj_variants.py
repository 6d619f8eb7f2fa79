"""Variants for bench/decode_step.py (its --variants file): the batch-1 decode graph without
and with attention + o_proj fused (kernels/attention_oproj.py), the fused one under each
candidate config of the model's shape key.

    python bench/attn_oproj_variants.py bench/configs/llama-3.2-1b > /tmp/v.json
    python bench/decode_step.py bench/configs/llama-3.2-1b --tokenizer TOK --variants /tmp/v.json

"base" is the unfused path, "fused" the kernel's committed (else default) config.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--max-model-len", type=int, default=264, help="decode_step.py's")
    args = ap.parse_args()

    from aiollm.kernels import attention_oproj
    from aiollm.model.hf_config import load_hf_config

    cfg = load_hf_config(args.model)
    key = attention_oproj.config_key(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                     cfg.hidden_size, torch.bfloat16, args.max_model_len)
    variants: dict[str, dict] = {"base": {"attn_oproj": False}, "fused": {"attn_oproj": True}}
    for c in attention_oproj.candidates(cfg.head_dim):
        name = f"fused-n{c['BLOCK_N']}-kv{c['BLOCK_KV']}-w{c['num_warps']}"
        if "TILE" in c:
            name += f"-t{c['TILE']}"
        variants[name] = {"attn_oproj": True, "cfg": {"attention_oproj": {key: c}}}
    print(json.dumps(variants, indent=1))


if __name__ == "__main__":
    main()
