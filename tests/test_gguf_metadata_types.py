"""GGUF metadata read as a number that holds text (a hand-edited or foreign-written file) is
refused naming the key: int() of it said only "invalid literal for int()"."""

from __future__ import annotations

import pytest
import torch

from aiollm.model import load_model
from test_loader import FAMILIES, save_random_hf_model, write_gguf


@pytest.mark.parametrize("key, value", [
    ("qwen2.context_length", "lots"),
    ("qwen2.rope.freq_base", "1e6"),
    ("qwen2.attention.head_count_kv", ["2", "2"]),
])
def test_text_where_a_number_belongs_names_the_key(tmp_path, key, value):
    hf = save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"], str(tmp_path / "hf"))
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata={key: value})
    with pytest.raises(ValueError, match=rf"GGUF metadata {key} must be a number, got "):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
