"""Gemma 1 (model_type gemma) against transformers' GemmaForCausalLM, CPU fp32.

Tiny random models built here with a fixed seed: hidden 48 (sqrt(48) is no power of 2, so
the embedding scale rounds), head_dim 16 apart from hidden / heads (as gemma-7b's 256 x 16
against 3,072), tied embeddings, 1 KV head (gemma-2b) and 2. Norm weights are random
offsets w around 0 (the model multiplies by 1 + w). Logits at every position, greedy ids
through `Engine` (batched, and one request alone: its decode steps run the fused one-token
GEMVs), a llama.cpp-style GGUF file, dummy weights, and the refusals (Gemma 3n, relabelled
checkpoints, activations no kernel computes).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen3Config

from aiollm import Engine, SamplingParams
from aiollm.model import load_model, load_tokenizer
from test_loader import (
    PROMPTS,
    TINY,
    all_position_logits,
    finish_gguf,
    gguf_tensor_name,
    gguf_writer,
    save_random_hf_model,
)
from test_moe_model import hf_greedy

GEMMA_TINY = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, head_dim=16, max_position_embeddings=256)
FAMILIES = {
    "gemma-1kv": GemmaConfig(**GEMMA_TINY, num_key_value_heads=1),
    "gemma-2kv-bias": GemmaConfig(**GEMMA_TINY, num_key_value_heads=2, attention_bias=True,
                                  rms_norm_eps=1e-5),
}
ENGINE_PROMPTS = PROMPTS + [[5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]
NEW_TOKENS = 10


def save_gemma(config, path, tokenizer: bool = False):
    """A random Gemma of `config` saved in `path`: norm weights w ~ 0.3 N(0, 1) (the model's
    multiplier is 1 + w), the embedding at std 0.3 (x sqrt(48) keeps activations moderate),
    projections at std 1 / sqrt(fan-in), so that every block moves the logits."""
    hf = save_random_hf_model(config, str(path))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:  # each block's output of the stream's size, not 2% of it
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    hf.save_pretrained(str(path))
    if tokenizer:
        load_tokenizer(None).save_pretrained(str(path))  # any tokenizer: the prompts are ids
    return hf


def hf_logits(hf, prompts) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_at_every_position(tmp_path, family):
    hf = save_gemma(FAMILIES[family], tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert (cfg.architecture, cfg.hidden_act) == ("gemma", "gelu_pytorch_tanh")
    assert cfg.tie_word_embeddings and cfg.head_dim == 16
    assert cfg.qkv_bias == cfg.o_bias == ("bias" in family)
    logits = all_position_logits(loaded, PROMPTS)
    ref = hf_logits(hf, PROMPTS)
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_without_the_gemma_numerics_the_logits_differ(tmp_path):
    """Each of the three Gemma changes matters at this shape: undoing one (the embedding
    scale, the GELU, the 1 of 1 + w) moves the logits far past the tolerance above."""
    from aiollm.kernels import silu_and_mul

    hf = save_gemma(FAMILIES["gemma-1kv"], tmp_path)
    ref = hf_logits(hf, PROMPTS)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    model = loaded.model
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4
    model.embed_scale = None
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() > 1e-2
    model.embed_scale = 48**0.5
    gelu = model.layers[0].mlp.act_and_mul
    for layer in model.layers:
        layer.mlp.act_and_mul = silu_and_mul
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() > 1e-2
    for layer in model.layers:
        layer.mlp.act_and_mul = gelu
    with torch.no_grad():
        model.norm.weight.sub_(1)
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() > 1e-2


def test_norm_weights_are_one_plus_w_in_float32_whatever_the_run_dtype(tmp_path):
    """In bfloat16 1 + w would round (8 bits of mantissa: 1 + 0.01 is 1.0078125): the
    model keeps its norms in float32, holding 1 + w of w in the run dtype, which is what
    transformers' GemmaRMSNorm computes (1.0 + weight.float()) on the weights it loaded."""
    hf = save_gemma(FAMILIES["gemma-1kv"], tmp_path)
    w = hf.model.layers[0].input_layernorm.weight.detach()
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(tmp_path), dtype=dtype, device="cpu").model
        norm = model.layers[0].input_layernorm.weight
        assert norm.dtype == torch.float32 and model.norm.weight.dtype == torch.float32
        assert torch.equal(norm, w.to(dtype).float() + 1)
        assert model.embed_tokens.weight.dtype == dtype


