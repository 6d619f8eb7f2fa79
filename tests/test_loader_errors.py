"""Broken model directories and files: each fails with a ValueError or FileNotFoundError (the
errors `aiollm serve` reports in one line) that names the bad file, tensor or field, never
with an error from deep inside safetensors, json or torch, and never as a silently wrong model.

The checkpoint is a tiny random Mixtral (8 experts, top-2) saved sharded by transformers, then
damaged one way per test in a copy.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import MixtralConfig

from aiollm.model import load_model
from test_loader import save_random_hf_model

CONFIG = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                       num_experts_per_tok=2, max_position_embeddings=128, sliding_window=None,
                       tie_word_embeddings=False)
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixtral-sharded")
    save_random_hf_model(CONFIG, str(path), max_shard_size="20KB")
    return path


@pytest.fixture
def copy(sharded, tmp_path):
    """A fresh copy of the sharded checkpoint and its shard file names, in order."""
    dst = tmp_path / "model"
    shutil.copytree(sharded, dst)
    return dst, sorted(n for n in os.listdir(dst) if n.startswith("model-"))


def load(path):
    return load_model(str(path), dtype=torch.float32, device="cpu")


def test_the_intact_copy_loads(copy):
    path, shards = copy
    assert len(shards) > 2 and os.path.exists(path / INDEX)
    assert load(path).config.moe.num_experts == 8


def test_a_shard_the_index_lists_but_the_directory_lacks_is_named(copy):
    path, shards = copy
    os.remove(path / shards[1])
    with pytest.raises(FileNotFoundError, match=f"{INDEX} lists {shards[1]}, missing from"):
        load(path)


@pytest.mark.parametrize("keep", [0.5, 4 / 1e9], ids=["half", "4-bytes"])
def test_a_truncated_shard_is_named(copy, keep):
    """safetensors' own error (SafetensorError, not a ValueError: a traceback from the CLI)
    named no file."""
    path, shards = copy
    size = os.path.getsize(path / shards[1])
    os.truncate(path / shards[1], max(4, int(size * keep)))
    with pytest.raises(ValueError, match=f"{shards[1]} is not a readable safetensors file"):
        load(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "{}", '{"weight_map": {"a": 3}}'])
def test_an_index_that_is_not_one_is_named(copy, text):
    """json's error named no file; an index without weight_map raised KeyError."""
    path, _ = copy
    (path / INDEX).write_text(text)
    with pytest.raises(ValueError, match=f"{INDEX} (is not a safetensors index|has no weight_map)"):
        load(path)
