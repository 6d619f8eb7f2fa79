"""Phi-3 (Phi3ForCausalLM: Phi-3-mini, Phi-3.5-mini, Phi-4, Phi-4-mini) against transformers.

Tiny random Phi3 models saved as HF safetensors: the plain one, Phi-4-mini's partial rotary
(partial_rotary_factor 0.75) and LongRoPE with short and long factors (with a partial rotary
too). Logits at every position and greedy ids through Engine must be transformers' for prompts
within the original context; past it, the rotary table takes the long factors from
original_max_position on (rope._longrope_rows), which this checks row by row against
transformers' own rotary embedding (prompts longer than the original context:
test_longrope_prompts.py). Tensor-parallel ranks must get their own q, k and v heads
and gate and up rows out of the fused checkpoint tensors.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import Phi3Config
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from test_loader import all_position_logits, save_random_hf_model
from test_moe_model import hf_greedy
from test_prefill_graphs import save_any_tokenizer

from aiollm import Engine, SamplingParams
from aiollm.model import load_model, load_tokenizer
from aiollm.model import parallel

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=0, tie_word_embeddings=False)  # head_dim 16
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.25, 1.7, 2.3, 3.1, 4.0],
            "long_factor": [1.5, 2.5, 4.5, 8.0, 13.0, 21.0]}
FAMILIES = {
    "plain": Phi3Config(**TINY),
    "partial-rotary": Phi3Config(**TINY, partial_rotary_factor=0.75),
    # Phi-4-mini's shape of it: 12 of 16 dimensions rotated, tied embeddings
    "longrope-partial": Phi3Config(**{**TINY, "tie_word_embeddings": True},
                                   partial_rotary_factor=0.75,
                                   original_max_position_embeddings=32,
                                   rope_scaling=LONGROPE),
}
# within longrope-partial's original context of 32, with NEW_TOKENS
PROMPTS = [[3, 17, 99, 4, 150, 23, 7], [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2], [5]]
NEW_TOKENS = 10


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_random_hf_model(FAMILIES[request.param], str(path))
    return request.param, str(path), hf


def test_logits_match_transformers_at_every_position(saved):
    _, path, hf = saved
    loaded = load_model(path, dtype=torch.float32, device="cpu")
    assert loaded.config.architecture == "phi3"
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def test_greedy_ids_through_engine_match_transformers(saved):
    name, path, hf = saved
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    load_tokenizer(None).save_pretrained(path)  # any tokenizer: the prompts are ids

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(path, kv_tokens=1024, max_model_len=256) as engine:
            outs = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want, name


def test_longrope_rotary_rows_are_transformers_short_then_long_sets(tmp_path):
    """Rows below original_max_position are the cos/sin transformers uses for a sequence
    that fits the original context (short factors); rows from it on, those it uses for one
    that does not (long factors), attention factor included on both; the dimensions past
    the rotated ones pass through (cos 1, sin 0)."""
    config = FAMILIES["longrope-partial"]
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    cache = loaded.model.cos_sin_cache  # [positions, 16]: cos of 8 pairs, then sin
    assert loaded.config.rope.rotary_dim == 12
    rotary = Phi3RotaryEmbedding(config)
    x = torch.zeros(1, dtype=torch.float32)
    short_cos, short_sin = rotary(x, torch.arange(32)[None])  # seq_len 32: short factors
    long_cos, long_sin = rotary(x, torch.arange(64)[None])  # seq_len 64: long factors
    assert rotary.attention_scaling == pytest.approx(loaded.config.rope.attention_factor)
    assert torch.equal(cache[:32, :6], short_cos[0, :, :6])
    assert torch.equal(cache[:32, 8:14], short_sin[0, :, :6])
    assert torch.equal(cache[32:64, :6], long_cos[0, 32:, :6])
    assert torch.equal(cache[32:64, 8:14], long_sin[0, 32:, :6])
    assert not torch.equal(cache[:32, :6], long_cos[0, :32, :6])  # the sets differ
    assert (cache[:, 6:8] == 1).all() and (cache[:, 14:] == 0).all()


def test_longrope_decode_past_the_original_context_is_transformers_cached_decode(tmp_path):
    """A prompt within original_max_position_embeddings (32) decoding past it: transformers'
    cached decode keeps the prompt's short-factor keys and rotates each later token by the
    long factors, which is what the per-position table computes; greedy ids must agree
    (larger random weights, so that the argmax depends on the frequencies: all-short or
    all-long tables give other ids)."""
    hf = save_random_hf_model(FAMILIES["longrope-partial"], str(tmp_path))
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    hf.save_pretrained(str(tmp_path))
    load_tokenizer(None).save_pretrained(str(tmp_path))
    prompt = [(11 * i + 5) % 160 for i in range(25)]
    want = hf_greedy(hf, prompt, 20)  # positions 25..44: the original context is passed

    async def main():
        params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), kv_tokens=1024, max_model_len=256) as engine:
            return (await engine.generate(prompt, params)).token_ids

    assert asyncio.run(main()) == want


@pytest.mark.parametrize("name", list(FAMILIES))
def test_dummy_load_runs(tmp_path, name):
    FAMILIES[name].save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    logits = all_position_logits(loaded, PROMPTS)
    assert logits.shape == (sum(map(len, PROMPTS)), 160) and logits.isfinite().all()


@pytest.mark.parametrize("name", ["plain", "partial-rotary"])
def test_tensor_parallel_ranks_get_their_own_heads_and_rows(tmp_path, name):
    """Each of 2 ranks holds its own q, k and v heads (and its own gate and up rows) of the
    fused qkv_proj (gate_up_proj), in our layout: the rank's q heads, then its k heads, then
    its v heads; with a partial rotary, q and k in the head order of rotary_head_order."""
    from aiollm.model.weights_layout import rotary_head_order

    config = FAMILIES[name]
    hf = save_random_hf_model(config, str(tmp_path))
    d, q, kv, inter = 16, 64, 32, 96
    attn, mlp = hf.model.layers[1].self_attn, hf.model.layers[1].mlp
    wq, wk, wv = attn.qkv_proj.weight.detach().split([q, kv, kv])
    gate, up = mlp.gate_up_proj.weight.detach().chunk(2)
    order = rotary_head_order(d, 12) if name == "partial-rotary" else torch.arange(d)

    def heads(w, first, count):  # rows of heads [first, first + count), q/k head order
        return w.view(-1, d, 64)[first:first + count][:, order].reshape(-1, 64)

    for rank in range(2):
        parallel.set_current(SimpleNamespace(rank=rank, size=2))
        try:
            loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
        finally:
            parallel.set_current(None)
        layer = loaded.model.layers[1]
        want = torch.cat([heads(wq, 2 * rank, 2), heads(wk, rank, 1),
                          wv.view(-1, d, 64)[rank].reshape(-1, 64)])
        assert torch.equal(layer.self_attn.qkv_proj.weight, want)
        rows = slice(rank * inter // 2, (rank + 1) * inter // 2)
        assert torch.equal(layer.mlp.gate_up_proj.weight, torch.cat([gate[rows], up[rows]]))
        assert torch.equal(layer.self_attn.o_proj.weight,
                           attn.o_proj.weight.detach()[:, rank * 32:(rank + 1) * 32])


@pytest.mark.parametrize("module, rows", [("self_attn.qkv_proj", 64),
                                          ("mlp.gate_up_proj", 96)])
def test_a_fused_tensor_of_one_ranks_size_is_refused_under_tensor_parallel(tmp_path, module,
                                                                          rows):
    """A fused tensor whose rows are not q + 2 kv (2 intermediate) cannot be split, and must
    be refused on every rank: one of exactly a rank's rows (qkv 64 = 2 q + 1 k + 1 v heads of
    16; gate_up 96 = 2 x 48) was taken whole as that rank's part under 2-way TP."""
    from safetensors.torch import load_file, save_file

    save_random_hf_model(FAMILIES["plain"], str(tmp_path))
    tensors = load_file(tmp_path / "model.safetensors")
    name = f"model.layers.1.{module}.weight"
    tensors[name] = tensors[name][:rows].clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for rank in range(2):
        parallel.set_current(SimpleNamespace(rank=rank, size=2))
        try:
            with pytest.raises(ValueError, match=rf"{name}' has shape \({rows}, 64\), the "
                                                 rf"model expects \({rows * 2}, 64\)"):
                load_model(str(tmp_path), dtype=torch.float32, device="cpu")
        finally:
            parallel.set_current(None)


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_act="gelu_new"), "hidden_act 'gelu_new'"),
    # 16 x 0.5625 = 9 dimensions: rotate_half would pair the wrong ones
    (dict(partial_rotary_factor=0.5625), "partial_rotary_factor 0.5625 rotates 9"),
], ids=["gelu", "odd-rotary-dim"])
def test_phi3_fields_that_change_the_math_are_refused(tmp_path, fields, message):
    Phi3Config(**TINY, **fields).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_a_fused_tensor_of_another_size_or_missing_is_named_as_the_checkpoint_has_it(
        tmp_path):
    """Messages name the checkpoint's fused tensor, once, and the fields that size it."""
    from safetensors.torch import load_file, save_file

    save_random_hf_model(FAMILIES["plain"], str(tmp_path))
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "num_key_value_heads": 4}))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.qkv_proj.weight' has "
                                         r"shape \(128, 64\), the model expects \(192, 64\) "
                                         r"\(config.json's num_attention_heads, "
                                         "num_key_value_heads, head_dim, hidden_size"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps(fields))
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.self_attn.qkv_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing weights: "
                                         r"model.layers.1.self_attn.qkv_proj.weight$"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


