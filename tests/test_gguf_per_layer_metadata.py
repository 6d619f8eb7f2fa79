"""GGUF hyperparameters that llama.cpp reads as one value or one per layer (head counts,
feed_forward_length): an array of equal values is that value; layers that differ are
refused naming the key (int() of the list was a TypeError traceback)."""

from __future__ import annotations

import pytest
import torch

from aiollm.model import load_model
from test_loader import FAMILIES, PROMPTS, all_position_logits, save_random_hf_model, write_gguf

KEYS = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return save_random_hf_model(FAMILIES["qwen2-qkv-bias-tied"],
                                str(tmp_path_factory.mktemp("hf")))


def test_per_layer_arrays_of_one_value_load_as_that_value(hf, tmp_path):
    c = hf.config
    write_gguf(hf, str(tmp_path / "scalar.gguf"))
    per_layer = {f"qwen2.{key}": [value] * c.num_hidden_layers for key, value in zip(
        KEYS, (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size))}
    write_gguf(hf, str(tmp_path / "arrays.gguf"), metadata=per_layer)
    scalar = load_model(str(tmp_path / "scalar.gguf"), dtype=torch.float32, device="cpu")
    arrays = load_model(str(tmp_path / "arrays.gguf"), dtype=torch.float32, device="cpu")
    assert arrays.config == scalar.config
    assert torch.equal(all_position_logits(arrays, PROMPTS), all_position_logits(scalar, PROMPTS))


@pytest.mark.parametrize("key", KEYS)
def test_layers_of_different_values_are_refused_naming_the_key(hf, tmp_path, key):
    write_gguf(hf, str(tmp_path / "model.gguf"), metadata={f"qwen2.{key}": [2, 4]})
    with pytest.raises(ValueError, match=rf"GGUF metadata qwen2\.{key} gives its layers "
                                         r"different values \(2, 4\)"):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("key", KEYS)
def test_an_array_not_one_value_per_layer_is_refused_naming_its_length(hf, tmp_path, key):
    """llama.cpp refuses a per-layer array whose length is not block_count ("wrong array
    length"); one of equal values was taken here, whatever its length."""
    layers = hf.config.num_hidden_layers
    value = {"attention.head_count": hf.config.num_attention_heads,
             "attention.head_count_kv": hf.config.num_key_value_heads,
             "feed_forward_length": hf.config.intermediate_size}[key]
    write_gguf(hf, str(tmp_path / "model.gguf"),
               metadata={f"qwen2.{key}": [value] * (layers + 1)})
    with pytest.raises(ValueError, match=rf"GGUF metadata qwen2\.{key} has {layers + 1} "
                                         rf"values, not one per layer \(block_count {layers}\)"):
        load_model(str(tmp_path / "model.gguf"), dtype=torch.float32, device="cpu")
