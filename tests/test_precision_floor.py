"""bench/precision_floor.py's emulator: a faithful Llama forward, whose rounding points do
round. The bf16 floor it reports in bench/README.md rests on both."""

from __future__ import annotations

import pytest
import torch

from conftest import load_bench

floor = load_bench("precision_floor")


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16},
                      tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (37,)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    return model, ids, ref


def test_unrounded_forward_matches_transformers(tiny):
    model, ids, ref = tiny
    with torch.no_grad():
        out = floor.forward(model.state_dict(), model.config, ids, set())
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("variant", sorted(floor.VARIANTS))
def test_each_variant_rounds_and_stays_close(tiny, variant):
    model, ids, ref = tiny
    with torch.no_grad():
        out = floor.forward(model.state_dict(), model.config, ids, floor.VARIANTS[variant])
    err = ((out - ref).norm() / ref.norm()).item()
    # bf16 keeps 8 significant bits: every rounding point moves the logits, none by much
    assert 1e-6 < err < 3e-2, err
