"""Mixture-of-experts models (Qwen3-MoE, Mixtral, Qwen2-MoE) against transformers, CPU fp32.

Tiny random models built here with a fixed seed and saved as HF safetensors (per-expert
tensors, as transformers writes them): our logits at every position must match, greedy
generation through `Engine` and through the HTTP server must give transformers' token ids,
and --load-format dummy must build the same shapes from config.json alone.
"""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
import torch
from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

from aiollm import Engine, SamplingParams
from aiollm.model import load_model, load_tokenizer
from live_server import LiveServer, http, sse_events
from test_loader import all_position_logits, finish_gguf, gguf_writer, save_random_hf_model

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


def save_moe_model(family: str, path, config=None, tokenizer: bool = True) -> torch.nn.Module:
    """A random model of `family` (or `config`) saved in `path`, with the default model's
    tokenizer unless `tokenizer` is False (it takes seconds to load)."""
    hf = save_random_hf_model(config or FAMILIES[family], str(path))
    with torch.no_grad():
        # routers at the default init (std 0.02) give near-ties between experts, which any
        # change of summation order may flip: make the routing decisive, then save again
        for name, p in hf.named_parameters():
            if name.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):
                p.normal_(0, 1.0)
    hf.save_pretrained(str(path))
    if tokenizer:
        load_tokenizer(None).save_pretrained(str(path))  # any tokenizer: the prompts are ids
    return hf


def cache_keyword(model) -> str:
    """The name `model`'s forward takes its KV cache by, and its output returns it by:
    `cache` in the transformers installed here (past_key_values deprecated, removed in
    5.40), past_key_values in the older 5.x of the GPU machine, where `cache=` fell into
    **kwargs unread and the last token was run alone."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy decoding with transformers' forward and its KV cache (no generation config:
    a checkpoint's eos ids and logits processors stay out of it). Cached, not the whole
    sequence again at each step: LongRoPE's keys of a prompt within the original context
    keep their short factors in the cache as the decode passes it (test_longrope_prompts)."""
    key = cache_keyword(model)
    seq, past, out = torch.tensor([ids]), None, []
    with torch.no_grad():
        for _ in range(n):
            if past is None:
                res = model(seq, use_cache=True)
            else:
                res = model(seq[:, -1:], use_cache=True, **{key: past})
            past = getattr(res, key)
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


@pytest.mark.parametrize("family, dtype", [("qwen3_moe", torch.bfloat16),
                                           ("mixtral", torch.float16),
                                           ("qwen2_moe", torch.bfloat16),
                                           ("qwen2_moe", torch.float16)])
def test_half_precision_logits_are_close_to_transformers(tmp_path, family, dtype):
    """The CPU path in bf16 / fp16 (experts, router, shared expert in the run dtype): close
    to transformers in the same dtype, not equal (summation orders differ)."""
    hf = save_moe_model(family, tmp_path).to(dtype)
    loaded = load_model(str(tmp_path), dtype=dtype, device="cpu")
    assert loaded.model.layers[0].mlp.experts.gate_up_proj.dtype == dtype
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS]).float()
    assert (logits - ref).abs().max() < 0.05
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_qwen2_moe_without_qkv_bias_matches_transformers(tmp_path):
    """Qwen2MoeConfig's qkv_bias=False leaves q/k/v without biases (the loader expected them
    whatever the config said, and refused the checkpoint as missing weights)."""
    config = Qwen2MoeConfig(**{**FAMILIES["qwen2_moe"].to_dict(), "qkv_bias": False})
    hf = save_moe_model("qwen2_moe", tmp_path, config)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert not loaded.config.qkv_bias
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_qwen2_moe_without_shared_expert_matches_transformers(tmp_path):
    """shared_expert_intermediate_size=0: transformers builds a zero-width shared expert
    (its checkpoint holds [0, H] and [H, 0] projections and a [1, H] gate) that adds
    sigmoid(gate) * 0 to every token. It runs as a model without a shared expert; those
    tensors were refused as having "no place in the model"."""
    config = Qwen2MoeConfig(**{**FAMILIES["qwen2_moe"].to_dict(),
                               "shared_expert_intermediate_size": 0})
    hf = save_moe_model("qwen2_moe", tmp_path, config)
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), kv_tokens=1024, max_model_len=256) as engine:
            layer = engine.runner.model.layers[0]
            assert not hasattr(layer.mlp, "shared_expert")
            outs = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want


