"""Tensors of a Hugging Face model directory: one or many *.safetensors files.

model.safetensors is read when it is there (as transformers does, even beside an index); else
the files model.safetensors.index.json names; else every *.safetensors file of the directory.
Files are memory-mapped by safetensors and each tensor is read straight onto the target device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from glob import glob

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def safetensors_files(model_dir: str) -> list[str]:
    """The safetensors files holding the weights of an HF directory, in the order transformers'
    from_pretrained picks them: model.safetensors alone when it is there, whatever sits beside
    it (an index, Mistral's consolidated.safetensors, a LoRA adapter); else the files the index
    names; else (beyond transformers) every *.safetensors file. Raises FileNotFoundError when
    there is none."""
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    files = sorted(glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors file in {model_dir} (PyTorch .bin checkpoints are not supported; "
            "convert with save_pretrained(..., safe_serialization=True))"
        )
    return files


def count_tensors(files: list[str]) -> int:
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as f:  # reads the header only
            total += len(f.keys())
    return total


def iter_safetensors(files: list[str], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    # safetensors takes "cpu" or "cuda:N", not torch.device objects.
    target = "cpu" if device.type == "cpu" else str(device)
    for path in files:
        with safe_open(path, framework="pt", device=target) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