def test_bf16_embedding_scale_is_rounded_as_transformers_rounds_it(tmp_path):
    """gemma-7b's sqrt(3,072) = 55.43 is 55.5 in bfloat16: transformers multiplies by that;
    hidden 48's 6.928 is 6.9375. Our bf16 embeddings equal transformers' bf16 ones."""
    hf = save_gemma(FAMILIES["gemma-1kv"], tmp_path)
    ids = torch.tensor(PROMPTS[1])
    model = load_model(str(tmp_path), dtype=torch.bfloat16, device="cpu").model
    with torch.no_grad():
        ref = hf.to(torch.bfloat16).model.embed_tokens(ids[None])[0]
    assert torch.equal(model.embed(ids), ref)
    assert torch.tensor(3072**0.5).to(torch.bfloat16).item() == 55.5


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma")
    hf = save_gemma(FAMILIES["gemma-2kv-bias"], path, tokenizer=True)
    want = [hf_greedy(hf, p, NEW_TOKENS) for p in ENGINE_PROMPTS]
    return path, want


def test_greedy_through_engine_matches_transformers(gemma_dir):
    path, want = gemma_dir

    async def main():
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        async with Engine(str(path), kv_tokens=1024, max_model_len=256) as engine:
            together = await asyncio.gather(*(engine.generate(p, params)
                                              for p in ENGINE_PROMPTS))
            # alone, each decode step is one token: the fused GEMV layers (their references)
            assert engine.runner.model.fused_small
            alone = [await engine.generate(p, params) for p in ENGINE_PROMPTS[:2]]
        return [o.token_ids for o in together], [o.token_ids for o in alone]

    together, alone = asyncio.run(main())
    assert together == want
    assert alone == want[:2]


def write_gemma_gguf(hf, path: str) -> None:
    """An HF Gemma written as llama.cpp's converter writes one: architecture gemma, q/k not
    permuted, norm weights stored as 1 + w (float32), no output.weight (tied)."""
    c = hf.config
    w = gguf_writer(c, path, "gemma")
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in hf.state_dict().items():
        t = t.float() + (1 if name.endswith("norm.weight") else 0)
        if name == "lm_head.weight":
            continue
        w.add_tensor(gguf_tensor_name(name, names), t.contiguous().numpy())
    finish_gguf(w)


def test_gguf_file_matches_transformers(tmp_path):
    hf = save_gemma(FAMILIES["gemma-1kv"], tmp_path / "hf")
    write_gemma_gguf(hf, str(tmp_path / "model.gguf"))
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    assert (cfg.architecture, cfg.hidden_act, cfg.rms_norm_unit_offset) == (
        "gemma", "gelu_pytorch_tanh", True)
    assert cfg.tie_word_embeddings and cfg.head_dim == 16
    ref = hf_logits(hf, PROMPTS)
    logits = all_position_logits(loaded, PROMPTS)
    assert (logits - ref).abs().max() < 1e-4
    # a second load reads the parameters the first derived (derived_cache.py): the same
    again = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert again.config == cfg
    assert torch.equal(all_position_logits(again, PROMPTS), logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dummy_weights_build_gemma_from_config_alone(tmp_path, dtype):
    """--load-format dummy: config.json alone; norms 1 (w = 0, transformers' init), float32."""
    FAMILIES["gemma-1kv"].save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=dtype, device="cpu", load_format="dummy")
    model = loaded.model
    assert model.norm.weight.dtype == torch.float32 and bool((model.norm.weight == 1).all())
    assert model.embed_tokens.weight.dtype == dtype
    logits = all_position_logits(loaded, PROMPTS)
    assert logits.shape == (sum(map(len, PROMPTS)), 160) and logits.isfinite().all()