def variant(family: str, **fields):
    return type(FAMILIES[family])(**{**FAMILIES[family].to_dict(), **fields})


# config variants transformers accepts, beyond FAMILIES: where the sparse layers are, the
# routing's edges (one expert a token, every expert), renormalisation the other way, tied
# embeddings, a sliding window longer than the prompts, one expert with a shared one, sliding
# windows shorter than the prompts (Mixtral's every layer, Qwen2-MoE's layer 0 only: the even
# layers below max_window_layers; Qwen3-MoE's every layer)
VARIANTS = {
    "qwen3_moe-sparse-step-2": ("qwen3_moe", dict(num_hidden_layers=4, decoder_sparse_step=2,
                                                  mlp_only_layers=[3])),
    "qwen3_moe-top1-unnormalised": ("qwen3_moe", dict(num_experts_per_tok=1,
                                                      norm_topk_prob=False)),
    "qwen3_moe-top-all-tied": ("qwen3_moe", dict(num_experts_per_tok=16,
                                                 tie_word_embeddings=True)),
    "mixtral-sliding-window-tied": ("mixtral", dict(sliding_window=300,
                                                    tie_word_embeddings=True)),
    "mixtral-sliding-window-5": ("mixtral", dict(sliding_window=5)),
    "qwen2_moe-sliding-layer-0": ("qwen2_moe", dict(use_sliding_window=True, sliding_window=4,
                                                    max_window_layers=2, layer_types=None)),
    "qwen3_moe-sliding-window-6": ("qwen3_moe", dict(use_sliding_window=True, sliding_window=6)),
    "qwen2_moe-one-expert-normalised": ("qwen2_moe", dict(num_experts=1, num_experts_per_tok=1,
                                                          norm_topk_prob=True,
                                                          decoder_sparse_step=2)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_variants_match_transformers(tmp_path, name):
    family, fields = VARIANTS[name]
    hf = save_moe_model(family, tmp_path, variant(family, **fields))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    sparse = [hasattr(layer.mlp, "experts") for layer in loaded.model.layers]
    assert sparse == [hasattr(layer.mlp, "experts") for layer in hf.model.layers], name
    windows = [layer.self_attn.window for layer in loaded.model.layers]
    assert windows == {"mixtral-sliding-window-tied": [300] * 3,
                       "mixtral-sliding-window-5": [5] * 3, "qwen2_moe-sliding-layer-0": [4, 0, 0],
                       "qwen3_moe-sliding-window-6": [6] * 3}.get(name, [0] * len(windows)), name
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("family, fields", [
    ("mixtral", {"attention_bias": True, "mlp_bias": True}),
    ("qwen2_moe", {"attention_bias": True, "qkv_bias": False, "mlp_bias": True}),
])
def test_bias_fields_the_family_does_not_read_are_ignored_as_transformers_does(
        tmp_path, family, fields):
    """transformers builds Mixtral's (and Mistral's) attention without biases whatever
    attention_bias says, Qwen2-MoE's q/k/v biases from qkv_bias alone, and reads mlp_bias
    only for Llama. A config.json carrying those fields (left by a conversion or a merge
    tool) runs there; here it was refused, as missing q/k/v/o biases or as mlp_bias."""
    from transformers import AutoModelForCausalLM

    save_moe_model(family, tmp_path, variant(family, **{
        k: v for k, v in fields.items() if k == "qkv_bias"}))
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, **fields}))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert hf.config.attention_bias and hf.model.layers[0].self_attn.q_proj.bias is None
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert not loaded.config.qkv_bias and not loaded.config.o_bias
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4


