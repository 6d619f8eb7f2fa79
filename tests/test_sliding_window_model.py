"""Sliding-window models (Mistral, Qwen2 with some layers sliding) past their window, against
transformers: CPU fp32, and on the GPU (marked `gpu`) against the CPU path.

Tiny random models with windows of 8 and 12 tokens and prompts up to 45 tokens, so that the
prefill, the decode steps and a chunked prefill (16-token chunks, mixed with decodes) all
attend past the window. transformers slides in both its eager and sdpa attention for these
configs (checked below: the same weights without the window give other logits).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

from aiollm import Engine, SamplingParams
from aiollm.model import load_model
from test_loader import all_position_logits, save_random_hf_model
from test_moe_model import hf_greedy
from test_prefill_graphs import save_any_tokenizer

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
CONFIGS = {
    "mistral": MistralConfig(**TINY, num_hidden_layers=2, sliding_window=8),
    # layers 1 and 2 slide (from max_window_layers on), layer 0 attends over everything
    "qwen2": Qwen2Config(**TINY, num_hidden_layers=3, use_sliding_window=True,
                         sliding_window=12, max_window_layers=1),
}
SLIDING = {"mistral": (8, None), "qwen2": (12, (1, 2))}
NEW_TOKENS = 10


def prompts_of(lengths, seed=1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 160, (n,), generator=gen).tolist() for n in lengths]


PROMPTS = prompts_of((45, 9, 1, 30))  # all_position_logits takes up to 4


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family)
    hf = save_random_hf_model(CONFIGS[family], str(path))
    save_any_tokenizer(str(path))  # any tokenizer: the prompts are ids
    return family, path, hf


def hf_logits(hf, prompts, attn: str = "sdpa") -> torch.Tensor:
    hf.config._attn_implementation = attn
    with torch.no_grad():
        return torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])


def test_config_reads_the_window_and_keeps_the_context(model):
    family, path, _ = model
    loaded = load_model(str(path), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert (cfg.sliding_window, cfg.sliding_layers) == SLIDING[family]
    assert cfg.max_position == 256 and loaded.max_model_len == 256
    windows = [layer.self_attn.window for layer in loaded.model.layers]
    assert windows == {"mistral": [8, 8], "qwen2": [0, 12, 12]}[family]


def test_transformers_slides(model):
    """The premise of the comparisons: transformers' eager and sdpa paths agree with each
    other and differ from the same weights attending over the whole sequence."""
    family, path, hf = model
    sdpa, eager = hf_logits(hf, PROMPTS[:1]), hf_logits(hf, PROMPTS[:1], "eager")
    assert (sdpa - eager).abs().max() < 1e-4
    fields = {**CONFIGS[family].to_dict(), "sliding_window": None, "layer_types": None,
              "use_sliding_window": False}
    whole = AutoModelForCausalLM.from_config(type(CONFIGS[family])(**fields)).eval()
    whole.load_state_dict(hf.state_dict())
    assert (hf_logits(whole, PROMPTS[:1]) - sdpa).abs().max() > 1e-2


def test_logits_match_transformers_at_every_position(model):
    family, path, hf = model
    loaded = load_model(str(path), dtype=torch.float32, device="cpu")
    logits = all_position_logits(loaded, PROMPTS)
    for attn in ("sdpa", "eager"):
        ref = hf_logits(hf, PROMPTS, attn)
        assert (logits - ref).abs().max() < 1e-4, attn
        assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_greedy_through_the_engine_matches_transformers(model):
    """Whole prefills, then chunked ones (16-token chunks, steps mixing a chunk with
    decodes); every request decodes past the window (transformers' generate loop with its
    sliding-window cache, hf_greedy)."""
    family, path, hf = model
    hf.config._attn_implementation = "sdpa"
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]

    async def main(**opts):
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(path), kv_tokens=1024, max_model_len=256, **opts) as engine:
            outs = await engine.generate_batch(PROMPTS, params, progress=False)
        return [o.token_ids for o in outs]

    assert asyncio.run(main()) == want
    assert asyncio.run(main(max_prefill_tokens=16, mixed_prefill_tokens=8,
                            prefix_cache=False)) == want


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_the_cpu_path_past_the_window(model, dtype, monkeypatch):
    """The Triton kernels with their windows (extend, decode with its splits, the fused
    attention + o_proj of batch-1 decode steps, CUDA graphs) against transformers on the
    CPU: fp32 greedy ids equal, bf16 first tokens mostly the same."""
    family, path, hf = model
    longer = PROMPTS + prompts_of((200, 130), seed=2)
    hf.config._attn_implementation = "sdpa"
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in longer]
    if dtype == "float32":
        torch.backends.cuda.matmul.allow_tf32 = False
    from aiollm.kernels import attention_oproj

    monkeypatch.setattr(attention_oproj, "ENABLED", True)  # batch-1 decodes take it

    async def main(prompts, **opts):
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(path), device="cuda", dtype=dtype, kv_tokens=4096,
                          max_model_len=256, **opts) as engine:
            outs = await engine.generate_batch(prompts, params, progress=False)
        return [o.token_ids for o in outs]

    runs = [asyncio.run(main(longer)),
            asyncio.run(main(longer, max_prefill_tokens=32, mixed_prefill_tokens=16,
                             prefix_cache=False)),
            [asyncio.run(main([p]))[0] for p in longer[:2]]]  # batch-1 decode steps
    if dtype == "float32":
        assert runs == [want, want, want[:2]]
    else:  # bf16 rounding may flip a near-tie, and the rest of that request follows it
        firsts = [got[0] for run in runs[:2] for got in run]
        assert sum(a == b for a, b in zip(firsts, [w[0] for w in want] * 2)) >= 0.8 * len(firsts)


def test_sliding_layers_without_a_window_are_refused_naming_the_fields(tmp_path):
    """layer_types marking sliding layers while use_sliding_window is false leaves
    transformers' Qwen2 without a window for them (its mask fails): refused by name."""
    fields = {**CONFIGS["qwen2"].to_dict(), "use_sliding_window": False,
              "layer_types": ["full_attention", "sliding_attention", "full_attention"]}
    Qwen2Config(**fields).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config.json: layer_types marks layers \[1\] "
                                         "sliding_attention but use_sliding_window is false"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