def test_legacy_gelu_is_the_tanh_approximation_as_transformers_reads_it(tmp_path):
    """The first Gemma releases say hidden_act "gelu" (Gemma 1.1's beside hidden_activation
    "gelu_pytorch_tanh", which transformers 5 no longer reads): transformers' GemmaConfig
    runs it as gelu_pytorch_tanh, and so do we (config.json edited as those files are)."""
    hf = save_gemma(FAMILIES["gemma-1kv"], tmp_path)
    with open(tmp_path / "config.json") as f:
        fields = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**fields, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}, f)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.hidden_act == "gelu_pytorch_tanh"
    assert (all_position_logits(loaded, PROMPTS) - hf_logits(hf, PROMPTS)).abs().max() < 1e-4


@pytest.mark.parametrize("config", [
    LlamaConfig(**TINY, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=False),
    MistralConfig(**TINY, hidden_act="gelu_pytorch_tanh", sliding_window=None),
    Qwen3Config(**TINY, hidden_act="gelu_pytorch_tanh", head_dim=16),
], ids=["llama", "mistral", "qwen3"])
def test_gelu_tanh_in_a_llama_family_mlp_matches_transformers(tmp_path, config):
    """transformers' Llama, Mistral and Qwen MLPs apply ACT2FN[hidden_act]: with the tanh GELU
    they run as Gemma's MLP does, and so do ours (they were refused)."""
    hf = save_random_hf_model(config, str(tmp_path))
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu")
    assert loaded.config.hidden_act == "gelu_pytorch_tanh"
    assert not loaded.config.rms_norm_unit_offset and not loaded.config.scale_embeddings
    assert (all_position_logits(loaded, PROMPTS) - hf_logits(hf, PROMPTS)).abs().max() < 1e-4


@pytest.mark.parametrize("config, field", [
    # transformers builds the class of the model_type: a Gemma checkpoint relabelled llama
    # (or a Llama one relabelled gemma) would run without its family's numerics
    (GemmaConfig(**GEMMA_TINY, architectures=["LlamaForCausalLM"]),
     r"architectures \['LlamaForCausalLM'\] is not supported with model_type 'gemma' "
     r"\(supported: GemmaForCausalLM\)"),
    (GemmaConfig(**GEMMA_TINY, hidden_act="relu"), "hidden_act 'relu'"),
    (GemmaConfig(**GEMMA_TINY, use_bidirectional_attention=True),
     "use_bidirectional_attention"),
], ids=["llama-class", "relu", "bidirectional"])
def test_gemma_fields_that_change_the_math_are_refused(tmp_path, config, field):
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_gemma3n_text_is_refused_naming_what_it_needs(tmp_path):
    """Gemma 3n's text model alone (model_type gemma3n_text, as Gemma3nForCausalLM saves it)
    is refused as Gemma 3n is, not with the generic list of supported model types."""
    from transformers import Gemma3nTextConfig

    Gemma3nTextConfig(vocab_size=160, hidden_size=48, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gemma3n_text' is not supported: .*AltUp"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")


def test_a_sliding_window_field_leaves_gemmas_context_whole(tmp_path):
    """transformers' Gemma attends over the whole sequence whatever config.json says of a
    sliding_window (GemmaConfig has no such field): the context is not capped at one."""
    config = GemmaConfig(**GEMMA_TINY, num_key_value_heads=1)
    config.sliding_window = 64
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32, device="cpu", load_format="dummy")
    assert loaded.config.sliding_window is None and loaded.config.max_position == 256


def test_an_untied_config_over_a_checkpoint_without_lm_head_names_the_field(tmp_path):
    """Gemma's checkpoints hold no lm_head.weight (tied). A config.json saying
    tie_word_embeddings false over one (a hand-edited or converted config) was refused as
    "missing weights: lm_head.weight" alone, not saying which field decides it (transformers
    would initialize a random head)."""
    save_gemma(FAMILIES["gemma-1kv"], tmp_path)
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match=r"missing weights: lm_head.weight \(config.json's "
                                         r"tie_word_embeddings is false"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