def test_a_shared_expert_width_qwen3_moe_does_not_read_is_ignored(tmp_path):
    """Qwen3-MoE has no shared expert: transformers leaves shared_expert_intermediate_size
    in its config.json unread (a config written from a Qwen2-MoE one carries it). We built
    a shared expert from it, and refused the checkpoint as missing its weights."""
    from transformers import AutoModelForCausalLM

    save_moe_model("qwen3_moe", tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved,
                                                       "shared_expert_intermediate_size": 48}))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.moe.shared_expert_intermediate_size == 0
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["shards-with-index", "stacked-experts"])
def test_checkpoint_layouts_match_transformers(tmp_path, layout):
    """Shards with an index json (each shard holding some experts of a layer), and the
    experts stacked as transformers 5 holds them (experts.gate_up_proj [E, 2I, H],
    experts.down_proj [E, H, I]: a state dict saved as it is)."""
    from safetensors.torch import save_file

    hf = save_moe_model("qwen2_moe", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    if layout == "shards-with-index":
        hf.save_pretrained(str(tmp_path), max_shard_size="20KB")
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 3
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        save_file({n: t.contiguous() for n, t in hf.state_dict().items()},
                  tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4


def test_mixed_lengths_in_chunks_through_generate_batch_match_transformers(tmp_path):
    """Prompts of 1 to 150 tokens in one generate_batch, prefilled in chunks of 48 tokens
    beside running decodes, on the model with a shared expert (whose steps run layer by
    layer, not through forward_small)."""
    hf = save_moe_model("qwen2_moe", tmp_path)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 160, (n,), generator=gen).tolist()
               for n in (150, 1, 37, 90, 2, 64)]
    want = [hf_greedy(hf, p, 6) for p in prompts]

    async def main():
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), kv_tokens=2048, max_model_len=256,
                          max_prefill_tokens=48, mixed_prefill_tokens=16) as engine:
            outs = await engine.generate_batch(prompts, params, progress=False)
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want


def test_a_sliding_window_no_layer_uses_does_not_cap_the_context(tmp_path):
    """Qwen2-MoE slides only the layers its layer_types marks (the even ones below
    max_window_layers): with max_window_layers 0 none is, and transformers attends over the
    whole sequence, as every layer here does (the context was once capped at the window all
    the same, and a prompt longer than it refused)."""
    config = variant("qwen2_moe", use_sliding_window=True, sliding_window=32,
                     max_window_layers=0)
    assert "sliding_attention" not in config.layer_types
    hf = save_moe_model("qwen2_moe", tmp_path, config)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", max_model_len=256)
    assert loaded.config.sliding_window is None and loaded.config.max_position == 512
    assert [layer.self_attn.window for layer in loaded.model.layers] == [0] * len(hf.model.layers)
    prompts = [list(range(100)), PROMPTS[1]]
    logits = all_position_logits(loaded, prompts)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert (logits - ref).abs().max() < 1e-4


def without_experts(family: str):
    """FAMILIES[family] with num_experts 0 (transformers 5 writes it as num_local_experts)."""
    fields = FAMILIES[family].to_dict()
    fields.pop("num_local_experts", None)
    return type(FAMILIES[family])(**{**fields, "num_experts": 0})


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
def test_qwen_moe_with_no_experts_runs_dense_as_transformers_does(tmp_path, family):
    """num_experts 0: transformers builds every layer with a dense MLP of intermediate_size
    (whatever num_experts_per_tok says); it was refused as num_experts_per_tok out of
    [1, 0]."""
    config = without_experts(family)
    assert config.num_experts == 0 and config.num_experts_per_tok == 2
    hf = save_moe_model(family, tmp_path, config)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.moe is None
    assert loaded.config.num_params() == sum(p.numel() for p in hf.parameters())
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


