"""Gemma 3 text (model_type gemma3_text, and gemma3's language model alone) against
transformers' Gemma3ForCausalLM, CPU fp32.

A tiny random model built here with a fixed seed (test_gemma.save_gemma: random (1 + w)
norms, the per-head q/k norms too): 2 layers, the first sliding with a window of 8 and
rotating by its own base (rope_local_base_freq 100), the second global with rope_theta 1e6 and
linear scaling 4 (as the 4B and larger scale theirs by 8), query_pre_attn_scalar 24; prompts
and generations pass the window. Undoing the local rotary, the q/k norms' 1 + w or the
window moves the logits past the tolerance. Greedy ids and logprobs through `Engine` (batched,
and one request alone: its one-token steps run the fused GEMV layers); a
Gemma3ForConditionalGeneration checkpoint (a tiny SigLIP vision tower beside it) served as
its language model, equal to transformers' Gemma3ForCausalLM on those weights; dummy weights;
transformers' defaults where the config is silent; a multimodal checkpoint's own eos ids;
Gemma 3n, a quantized multimodal checkpoint and one without text_config refused; a bad
value in text_config named there.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch
from transformers import Gemma3TextConfig

from aiollm import Engine, SamplingParams
from aiollm.model import load_model
from aiollm.model.llama import LlamaForCausalLM
from test_gemma import save_gemma
from test_gemma2 import PROMPTS, built_gemma
from test_loader import all_position_logits
from test_moe_model import hf_greedy

GEMMA3_TINY = dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   max_position_embeddings=256, sliding_window=8, query_pre_attn_scalar=24,
                   rope_local_base_freq=100.0, layer_types=["sliding_attention",
                                                            "full_attention"],
                   rope_scaling={"rope_type": "linear", "factor": 4.0})
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return built_gemma(tmp_path_factory, "gemma3", Gemma3TextConfig(**GEMMA3_TINY))


def test_config_reads_gemma3s_fields(gemma3):
    _, _, loaded, _ = gemma3
    cfg = loaded.config
    assert (cfg.architecture, cfg.qk_norm, cfg.sandwich_norms) == ("gemma3_text", True, True)
    assert (cfg.sliding_window, cfg.sliding_layers) == (8, (0,))
    assert (cfg.rope.theta, cfg.rope.type, cfg.rope.factor) == (1e6, "linear", 4.0)
    assert (cfg.rope_local.theta, cfg.rope_local.type) == (100.0, "default")
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    assert cfg.softmax_scale == 24**-0.5
    assert cfg.num_params() == sum(p.numel() for p in loaded.model.parameters())
    q_norm = loaded.model.layers[0].self_attn.q_norm.weight
    assert q_norm.dtype == torch.float32  # 1 + w, as every Gemma norm
    # a context shorter than the window drops the window, not the sliding layer's own table
    short = LlamaForCausalLM(cfg, max_len=8)
    assert short.layers[0].self_attn.window == 0 and short.local_rope_layers == (True, False)


def test_logits_match_transformers_at_every_position(gemma3):
    _, _, loaded, ref = gemma3
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def test_each_gemma3_change_matters_at_this_shape(gemma3):
    _, _, loaded, ref = gemma3
    model = loaded.model
    attn = model.layers[0].self_attn

    def err():
        return (all_position_logits(loaded, PROMPTS) - ref).abs().max()

    model.local_rope_layers = (False, False)  # the global table on the sliding layer
    assert err() > 1e-2
    model.local_rope_layers = (True, False)
    attn.window = 0
    assert err() > 1e-2
    attn.window = 8
    with torch.no_grad():
        attn.k_norm.weight.sub_(1)
        assert err() > 1e-2
        attn.k_norm.weight.add_(1)
    assert err() < 1e-4


def test_greedy_and_logprobs_through_engine_match_transformers(gemma3):
    path, hf, _, _ = gemma3
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=0)

    async def main():
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            together = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
            # alone, each decode step is one token: the fused one-token layers (references)
            assert engine.runner.model.fused_small
            alone = await engine.generate(PROMPTS[0], params)
        return together, alone

    together, alone = asyncio.run(main())
    assert [o.token_ids for o in together] == want and alone.token_ids == want[0]
    prompt = PROMPTS[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt + want[0]])).logits[0], -1)
    want_lp = ref[len(prompt) - 1 : -1].gather(1, torch.tensor(want[0])[:, None])[:, 0]
    for out in (together[0], alone):
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in out.logprobs]), want_lp,
                                   atol=1e-4, rtol=0)


def test_multimodal_checkpoint_serves_its_language_model(tmp_path, gemma3, caplog):
    """A Gemma3ForConditionalGeneration checkpoint (model_type gemma3, a SigLIP tower and
    the projector beside the language model, which transformers saves under
    language_model.model.*): its language model's logits, as transformers'
    Gemma3ForCausalLM computes them on those weights, and a log line saying so."""
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        SiglipVisionConfig,
    )

    _, hf, _, ref = gemma3
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=Gemma3TextConfig(**GEMMA3_TINY), vision_config=vision,
                          mm_tokens_per_image=4, boi_token_index=290, eoi_token_index=291,
                          image_token_index=292)
    torch.manual_seed(0)
    mm = Gemma3ForConditionalGeneration(config).eval()
    mm.model.language_model.load_state_dict(hf.model.state_dict())
    mm.save_pretrained(tmp_path)
    assert isinstance(hf, Gemma3ForCausalLM)
    with caplog.at_level(logging.INFO, logger="aiollm.model.hf_family_fields"):
        loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert "vision tower" in caplog.text and "text alone" in caplog.text
    assert loaded.config.architecture == "gemma3_text"
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def test_dummy_weights_and_transformers_defaults(tmp_path):
    """config.json with Gemma 3's fields left out: transformers' Gemma3TextConfig defaults
    (rope_theta 1e6, rope_local_base_freq 1e4, five sliding layers of six, window 4096,
    query_pre_attn_scalar 256, no soft-caps); dummy weights give finite logits."""
    fields = {k: v for k, v in GEMMA3_TINY.items() if k not in (
        "rope_local_base_freq", "layer_types", "rope_scaling", "sliding_window",
        "query_pre_attn_scalar")}
    Gemma3TextConfig(**{**fields, "num_hidden_layers": 7}).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu",
                        load_format="dummy")
    cfg = loaded.config
    assert (cfg.rope.theta, cfg.rope_local.theta, cfg.sliding_window) == (1e6, 1e4, 4096)
    assert cfg.sliding_layers == (0, 1, 2, 3, 4, 6) and cfg.softmax_scale == 256**-0.5
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    logits = all_position_logits(loaded, PROMPTS)
    assert logits.shape == (sum(map(len, PROMPTS)), 300) and logits.isfinite().all()


def test_prefill_graph_segments_match_transformers(gemma3):
    """The segments rotate each layer by its own table (layer_cos_sin)."""
    from test_gemma2 import greedy_through_prefill_segments

    path, hf, _, _ = gemma3
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    assert greedy_through_prefill_segments(path, PROMPTS, NEW_TOKENS) == want


def test_a_quantized_multimodal_checkpoint_is_refused():
    """quantization_config sits on a Gemma3ForConditionalGeneration's own config, not on
    its text_config: it is refused as any quantized checkpoint is."""
    from transformers import Gemma3Config

    from aiollm.model.hf_config import config_from_hf

    config = Gemma3Config(text_config=Gemma3TextConfig(**GEMMA3_TINY),
                          quantization_config={"quant_method": "fp8"})
    with pytest.raises(ValueError, match="quantized checkpoints are not supported .* 'fp8'"):
        config_from_hf(config)


def test_a_multimodal_checkpoint_stops_at_its_own_eos_ids():
    """Without generation_config.json, a Gemma3ForConditionalGeneration's end-of-turn id
    (106) is in its own config's eos_token_id, not its text_config's (1 by default): as
    transformers' generate reads it."""
    from transformers import Gemma3Config

    from aiollm.model.hf_config import config_from_hf

    config = Gemma3Config(text_config=Gemma3TextConfig(**GEMMA3_TINY), eos_token_id=[1, 106])
    assert config.text_config.eos_token_id == 1
    assert list(config_from_hf(config).eos_token_ids) == [1, 106]


def test_a_multimodal_config_without_text_config_is_refused_naming_it(tmp_path):
    """model_type gemma3 with its language model's fields at the top level and no
    text_config: transformers would size the model by Gemma3TextConfig's defaults (vocab
    262,208), not by those fields, so it is refused, naming text_config and gemma3_text."""
    import json

    fields = {**GEMMA3_TINY, "model_type": "gemma3",
              "architectures": ["Gemma3ForConditionalGeneration"]}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="model_type gemma3 .* no text_config.*gemma3_text"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_a_multimodal_configs_bad_field_is_named_under_text_config(tmp_path):
    """A bad value in a Gemma3ForConditionalGeneration's text_config is named there."""
    import json

    text = {**GEMMA3_TINY, "model_type": "gemma3_text", "query_pre_attn_scalar": -2}
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": text}))
    with pytest.raises(ValueError, match=r"text_config\.query_pre_attn_scalar must be a number"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
