"""IBM Granite 3 (GraniteForCausalLM) and GraniteMoe against transformers, CPU fp32.

Tiny random models built here with a fixed seed and saved as HF safetensors, their four
scalars far from 1 (embedding_multiplier 12, residual_multiplier 0.22, attention_multiplier
1/64, logits_scaling 8; GraniteMoe's 6, as its real models', not a power of two) so that a
path that misses one fails: logits at every position, greedy ids and each token's logprob
through `Engine` (batched steps and the one-token fused step), prompt logprobs, the same
models from a GGUF file (llama.cpp's keys for the scalars), dummy weights from config.json
alone, and the config values and GGUF files aiollm refuses.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GraniteConfig, GraniteMoeConfig

from aiollm import Engine, SamplingParams
from aiollm.model import load_model, load_tokenizer
from test_loader import all_position_logits, finish_gguf, gguf_writer

SCALARS = dict(embedding_multiplier=12.0, residual_multiplier=0.22,
               attention_multiplier=0.015625, logits_scaling=8.0)
TINY = dict(vocab_size=160, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            rms_norm_eps=1e-5, **SCALARS)
FAMILIES = {
    "granite": GraniteConfig(**TINY, intermediate_size=96),
    # an o_proj bias, which residual_multiplier scales with the weight; lm_head apart
    "granite-bias-untied": GraniteConfig(**{**TINY, "tie_word_embeddings": False},
                                         intermediate_size=96, attention_bias=True),
    # logits_scaling 6, as granite-3.x 1b-a400m and 3b-a800m: 1/6 is inexact in binary
    "granitemoe": GraniteMoeConfig(**{**TINY, "logits_scaling": 6.0}, intermediate_size=32,
                                   num_local_experts=8, num_experts_per_tok=2),
}
PROMPTS = [[3, 17, 99, 4, 150, 23, 7], [42, 8, 1, 77, 159, 0, 12, 5, 66, 31, 2], [5],
           [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]
NEW_TOKENS = 10
# weight scales at which each missed scalar but logits_scaling (caught by the logits and
# logprobs) flips most argmaxes, and greedy decoding does not repeat the prompt's last token
EMBED_STD, LINEAR_STD = 0.15, 0.5


def save_granite(family: str, path, tokenizer: bool = True) -> torch.nn.Module:
    """A random model of FAMILIES[family] saved in `path` (with the default model's tokenizer
    unless `tokenizer` is False). Weights larger than the default init (std 0.02), routers
    decisive (near ties between experts flip with the order of a sum): with the default
    init the tied embedding, times 12, decides every token alone."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[family]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif "router" in name:
                p.normal_(0, 1.0)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, EMBED_STD)
            else:
                p.normal_(0, LINEAR_STD)
    model.save_pretrained(str(path))
    if tokenizer:
        load_tokenizer(None).save_pretrained(str(path))  # any tokenizer: the prompts are ids
    return model


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy ids and the log_softmax of its (scaled) logits at each: the whole
    sequence run again at each step (no KV cache, whose argument transformers 5 renamed:
    `cache=` is ignored by the GPU machine's older 5.x, which then saw the last token
    alone)."""
    seq, out, logprobs = torch.tensor([ids]), [], []
    with torch.no_grad():
        for _ in range(n):
            res = model(seq)
            lp = torch.log_softmax(res.logits[0, -1].float(), dim=-1)
            out.append(int(lp.argmax()))
            logprobs.append(float(lp[out[-1]]))
            seq = torch.cat([seq, torch.tensor([[out[-1]]])], dim=1)
    return out, logprobs


@pytest.fixture(scope="module", params=["granite", "granitemoe"])
def granite(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_granite(request.param, path)
    return request.param, path, hf


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_at_every_position(tmp_path, family):
    hf = save_granite(family, tmp_path, tokenizer=False)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert cfg.architecture == family.split("-")[0]
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.attention_multiplier,
            cfg.logits_scaling) == (12.0, 0.22, 0.015625, FAMILIES[family].logits_scaling)
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_greedy_ids_and_logprobs_through_engine_match_transformers(granite):
    """Several requests in one batch (the layered path), then each alone (one-token decode
    steps: the fused GEMV path, kernels/gemv.py): transformers' ids, and each token's
    logprob its log_softmax of the logits divided by logits_scaling."""
    family, path, hf = granite
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in PROMPTS]
    assert len({t for ids, _ in want for t in ids}) > 10  # not degenerate

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True,
                                logprobs=0)
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            together = await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS))
            alone = [await engine.generate(p, params) for p in PROMPTS[:2]]
        return together, alone

    together, alone = asyncio.run(main())
    for outs in (together, alone):
        for out, (ids, logprobs) in zip(outs, want):
            assert out.token_ids == ids, family
            got = torch.tensor([lp.logprob for lp in out.logprobs])
            torch.testing.assert_close(got, torch.tensor(logprobs), atol=1e-4, rtol=0)


def test_prompt_logprobs_match_transformers(granite):
    family, path, hf = granite
    ids = PROMPTS[1] + PROMPTS[3]

    async def main():
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            return await engine.generate(ids, SamplingParams(max_tokens=0, prompt_logprobs=2))

    out = asyncio.run(main())
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    got = torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:]])
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    for j in (1, len(ids) - 1):
        assert [t for t, _ in out.prompt_logprobs[j].top] == ref[j - 1].topk(2).indices.tolist()


_GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
               "block_sparse_moe.router": "ffn_gate_inp",
               "block_sparse_moe.experts.down_proj": "ffn_down_exps"}


def write_granite_gguf(hf, path: str, scalars: dict | None = None, shared_expert: int = 0,
                       rope_finetuned: bool | None = None) -> None:
    """Write a Granite / GraniteMoe model as llama.cpp's converter does: its scalars as
    {arch}.embedding_scale, residual_scale, logit_scale and attention.scale (`scalars`: those
    keys' values instead, a None leaves the key out), q/k rows permuted as Llama's, the
    experts' gate and up apart (ffn_gate_exps, ffn_up_exps), float32 tensors. shared_expert:
    the width of a GraniteMoeShared shared expert (random, *_shexp tensors and
    expert_shared_feed_forward_length), rope_finetuned: {arch}.rope.scaling.finetuned."""
    c = hf.config
    arch = c.model_type
    w = gguf_writer(c, path, arch)
    w.add_eos_token_id(7)
    if rope_finetuned is not None:
        w.add_bool(f"{arch}.rope.scaling.finetuned", rope_finetuned)
    if shared_expert:
        w.add_uint32(f"{arch}.expert_shared_feed_forward_length", shared_expert)
        for i in range(c.num_hidden_layers):
            for kind, shape in (("gate", (shared_expert, c.hidden_size)),
                                ("up", (shared_expert, c.hidden_size)),
                                ("down", (c.hidden_size, shared_expert))):
                w.add_tensor(f"blk.{i}.ffn_{kind}_shexp.weight", torch.randn(shape).numpy())
    keys = {"embedding_scale": c.embedding_multiplier, "residual_scale": c.residual_multiplier,
            "logit_scale": c.logits_scaling, "attention.scale": c.attention_multiplier,
            **(scalars or {})}
    for key, value in keys.items():
        if value is not None:
            w.add_float32(f"{arch}.{key}", value)
    if arch == "granitemoe":
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
    for name, t in hf.state_dict().items():
        t = t.float()
        if not name.startswith("model.layers."):
            if name == "lm_head.weight" and c.tie_word_embeddings:
                continue
            w.add_tensor({"model.embed_tokens.weight": "token_embd.weight",
                          "model.norm.weight": "output_norm.weight",
                          "lm_head.weight": "output.weight"}[name], t.numpy())
            continue
        _, _, layer, rest = name.split(".", 3)
        module, suffix = rest.rsplit(".", 1) if rest.endswith((".weight", ".bias")) \
            else (rest, "weight")
        if module == "block_sparse_moe.experts.gate_up_proj":
            gate, up = t.chunk(2, dim=1)
            w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", gate.contiguous().numpy())
            w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", up.contiguous().numpy())
            continue
        heads = {"self_attn.q_proj": c.num_attention_heads,
                 "self_attn.k_proj": c.num_key_value_heads}.get(module)
        if heads:
            half = t.shape[0] // heads // 2
            t = t.reshape(heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)
        w.add_tensor(f"blk.{layer}.{_GGUF_NAMES[module]}.{suffix}", t.contiguous().numpy())
    finish_gguf(w)


@pytest.mark.parametrize("family", ["granite", "granitemoe"])
def test_gguf_file_matches_transformers(tmp_path, family):
    hf = save_granite(family, tmp_path / "hf", tokenizer=False)
    write_granite_gguf(hf, str(tmp_path / "model.gguf"))
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert (cfg.architecture, cfg.tie_word_embeddings) == (family, True)
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.attention_multiplier,
            cfg.logits_scaling) == (12.0, pytest.approx(0.22), 0.015625,
                                    FAMILIES[family].logits_scaling)
    logits = all_position_logits(loaded, PROMPTS)
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (logits - ref).abs().max() < 1e-4
    # a second load maps the parameters the first stored (derived_cache.py): scaled once
    again = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert torch.equal(all_position_logits(again, PROMPTS), logits)


def test_gguf_without_the_scalar_keys_runs_as_llama_cpp_does(tmp_path):
    """llama.cpp's Granite graph scales nothing for an absent (or 0) embedding_scale or
    residual_scale, and takes 1/sqrt(head_dim) for an absent attention.scale
    (transformers' attention_multiplier default is 1.0): a file without those keys is the
    model with multipliers 1 and the usual softmax scale."""
    hf = save_granite("granite", tmp_path / "hf", tokenizer=False)
    write_granite_gguf(hf, str(tmp_path / "model.gguf"),
                       {"embedding_scale": None, "residual_scale": 0.0, "logit_scale": 2.0,
                        "attention.scale": None})
    cfg = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu").config
    assert (cfg.embedding_multiplier, cfg.residual_multiplier, cfg.attention_multiplier,
            cfg.logits_scaling) == (1.0, 1.0, None, 2.0)
    assert cfg.softmax_scale == cfg.head_dim**-0.5


@pytest.mark.parametrize("family, kwargs, says", [
    # llama.cpp's Granite loaders require logit_scale (src/models/granite.cpp and
    # granite-moe.cpp: get_key without `false`) and divide the logits by it: without it,
    # or at 0, llama.cpp refuses the file or returns inf; a 1.0 here was a silent guess
    ("granite", dict(scalars={"logit_scale": None}), "no 'granite.logit_scale'"),
    ("granitemoe", dict(scalars={"logit_scale": 0.0}), "granitemoe.logit_scale must not"),
    # GraniteMoeShared (and Granite 4's attention-only MoE models), which llama.cpp's
    # converter writes as granitemoe: its shared expert is added ungated, which aiollm's
    # shared expert (Qwen2-MoE's, sigmoid-gated) is not; the loader's message said only
    # qwen2_moe has one and sent the user to check general.architecture
    ("granitemoe", dict(shared_expert=16), "GraniteMoeShared"),
    # llama.cpp's Granite graph runs no rotary when rope.scaling.finetuned is false
    ("granite", dict(rope_finetuned=False), "granite.rope.scaling.finetuned"),
])
def test_gguf_granite_files_aiollm_cannot_run_as_llama_cpp_does_are_refused(
        tmp_path, family, kwargs, says):
    hf = save_granite(family, tmp_path / "hf", tokenizer=False)
    write_granite_gguf(hf, str(tmp_path / "model.gguf"), **kwargs)
    with pytest.raises(ValueError, match=says):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


def test_gguf_rope_finetuned_true_is_the_model(tmp_path):
    """Granite 4's attention-only files carry rope.scaling.finetuned true (the converter's
    GraniteHybridModel writes it): the same model as without the key."""
    hf = save_granite("granite", tmp_path / "hf", tokenizer=False)
    write_granite_gguf(hf, str(tmp_path / "model.gguf"), rope_finetuned=True)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["granite", "granitemoe"])
def test_dummy_weights_build_the_shapes_from_config_alone(tmp_path, family):
    FAMILIES[family].save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    assert loaded.config.num_params() == sum(p.numel() for p in loaded.model.parameters())
    if family == "granitemoe":
        assert tuple(loaded.model.layers[0].mlp.experts.gate_up_proj.shape) == (8, 64, 64)
    # the scalars folded into the random weights (granite_scales.py): the final norm's
    # ones divided by logits_scaling
    assert torch.equal(loaded.model.norm.weight,
                       torch.full((64,), 1 / FAMILIES[family].logits_scaling))
    assert torch.isfinite(all_position_logits(loaded, PROMPTS)).all()


@pytest.mark.parametrize("field, value, says", [
    ("mlp_bias", True, "mlp_bias"),
    ("logits_scaling", None, "logits_scaling"),
    ("residual_multiplier", None, "residual_multiplier"),
    # no Granite has a scale of 0 or below (the embeddings, layers or attention scores
    # vanish or flip sign): a config with one is broken, not a model to serve
    ("logits_scaling", 0, "config.json: logits_scaling must be > 0, got 0"),
    ("logits_scaling", -8.0, "logits_scaling must be > 0, got -8.0"),
    ("embedding_multiplier", 0, "embedding_multiplier must be > 0, got 0"),
    ("residual_multiplier", -0.22, "residual_multiplier must be > 0, got -0.22"),
    ("attention_multiplier", 0.0, "attention_multiplier must be > 0, got 0.0"),
    ("num_experts_per_tok", None, "num_experts_per_tok must be an integer"),
    ("num_local_experts", None, "num_local_experts must be an integer"),
])
def test_config_values_aiollm_cannot_run_are_refused_by_name(tmp_path, field, value, says):
    family = "granitemoe" if field != "mlp_bias" else "granite"
    d = FAMILIES[family].to_dict()
    d[field] = value
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=says):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


@pytest.mark.parametrize("family", ["granite", "granitemoe"])
def test_two_ranks_match_transformers(tmp_path, monkeypatch, family):
    """Tensor parallelism over two CPU ranks (gloo): the scalars folded into each rank's
    part of o_proj / down_proj (an expert's too), the tied LM head split by vocabulary
    (vocab-parallel logits, the final norm's 1/logits_scaling on every rank): transformers'
    greedy ids and logprobs."""
    import tempfile

    from test_tensor_parallel import _save_tokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    hf = save_granite(family, tmp_path / "hf", tokenizer=False)
    _save_tokenizer(str(tmp_path / "hf"))
    want = [hf_greedy(hf, p, 6) for p in PROMPTS[:2]]

    async def main():
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)
        async with Engine(str(tmp_path / "hf"), device="cpu", tensor_parallel_size=2,
                          kv_tokens=1024, max_model_len=256) as engine:
            return await asyncio.gather(*(engine.generate(p, params) for p in PROMPTS[:2]))

    for out, (ids, logprobs) in zip(asyncio.run(main()), want):
        assert out.token_ids == ids
        got = torch.tensor([lp.logprob for lp in out.logprobs])
        torch.testing.assert_close(got, torch.tensor(logprobs), atol=1e-4, rtol=0)


def test_granitemoe_tensors_under_either_set_of_names(tmp_path):
    """GraniteMoe's experts as transformers saves them (block_sparse_moe.input_linear,
    output_linear, router.layer) and as its state dict names them (experts.gate_up_proj,
    experts.down_proj, router): the same model. A tensor missing is named as the checkpoint
    names it."""
    from safetensors.torch import load_file, save_file

    hf = save_granite("granitemoe", tmp_path / "saved", tokenizer=False)
    saved = load_model(str(tmp_path / "saved"), dtype=torch.float32, device="cpu")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "config.json").write_text((tmp_path / "saved" / "config.json")
                                                    .read_text())
    save_file({n: t.contiguous() for n, t in hf.state_dict().items() if n != "lm_head.weight"},
              str(tmp_path / "state" / "model.safetensors"), metadata={"format": "pt"})
    state = load_model(str(tmp_path / "state"), dtype=torch.float32, device="cpu")
    assert torch.equal(all_position_logits(state, PROMPTS), all_position_logits(saved, PROMPTS))

    path = tmp_path / "saved" / "model.safetensors"
    tensors = load_file(str(path))
    for name in ("model.layers.1.block_sparse_moe.router.layer.weight",
                 "model.layers.2.block_sparse_moe.input_linear.weight"):
        save_file({n: t for n, t in tensors.items() if n != name}, str(path),
                  metadata={"format": "pt"})
        with pytest.raises(ValueError, match=f"missing weights: {name}"):
            load_model(str(tmp_path / "saved"), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("family", ["granite", "granitemoe"])
def test_sliding_window_fields_in_a_granite_config_slide_nothing(tmp_path, family):
    """transformers' Granite and GraniteMoe never slide (no window in their masks): a
    config.json carrying Qwen2's sliding_window, use_sliding_window and max_window_layers
    (a conversion's leftovers) slid every layer here, and logits past the window differed
    from transformers' (by ~2 on these weights)."""
    hf = save_granite(family, tmp_path, tokenizer=False)
    fields = json.loads((tmp_path / "config.json").read_text())
    fields.update(sliding_window=4, use_sliding_window=True, max_window_layers=0)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.sliding_window is None
    with torch.no_grad():
        ref = torch.cat([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4