# every layer dense, with expert fields transformers then never reads (it builds a layer's
# experts only when the layer is not in mlp_only_layers, num_experts > 0 and
# (layer + 1) % decoder_sparse_step == 0; its config classes check only the fields' types)
ALL_DENSE = {
    "qwen3_moe-mlp-only-every-layer": ("qwen3_moe", dict(
        mlp_only_layers=[0, 1, 2], num_experts_per_tok=20, moe_intermediate_size=0,
        decoder_sparse_step=0)),
    "qwen2_moe-mlp-only-every-layer": ("qwen2_moe", dict(
        mlp_only_layers=[2, 0, 1], num_experts_per_tok=9, moe_intermediate_size=0,
        shared_expert_intermediate_size=-1, decoder_sparse_step=-3)),
    "qwen3_moe-sparse-step-past-the-last-layer": ("qwen3_moe", dict(
        mlp_only_layers=[], decoder_sparse_step=4, num_experts_per_tok=17,
        moe_intermediate_size=0)),
    "qwen2_moe-sparse-step-past-the-last-layer": ("qwen2_moe", dict(
        decoder_sparse_step=5, num_experts_per_tok=0, moe_intermediate_size=-1,
        shared_expert_intermediate_size=0)),
}


@pytest.mark.parametrize("name", list(ALL_DENSE))
def test_a_qwen_moe_config_with_every_layer_dense_runs_as_transformers_does(tmp_path, name):
    """A Qwen MoE config.json whose every layer is dense (mlp_only_layers naming them all, or
    a decoder_sparse_step past the last layer) was refused over expert fields no layer
    reads (num_experts_per_tok out of [1, num_experts], moe_intermediate_size 0, ...):
    transformers builds it, and greedy decoding through the Engine gives its ids."""
    family, fields = ALL_DENSE[name]
    hf = save_moe_model(family, tmp_path, variant(family, **fields))
    assert not any(hasattr(layer.mlp, "experts") for layer in hf.model.layers)
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), kv_tokens=1024, max_model_len=256) as engine:
            assert engine.runner.config.moe is None
            assert engine.runner.config.num_params() == sum(p.numel() for p in hf.parameters())
            outs = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want


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


def write_moe_gguf(hf, path: str, per_expert: bool = False, edit=None,
                   expert_width: bool = True, weights_norm: bool | None = None) -> None:
    """Write an HF MoE model as llama.cpp lays it out: experts stacked per projection
    (ffn_*_exps), Mixtral as the "llama" architecture with an expert count and permuted q/k.
    per_expert: one tensor per expert (blk.N.ffn_gate.E), the layout of llama.cpp's Mixtral
    files before April 2024, which llama.cpp still reads. edit(GGUF name, array) -> the
    array to write instead, or (raw bytes, gguf.GGMLQuantizationType) for a quantized
    tensor, or None to leave the tensor out (a damaged file). expert_width False: no
    expert_feed_forward_length key (files converted before llama.cpp wrote it). weights_norm:
    an expert_weights_norm key of that value (None: none, as llama.cpp's converter writes
    these architectures)."""
    c = hf.config
    mixtral = c.model_type == "mixtral"
    arch = "llama" if mixtral else c.model_type.replace("_", "")
    w = gguf_writer(c, path, arch)
    if edit is not None:
        add = w.add_tensor

        def add_edited(name, t):
            if isinstance(t := edit(name, t), tuple):
                add(name, t[0], raw_dtype=t[1])
            elif t is not None:
                add(name, t)

        w.add_tensor = add_edited
    w.add_expert_count(c.num_local_experts if mixtral else c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    if not mixtral and expert_width:
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
    if weights_norm is not None:
        w.add_expert_weights_norm(weights_norm)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.gate": "ffn_gate_inp", "mlp.experts.down_proj": "ffn_down_exps",
             "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
             "mlp.shared_expert.up_proj": "ffn_up_shexp",
             "mlp.shared_expert.down_proj": "ffn_down_shexp",
             "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    for name, t in hf.state_dict().items():
        t = t.float()
        if not name.startswith("model.layers."):
            w.add_tensor({"model.embed_tokens.weight": "token_embd.weight",
                          "model.norm.weight": "output_norm.weight",
                          "lm_head.weight": "output.weight"}[name], t.numpy())
            continue
        _, _, layer, rest = name.split(".", 3)
        suffix = "bias" if rest.endswith(".bias") else "weight"
        module = rest.removesuffix(".weight").removesuffix(".bias")
        if per_expert and module.startswith("mlp.experts."):
            parts = t.chunk(2, dim=1) if module.endswith("gate_up_proj") else (t,)
            for proj, stacked in zip(("gate", "up") if len(parts) == 2 else ("down",), parts):
                for e, one in enumerate(stacked):
                    w.add_tensor(f"blk.{layer}.ffn_{proj}.{e}.weight", one.contiguous().numpy())
            continue
        if module == "mlp.experts.gate_up_proj":  # transformers keeps experts stacked too
            gate, up = t.chunk(2, dim=1)
            w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", gate.contiguous().numpy())
            w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", up.contiguous().numpy())
            continue
        heads = {"self_attn.q_proj": c.num_attention_heads,
                 "self_attn.k_proj": c.num_key_value_heads}.get(module)
        if mixtral and heads:
            half = t.shape[0] // heads // 2
            t = t.reshape(heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)
        w.add_tensor(f"blk.{layer}.{names[module]}.{suffix}", t.contiguous().numpy())
    finish_gguf(w)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "mixtral-per-expert"])