@pytest.mark.parametrize("family", ["qwen2", "qwen2_moe"])
def test_sliding_layers_with_a_null_window_are_refused_naming_it(tmp_path, family):
    """use_sliding_window true but sliding_window null: transformers' sliding-window mask
    fails for want of a window. The refusal names the null sliding_window, not a false
    use_sliding_window."""
    from transformers import Qwen2MoeConfig

    cls = {"qwen2": Qwen2Config, "qwen2_moe": Qwen2MoeConfig}[family]
    fields = {**TINY, "num_hidden_layers": 3, "use_sliding_window": True,
              "sliding_window": None,
              "layer_types": ["full_attention", "sliding_attention", "full_attention"]}
    cls(**fields).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config.json: layer_types marks layers \[1\] "
                                         "sliding_attention but sliding_window is null"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_qwen3_with_explicit_layer_types_matches_transformers(tmp_path):
    """Qwen3 (q/k norms) with layer_types given in config.json, not derived from
    max_window_layers: layers 0 and 2 slide over 6 tokens, layer 1 does not. Logits at every
    position of prompts up to 45 tokens against transformers' (sdpa and eager)."""
    from transformers import Qwen3Config

    config = Qwen3Config(**TINY, num_hidden_layers=3, head_dim=16, use_sliding_window=True,
                         sliding_window=6, max_window_layers=3,
                         layer_types=["sliding_attention", "full_attention",
                                      "sliding_attention"])
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert [layer.self_attn.window for layer in loaded.model.layers] == [6, 0, 6]
    logits = all_position_logits(loaded, PROMPTS)
    for attn in ("sdpa", "eager"):
        ref = hf_logits(hf, PROMPTS, attn)
        assert (logits - ref).abs().max() < 1e-4, attn
