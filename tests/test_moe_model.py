"""Mixture-of-experts models (Qwen3-MoE, Mixtral, Qwen2-MoE) against transformers, CPU fp32.

Tiny random models built here with a fixed seed and saved as HF safetensors (per-expert
tensors, as transformers writes them): our logits at every position must match, greedy
generation through `Engine` and through the HTTP server must give transformers' token ids,
and --load-format dummy must build the same shapes from config.json alone.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

from aiollm import Engine, SamplingParams
from aiollm.model import load_model, load_tokenizer
from live_server import LiveServer, http, sse_events
from test_loader import all_position_logits, save_random_hf_model

TINY = dict(vocab_size=160, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
FAMILIES = {
    # layer 1 is dense (mlp_only_layers): both kinds of MLP in one model
    "qwen3_moe": Qwen3MoeConfig(**TINY, head_dim=16, intermediate_size=80,
                                moe_intermediate_size=32, num_experts=16, num_experts_per_tok=2,
                                norm_topk_prob=True, mlp_only_layers=[1]),
    "mixtral": MixtralConfig(**TINY, intermediate_size=48, num_local_experts=8,
                             num_experts_per_tok=2, sliding_window=None),
    "qwen2_moe": Qwen2MoeConfig(**TINY, intermediate_size=80, moe_intermediate_size=32,
                                shared_expert_intermediate_size=48, num_experts=8,
                                num_experts_per_tok=2, norm_topk_prob=False),
}
PROMPTS = [[3, 17, 99, 4, 150, 23, 7], [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2], [5],
           [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]
NEW_TOKENS = 12


def save_moe_model(family: str, path) -> torch.nn.Module:
    hf = save_random_hf_model(FAMILIES[family], str(path))
    with torch.no_grad():
        # routers at the default init (std 0.02) give near-ties between experts, which any
        # change of summation order may flip: make the routing decisive, then save again
        for name, p in hf.named_parameters():
            if name.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):
                p.normal_(0, 1.0)
    hf.save_pretrained(str(path))
    load_tokenizer(None).save_pretrained(str(path))  # any tokenizer: the prompts are ids
    return hf


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy decoding with transformers' forward and its KV cache (no generation config:
    a checkpoint's eos ids and logits processors stay out of it)."""
    seq, past, out = torch.tensor([ids]), None, []
    with torch.no_grad():
        for _ in range(n):
            res = model(seq if past is None else seq[:, -1:], past_key_values=past,
                        use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
            seq = torch.cat([seq, torch.tensor([[out[-1]]])], dim=1)
    return out


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral"])
def moe_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_moe_model(request.param, path)
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    return request.param, path, hf, want


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_at_every_position(tmp_path, family):
    hf = save_moe_model(family, tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    moe = loaded.config.moe
    assert moe.num_experts == FAMILIES[family].to_dict().get(
        "num_experts", FAMILIES[family].to_dict().get("num_local_experts"))
    sparse = [hasattr(layer.mlp, "experts") for layer in loaded.model.layers]
    assert sparse == ([True, False, True] if family == "qwen3_moe" else [True] * 3)
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_greedy_through_engine_matches_transformers(moe_model):
    family, path, _, want = moe_model

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            outs = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
            assert engine.stats()["kv_used"] == 0
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want, family


def test_greedy_through_the_server_matches_transformers(moe_model):
    family, path, _, want = moe_model
    server = LiveServer(model=str(path)).start()
    try:
        body = {"parameters": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True,
                               "return_details": True}}
        for prompt, expected in zip(PROMPTS, want):
            status, _, raw = http(server, "POST", "/generate", json={**body, "inputs": prompt})
            assert status == 200, raw
            assert [t["id"] for t in json.loads(raw)["tokens"]] == expected, family
            status, _, raw = http(server, "POST", "/generate_stream",
                                  json={**body, "inputs": prompt})
            assert status == 200, raw
            events = [json.loads(e) for e in sse_events(raw)]
            assert [e["token"]["id"] for e in events] == expected, family
        server.wait_idle()
    finally:
        server.close()