def test_gguf_file_matches_transformers(tmp_path, family):
    family, _, layout = family.partition("-")
    hf = save_moe_model(family, tmp_path / "hf")
    write_moe_gguf(hf, str(tmp_path / "model.gguf"), per_expert=layout == "per-expert")
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.architecture == family
    assert loaded.config.moe.dense_layers == ((1,) if family == "qwen3_moe" else ())
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family, key", [("qwen3_moe", None), ("qwen3_moe", False),
                                         ("qwen2_moe", None), ("qwen2_moe", True)])
def test_a_gguf_routes_as_llama_cpp_runs_its_architecture(tmp_path, caplog, family, key):
    """A GGUF file's top-k renormalisation is its architecture's, as llama.cpp runs it (its
    graphs pass norm_w as a constant: qwen3moe true, qwen2moe false; it reads no
    expert_weights_norm for them, and its converter writes none) and as transformers' GGUF
    loader configures it. A checkpoint whose norm_topk_prob is the other way (a Qwen3-MoE
    of false, a Qwen2-MoE of true) therefore runs from its GGUF file as transformers runs it
    with the architecture's value, not its own, whether the file has no key (as converted)
    or a key saying otherwise: that was followed, so the same file gave other tokens here
    than in llama.cpp. Such a key is warned of."""
    import logging

    from transformers import AutoModelForCausalLM

    own = family == "qwen2_moe"  # the checkpoint's norm_topk_prob: not its architecture's
    save_moe_model(family, tmp_path / "hf", variant(family, norm_topk_prob=own),
                   tokenizer=False)
    refs = {}
    for norm in (True, False):
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32,
                                                  norm_topk_prob=norm).eval()
        with torch.no_grad():
            refs[norm] = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    write_moe_gguf(hf, str(tmp_path / "model.gguf"), weights_norm=key)
    arch = family.replace("_", "")
    # the second load reads the config and parameters the first stored (derived_cache.py):
    # the key was warned of on the first load only
    for load in ("parsing the file", "from the derived cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aiollm.model.weights_gguf"):
            loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32,
                                device="cpu")
        assert loaded.config.moe.norm_topk_prob == (not own)
        warned = [r.getMessage() for r in caplog.records
                  if "expert_weights_norm" in r.getMessage()]
        assert warned == ([] if key is None else [
            f"GGUF metadata {arch}.expert_weights_norm = {key} is ignored: llama.cpp runs "
            f"{arch} with its top-k routing weights {'' if not own else 'not '}renormalised, "
            "whatever the file says, and so does aiollm"]), load
    logits = all_position_logits(loaded, PROMPTS)
    assert (logits - refs[not own]).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), refs[not own].argmax(-1))
    assert (logits - refs[own]).abs().max() > 1e-3  # the test tells the two apart


