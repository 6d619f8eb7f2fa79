"""Gemma 2 (model_type gemma2) against transformers' Gemma2ForCausalLM, CPU fp32.

A tiny random model built here with a fixed seed (test_gemma.save_gemma: (1 + w) norms of
random w, every projection moving the logits): 2 layers, the first sliding with a window of
8 (transformers' rule for a config without layer_types: every other layer from the first),
prompts and generations longer than the window, query_pre_attn_scalar 24 (not head_dim 16),
and soft-caps small enough to change the logits (attention 2, final 3): turning either off,
or the window, or the sandwich norms' weights, moves the logits past the tolerance. Greedy ids
through `Engine` (batched, and one request alone: its one-token steps run the fused GEMV
layers, gemma_layers.SandwichDecoderLayer.forward_small), logprobs of generated and prompt
tokens against transformers' log_softmax of its capped logits, dummy weights, and the config
fields refused.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from transformers import Gemma2Config

from aiollm import Engine, SamplingParams
from aiollm.model import load_model
from test_gemma import hf_logits, save_gemma
from test_loader import all_position_logits
from test_moe_model import hf_greedy

GEMMA2_TINY = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   max_position_embeddings=256, sliding_window=8, query_pre_attn_scalar=24,
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
PROMPTS = [[3, 17, 99, 4, 150, 23, 7, 8, 9, 10, 11, 12, 13, 14],
           [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2], [5]]
NEW_TOKENS = 10


def built_gemma(tmp_path_factory, name: str, config) -> tuple:
    """A tiny Gemma 2/3 of transformers' `config` saved (with a tokenizer) in a fresh
    directory `name`: (its path, transformers' model, ours loaded in float32 on the CPU,
    transformers' logits [sum of PROMPTS' lengths, vocab] at every position of PROMPTS)."""
    path = tmp_path_factory.mktemp(name)
    hf = save_gemma(config, path, tokenizer=True)
    loaded = load_model(str(path), dtype=torch.float32, device="cpu")
    return path, hf, loaded, hf_logits(hf, PROMPTS)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return built_gemma(tmp_path_factory, "gemma2", Gemma2Config(**GEMMA2_TINY))


def test_config_reads_gemma2s_fields(gemma2):
    _, _, loaded, _ = gemma2
    cfg = loaded.config
    assert (cfg.architecture, cfg.hidden_act) == ("gemma2", "gelu_pytorch_tanh")
    assert (cfg.sliding_window, cfg.sliding_layers) == (8, (0,))
    assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (2.0, 3.0)
    assert cfg.softmax_scale == 24**-0.5 and cfg.rms_norm_unit_offset and cfg.sandwich_norms
    assert cfg.num_params() == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.model.fused_small  # one-token steps: the fused GEMV layers


def test_logits_match_transformers_at_every_position(gemma2):
    _, _, loaded, ref = gemma2
    logits = all_position_logits(loaded, PROMPTS)
    assert (logits - ref).abs().max() < 1e-4
    assert logits.abs().max() < 3.0  # capped


def test_each_gemma2_change_matters_at_this_shape(gemma2):
    """Undoing one of the soft-caps, the window, the query_pre_attn_scalar or the extra
    norms moves the logits far past the tolerance: the test above can fail."""
    _, _, loaded, ref = gemma2
    model = loaded.model
    attn = [layer.self_attn for layer in model.layers]

    def off(obj, name, value):
        old = getattr(obj, name)
        setattr(obj, name, value)
        err = (all_position_logits(loaded, PROMPTS) - ref).abs().max()
        setattr(obj, name, old)
        assert err > 1e-2, name

    off(model, "final_softcap", None)
    off(attn[0], "softcap", None)
    off(attn[1], "softcap", None)
    off(attn[0], "window", 0)
    off(attn[0], "sm_scale", 16**-0.5)
    w = model.layers[1].post_feedforward_layernorm.weight
    off(model.layers[1].post_feedforward_layernorm, "weight", torch.nn.Parameter(w - 1))
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def test_greedy_and_logprobs_through_engine_match_transformers(gemma2):
    path, hf, _, _ = gemma2
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=2,
                            prompt_logprobs=1)

    async def main():
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            together = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
            alone = [await engine.generate(p, params) for p in PROMPTS[:2]]
        return together, alone

    together, alone = asyncio.run(main())
    assert [o.token_ids for o in together] == want
    assert [o.token_ids for o in alone] == want[:2]
    # the batched steps run the layered path, one request's decode steps the fused one
    for prompt, out in [*zip(PROMPTS, together), *zip(PROMPTS, alone)]:
        ids = prompt + out.token_ids
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
        n = len(prompt)
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        torch.testing.assert_close(got, ref[n - 1 : -1].gather(
            1, torch.tensor(out.token_ids)[:, None])[:, 0], atol=1e-4, rtol=0)
        assert [t for t, _ in out.logprobs[3].top] == ref[n + 2].topk(2).indices.tolist()
        if n > 1:
            got = torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:]])
            want_p = ref[torch.arange(n - 1), torch.tensor(prompt[1:])]
            torch.testing.assert_close(got, want_p, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dummy_weights_build_gemma2_from_config_alone(tmp_path, dtype):
    Gemma2Config(**GEMMA2_TINY).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=dtype, device="cpu", load_format="dummy")
    model = loaded.model
    norm = model.layers[0].pre_feedforward_layernorm.weight
    assert norm.dtype == torch.float32 and bool((norm == 1).all())
    logits = all_position_logits(loaded, PROMPTS)
    assert logits.shape == (sum(map(len, PROMPTS)), 160) and logits.isfinite().all()


def test_layer_types_and_transformers_defaults(tmp_path):
    """layer_types as given (here: only the second layer slides); without the soft-cap
    fields, transformers' Gemma2Config defaults (50 and 30) as it runs them; null turns a
    cap off."""
    fields = {**GEMMA2_TINY, "layer_types": ["full_attention", "sliding_attention"]}
    del fields["attn_logit_softcapping"], fields["final_logit_softcapping"]
    Gemma2Config(**fields).save_pretrained(tmp_path)
    cfg = load_model(str(tmp_path), dtype=torch.float32, device="cpu",
                     load_format="dummy").config
    assert (cfg.sliding_layers, cfg.attn_logit_softcapping,
            cfg.final_logit_softcapping) == ((1,), 50.0, 30.0)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "final_logit_softcapping": None}))
    cfg = load_model(str(tmp_path), dtype=torch.float32, device="cpu",
                     load_format="dummy").config
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping == 50.0


@pytest.mark.parametrize("edit, message", [
    ({"attn_logit_softcapping": 0.0}, "attn_logit_softcapping must be a number > 0"),
    ({"final_logit_softcapping": -30.0}, "final_logit_softcapping must be a number > 0"),
    ({"hidden_activation": "relu"}, "hidden_activation 'relu' is not supported .* "
                                    "hidden_activation must be 'silu' or 'gelu_pytorch_tanh'"),
    ({"architectures": ["GemmaForCausalLM"]}, r"architectures \['GemmaForCausalLM'\] is not "
                                              "supported with model_type 'gemma2'"),
    ({"sliding_window": None}, "sliding_window is null"),
], ids=["zero-cap", "negative-cap", "relu", "gemma1-class", "null-window"])
def test_gemma2_fields_that_change_the_math_are_refused(tmp_path, edit, message):
    Gemma2Config(**GEMMA2_TINY).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **edit}))
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def greedy_through_prefill_segments(path, prompts, new_tokens: int) -> list[list[int]]:
    """Greedy ids through `Engine` with its prefill steps run as the prefill graphs' segments
    (LlamaForCausalLM.segment, eagerly: PrefillGraphs without capture), which cut each layer
    at its attention and finish it through DecoderLayer.mlp_block: the sandwich layer's."""
    from aiollm.engine.prefill_graphs import PrefillGraphs

    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    steps = []

    async def run():
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            runner = engine.runner
            pg = runner.prefill_graphs = PrefillGraphs(runner.model, engine.kv_pool,
                                                       max_tokens=64, capture=False)
            real = pg.forward

            def spy(batch):
                steps.append(batch.num_tokens)
                return real(batch)
            pg.forward = spy
            outs = await asyncio.gather(*(engine.generate(p, params) for p in prompts))
        return [o.token_ids for o in outs]

    ids = asyncio.run(run())
    assert steps and max(steps) > 1
    return ids


def test_prefill_graph_segments_match_transformers(gemma2):
    path, hf, _, _ = gemma2
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    assert greedy_through_prefill_segments(path, PROMPTS, NEW_TOKENS) == want
