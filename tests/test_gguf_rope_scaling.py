"""A GGUF file's rotary scaling read as llama.cpp reads it: rope.scaling.type defaults to
linear, the factor may be the 2023 key rope.scale_linear, and type none or no factor scales
nothing. The reference is transformers' model of that scaling on the same weights."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import Qwen2Config

from aiollm.model import RopeConfig, load_model
from test_loader import TINY, all_position_logits, save_random_hf_model, write_gguf

LINEAR_4 = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
# long enough for the scaled and unscaled rotary to give different logits
PROMPTS = [[(7 * i + 3) % 160 for i in range(120)]]


def fp16_model(rope_parameters: dict, path: str):
    """A random qwen2 of `rope_parameters` whose matrices hold fp16 values (a GGUF's)."""
    hf = save_random_hf_model(Qwen2Config(**TINY, rope_parameters=rope_parameters,
                                          tie_word_embeddings=False), path)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    return hf


@pytest.mark.parametrize("keys", [
    {"qwen2.rope.scaling.factor": 4.0},  # no type: llama.cpp's default is linear
    {"qwen2.rope.scale_linear": 4.0},  # the key of files converted in 2023
    {"qwen2.rope.scaling.type": "linear", "qwen2.rope.scale_linear": 4.0},
])
def test_a_linear_factor_without_its_type_or_under_the_old_key_scales(tmp_path, keys):
    """Both were read as no scaling: the model served with the wrong positions."""
    hf = fp16_model(LINEAR_4, str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata=keys)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.rope == RopeConfig(theta=10000.0, type="linear", factor=4.0)
    with torch.no_grad():
        ref = hf(torch.tensor(PROMPTS)).logits[0]
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("keys", [
    {"qwen2.rope.scaling.type": "none", "qwen2.rope.scaling.factor": 4.0},
    {"qwen2.rope.scaling.type": "linear"},  # no factor: llama.cpp scales by 1
    {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 1.0},
])
def test_type_none_or_no_factor_scales_nothing(tmp_path, keys):
    """Type linear without a factor was refused (the factor required); llama.cpp runs all
    three unscaled."""
    hf = fp16_model({"rope_type": "default", "rope_theta": 10000.0}, str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata=keys)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.rope == RopeConfig(theta=10000.0)
    with torch.no_grad():
        ref = hf(torch.tensor(PROMPTS)).logits[0]
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4


def test_a_linear_factor_scales_on_top_of_rope_freqs_divisors():
    """llama.cpp passes a file's rope_freqs divisors and its linear factor to one rotary op,
    which applies both; the divisors alone were applied here."""
    from aiollm.model.rope import inv_freq

    divisors = (1.0, 2.0, 8.0, 8.0)
    plain = inv_freq(RopeConfig(theta=500.0), 8)
    both = inv_freq(RopeConfig(theta=500.0, type="linear", factor=4.0, freq_factors=divisors), 8)
    assert torch.equal(both, plain / torch.tensor(divisors) / 4.0)


@pytest.mark.parametrize("keys, says", [
    # llama.cpp knows none, linear, yarn and longrope, and stops at any other name (its
    # GGML_ASSERT), a factor or not: 'Linear' or a typo was served unscaled here
    ({"qwen2.rope.scaling.type": "Linear"}, "rope scaling 'Linear' is not supported"),
    ({"qwen2.rope.scaling.type": "dynamic"}, "rope scaling 'dynamic' is not supported"),
    # a factor that is no number of positions: every rotation NaN, or none at all
    ({"qwen2.rope.scaling.factor": float("nan")}, "rope.scaling.factor must be positive"),
    ({"qwen2.rope.scale_linear": float("inf")}, "rope.scale_linear must be positive"),
    ({"qwen2.rope.scaling.factor": -2.0}, "rope.scaling.factor must be positive"),
])
def test_a_scaling_llama_cpp_refuses_or_a_factor_of_no_meaning_is_refused(tmp_path, keys,
                                                                          says):
    from gguf import GGUFReader

    from aiollm.model.weights_gguf import config_from_gguf

    hf = fp16_model({"rope_type": "default", "rope_theta": 10000.0}, str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata=keys)
    with pytest.raises(ValueError, match=re.escape(says)):
        config_from_gguf(GGUFReader(str(tmp_path / "model.gguf")), [])


@pytest.mark.parametrize("keys, rope", [
    ({"qwen2.rope.scaling.factor": 4.0, "qwen2.rope.scaling.attn_factor": 0.5},
     RopeConfig(theta=10000.0, type="linear", factor=4.0, attention_factor=0.5)),
    ({"qwen2.rope.scaling.type": "none", "qwen2.rope.scaling.attn_factor": 1.25},
     RopeConfig(theta=10000.0, attention_factor=1.25)),
])
def test_the_files_attn_factor_scales_cos_and_sin_as_llama_cpp_does(tmp_path, keys, rope):
    """llama.cpp multiplies the rotary's cos and sin by rope.scaling.attn_factor whatever
    the scaling type (llama-context.cpp: yarn_attn_factor *= the file's); it was ignored."""
    hf = fp16_model(LINEAR_4, str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata=keys)
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert loaded.config.rope == rope


def test_an_attn_factor_of_no_meaning_is_refused(tmp_path):
    from gguf import GGUFReader

    from aiollm.model.weights_gguf import config_from_gguf

    hf = fp16_model(LINEAR_4, str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"),
               metadata={"qwen2.rope.scaling.attn_factor": float("nan")})
    with pytest.raises(ValueError, match="rope.scaling.attn_factor must be positive"):
        config_from_gguf(GGUFReader(str(tmp_path / "model.gguf")), [])