def test_gguf_with_quantized_stacked_experts_is_close_to_transformers(tmp_path):
    """ffn_*_exps quantized (Q8_0): 3-D tensors of blocks, dequantized into the stacked
    layout expert by expert as llama.cpp stores them."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    def q8(name, t):
        return (quantize(t, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0) \
            if "_exps." in name else t

    hf = save_moe_model("qwen3_moe", tmp_path / "hf")
    write_moe_gguf(hf, str(tmp_path / "model.gguf"), edit=q8)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 0.01  # Q8_0's rounding; a misplaced block is ~1
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_qwen2_moe_gguf_without_its_shared_expert_width_matches_transformers(tmp_path):
    """Qwen2-MoE files converted before llama.cpp wrote expert_shared_feed_forward_length
    lack it: the shared expert was taken as absent and its tensors refused. Its width now
    comes from its tensor, as llama.cpp loads those files."""
    hf = save_moe_model("qwen2_moe", tmp_path / "hf")
    write_moe_gguf(hf, str(tmp_path / "model.gguf"))  # writes no shared-expert width
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.moe.shared_expert_intermediate_size == 48
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "qwen3_moe-dense-first"])
def test_a_gguf_without_its_expert_width_takes_it_from_the_expert_tensors(tmp_path, family):
    """A file without expert_feed_forward_length was read with feed_forward_length, the dense
    MLP's width (80 here, the experts' 32): the loader then refused the expert tensors'
    shapes. The width now comes from ffn_gate_exps, whose shape llama.cpp checks it against,
    not from a dense layer's ffn_gate written before it (dense-first: layer 0 is dense)."""
    family, _, dense_first = family.partition("-")
    config = variant(family, mlp_only_layers=[0]) if dense_first else None
    hf = save_moe_model(family, tmp_path / "hf", config)
    write_moe_gguf(hf, str(tmp_path / "model.gguf"), expert_width=False)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.moe.intermediate_size == 32
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4


def test_a_gguf_whose_expert_width_disagrees_with_its_tensors_names_the_key(tmp_path):
    hf = save_moe_model("qwen3_moe", tmp_path / "hf")
    hf.config.moe_intermediate_size = 40  # the key written; the tensors keep 32
    write_moe_gguf(hf, str(tmp_path / "model.gguf"))
    with pytest.raises(ValueError, match=r"qwen3moe\.expert_feed_forward_length = 40.*32"):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


def test_dummy_weights_build_the_moe_shapes_from_config_alone(tmp_path):
    FAMILIES["qwen2_moe"].save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    mlp = loaded.model.layers[0].mlp
    assert tuple(mlp.experts.gate_up_proj.shape) == (8, 64, 64)
    assert tuple(mlp.shared_expert.gate_up_proj.weight.shape) == (96, 64)
    assert loaded.config.num_params() == sum(p.numel() for p in loaded.model.parameters())
    logits = all_position_logits(loaded, PROMPTS)
    assert torch.isfinite(logits).all()


def test_a_config_only_directory_has_no_tokenizer(tmp_path):
    """transformers builds an empty Qwen tokenizer from config.json alone, which would encode
    every prompt to nothing; a dummy-weights engine falls back to the default tokenizer."""
    FAMILIES["qwen3_moe"].save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("vocab_size", [160, None])
def test_a_tokenizer_larger_than_the_vocabulary_is_warned_of_at_start_up(tmp_path, caplog,
                                                                          vocab_size):
    """--load-format dummy on a config-only directory serves with the default model's
    tokenizer (49,152 tokens); a config of a smaller vocabulary (Mixtral's real one has 32,000)
    then refused each text whose tokens happened to fall past it, one request at a time
    ("prompt token ids must be integers in [0, 160)"), with nothing said at start-up."""
    import logging

    size = len(load_tokenizer(None))
    variant("mixtral", vocab_size=vocab_size or size).save_pretrained(tmp_path)

    async def start():
        async with Engine(str(tmp_path), load_format="dummy", kv_tokens=256,
                          max_model_len=128):
            pass

    with caplog.at_level(logging.WARNING, logger="aiollm.engine.loading"):
        asyncio.run(start())
    warned = [r.getMessage() for r in caplog.records if "tokenizer has" in r.getMessage()]
    if vocab_size is None:
        assert not warned, warned
    else:
        assert warned == [f"the tokenizer has {size} tokens, more than the model's vocabulary "
                          f"of {vocab_size}: a prompt holding a token id of {vocab_size} or "
                          "more is refused; serve the model's own tokenizer (--tokenizer)"]