def test_phi3_128k_config_as_published_loads_its_longrope(tmp_path):
    """Phi-3-mini-128k's config.json as first published: rope_scaling type "su" (transformers
    reads it as longrope), original_max_position_embeddings beside it, a sliding window
    past the context (kept, never reached); a rope type Phi-3 does not take is refused naming
    it."""
    fields = {**FAMILIES["plain"].to_dict(), "original_max_position_embeddings": 32,
              "sliding_window": 262144, "rope_theta": 10000.0,
              "rope_scaling": {"type": "su", "short_factor": [1.0] * 8,
                               "long_factor": [2.0] * 8}}
    fields.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps(fields))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    rope = loaded.config.rope
    assert (rope.type, rope.original_max_position, rope.long_factor) == ("longrope", 32,
                                                                         (2.0,) * 8)
    assert rope.attention_factor == pytest.approx((1 + math.log(8) / math.log(32)) ** 0.5)
    assert (loaded.config.max_position, loaded.config.sliding_window) == (256, 262144)
    fields["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="type field must be one of .*got linear"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


@pytest.mark.parametrize("key,value", [("long_factor", None), ("short_factor", 2.0),
                                       ("long_factor", {"0": 1.0})], ids=str)
def test_a_longrope_factor_list_that_is_no_list_is_refused_naming_it(tmp_path, key, value):
    """A longrope short_factor/long_factor of null or a single number failed in transformers
    as "object of type 'NoneType' has no len()", naming no field."""
    fields = {**FAMILIES["longrope-partial"].to_dict()}
    fields["rope_parameters"] = {**fields["rope_parameters"], key: value}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=f"rope_parameters .*{key} must be a list of numbers"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_sliding_window_slides_every_layer_past_it(tmp_path):
    """Phi-3-mini-4k's sliding_window (2047 of 4096) slides every layer, as transformers'
    Phi-3 masks it: the context stays max_position_embeddings, and logits of prompts longer
    than an 8-token window are transformers' at every position."""
    config = Phi3Config(**TINY, sliding_window=8)
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert (loaded.config.max_position, loaded.config.sliding_window) == (256, 8)
    assert [loaded.config.layer_window(i) for i in range(2)] == [8, 8]
    prompts = [list(range(3, 40)), [5, 9] * 11]
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
        unwindowed = copy.deepcopy(hf)
        unwindowed.config.sliding_window = None
        whole = torch.cat([unwindowed(torch.tensor([p])).logits[0] for p in prompts])
    assert (whole - ref).abs().max() > 1e-2  # transformers does slide
    assert (all_position_logits(loaded, prompts) - ref).abs().max() < 1e-4


@pytest.mark.gpu
def test_longrope_partial_phi3_on_gpu_matches_cpu_and_transformers(tmp_path):
    """The GPU kernels (fused rotary + KV store, the decode GEMV path, CUDA graphs) on a
    partial-rotary LongRoPE Phi-3 with decisive random weights: fp32 greedy ids the CPU's,
    past the original context too (a 60-token prompt); bf16 top-1 on our own greedy output
    as close to transformers' fp32 as transformers' bf16 is (test_gpu_model's measure)."""
    hf = save_random_hf_model(FAMILIES["longrope-partial"], str(tmp_path))
    with torch.no_grad():  # larger weights: the argmax then changes from token to token
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    hf.save_pretrained(str(tmp_path))
    save_any_tokenizer(str(tmp_path))
    prompts = PROMPTS + [[(7 * i + 3) % 160 for i in range(60)]]

    async def greedy(device, dtype):
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(tmp_path), device=device, dtype=dtype, kv_tokens=1024,
                          max_model_len=256) as engine:
            outs = await asyncio.gather(*(engine.generate(p, params) for p in prompts))
        return [o.token_ids for o in outs]

    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, gpu = asyncio.run(greedy("cpu", "float32")), asyncio.run(greedy("cuda", "float32"))
    assert sum(a == b for a, b in zip(cpu, gpu)) >= len(prompts) - 1, (cpu, gpu)
    within = PROMPTS  # where transformers' rotary is ours
    ours = asyncio.run(greedy("cuda", "bfloat16"))[:len(within)]
    tops = {"ours": torch.cat([torch.tensor(o) for o in ours])}
    with torch.no_grad():
        for name, dtype in (("hf32", torch.float32), ("hf16", torch.bfloat16)):
            model = copy.deepcopy(hf).to("cuda", dtype)
            tops[name] = torch.cat([
                model(torch.tensor([p + o], device="cuda")).logits[0, len(p) - 1:-1]
                .argmax(-1).cpu() for p, o in zip(within, ours)])
    ours_vs_32 = (tops["ours"] == tops["hf32"]).float().mean().item()
    hf16_vs_32 = (tops["hf16"] == tops["hf32"]).float().mean().item()
    assert ours_vs_32 >= min(hf16_vs_32, 0.9), (ours_vs_32, hf16_vs_32)
