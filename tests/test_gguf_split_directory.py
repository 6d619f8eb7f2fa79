"""A directory holding the parts of one split GGUF model (llama.cpp's gguf-split) is told
to be merged at once; it was told to give one of the files, and that one was then refused
as a part to merge."""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch

from aiollm.model import load_model


def write_split(directory, parts: int) -> None:
    w = gguf.GGUFWriter(str(directory / "model.gguf"), "llama", split_max_tensors=1)
    w.add_block_count(1)
    for name in ("token_embd.weight", "output_norm.weight", "output.weight")[:parts]:
        w.add_tensor(name, np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_directory_of_the_parts_of_a_split_model_says_to_merge_them(tmp_path):
    write_split(tmp_path, 3)
    first = tmp_path / "model-00001-of-00003.gguf"
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))} holds the 3 "
                                                r"parts of a split GGUF model .* "
                                                r"`llama-gguf-split --merge "
                                                rf"{re.escape(str(first))} merged.gguf`"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")


def test_a_directory_missing_a_part_still_lists_its_files(tmp_path):
    """Parts 1 and 3 of 3: no merge would work, and the files are listed as before."""
    write_split(tmp_path, 3)
    (tmp_path / "model-00002-of-00003.gguf").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json and 2 .gguf files"):
        load_model(str(tmp_path), dtype=torch.float32, device="cpu")
