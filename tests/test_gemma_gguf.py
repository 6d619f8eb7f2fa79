"""Gemma 2 and 3 GGUF files, written here as llama.cpp's converter writes them (norm weights
as 1 + w, the extra norms as post_attention_norm / ffn_norm / post_ffw_norm, the soft-caps
and the window as metadata, Gemma 3's linear rope scaling as rope.scaling.* and its optional
final soft-cap), against transformers on the safetensors model they came from, CPU fp32.

llama.cpp reads no query_pre_attn_scalar (its softmax scale is 1 / sqrt(head_dim) but for
the 27B models) nor layer_types nor rope_local_base_freq (Gemma 2 slides every other layer,
Gemma 3 five of six, Gemma 3's sliding layers rotate by base 10,000): the models here use
those values, so file and checkpoint are the same model. Gemma 3 has 6 layers, so one is
global.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import Gemma2Config, Gemma3TextConfig

from aiollm.model import load_model
from test_gemma import hf_logits, save_gemma
from test_gemma2 import PROMPTS
from test_loader import all_position_logits, finish_gguf, gguf_tensor_name, gguf_writer

SMALL = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
             sliding_window=8, query_pre_attn_scalar=16)
CONFIGS = {
    "gemma2": Gemma2Config(**SMALL, num_hidden_layers=2, attn_logit_softcapping=2.0,
                           final_logit_softcapping=3.0),
    # a final soft-cap, which llama.cpp reads from gemma3 files too (none by default)
    "gemma3": Gemma3TextConfig(**SMALL, num_hidden_layers=6, rope_local_base_freq=10000.0,
                               rope_scaling={"rope_type": "linear", "factor": 4.0},
                               final_logit_softcapping=3.0),
}
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm",
               "post_attention_layernorm": "post_attention_norm",
               "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm", "mlp.gate_proj": "ffn_gate",
               "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gemma_gguf(hf, path: str) -> None:
    import gguf

    c = hf.config
    arch = "gemma3" if c.model_type == "gemma3_text" else "gemma2"
    theta = (c.rope_parameters["full_attention"] if arch == "gemma3"
             else c.rope_parameters)["rope_theta"]
    shape = SimpleNamespace(**{k: getattr(c, k) for k in (
        "num_hidden_layers", "max_position_embeddings", "hidden_size", "intermediate_size",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps")},
        rope_parameters={"rope_theta": theta})
    w = gguf_writer(shape, path, arch)
    w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    else:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = t.float() + (1 if name.endswith("norm.weight") else 0)
        w.add_tensor(gguf_tensor_name(name, LAYER_NAMES), t.contiguous().numpy())
    finish_gguf(w)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gguf_file_matches_transformers(tmp_path, family):
    hf = save_gemma(CONFIGS[family], tmp_path / "hf")
    write_gemma_gguf(hf, str(tmp_path / "model.gguf"))
    loaded = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    cfg = loaded.config
    from_hf = load_model(str(tmp_path / "hf"), dtype=torch.float32, device="cpu").config
    for name in ("architecture", "sliding_window", "sliding_layers", "query_pre_attn_scalar",
                 "attn_logit_softcapping", "final_logit_softcapping", "rope_local", "qk_norm",
                 "hidden_act"):
        assert getattr(cfg, name) == getattr(from_hf, name), name
    assert (cfg.rope.theta, cfg.rope.type, cfg.rope.factor) == (
        from_hf.rope.theta, from_hf.rope.type, from_hf.rope.factor)
    ref = hf_logits(hf, PROMPTS)
    assert (all_position_logits(loaded, PROMPTS) - ref).abs().max() < 1e-4
    # a second load reads the config the first derived (derived_cache.py): the same
    again = load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
    assert again.config == cfg
