"""A Python API caller is told the option it can give: a model directory without a tokenizer
named only the command line's --tokenizer, which Engine and LLM do not take."""

from __future__ import annotations

import asyncio

import pytest

from aiollm import Engine
from conftest import tiny_llama


def test_a_model_directory_without_a_tokenizer_names_the_keyword_too(tmp_path):
    """Before: "...; give one with --tokenizer", a flag an Engine(...) caller cannot pass.
    The refusal comes before any weight is read (the directory has none)."""
    path = tiny_llama(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"directory without a tokenizer: .*give one "
                                                r"with --tokenizer \(Engine's and LLM's "
                                                r"tokenizer=\)"):
        asyncio.run(Engine(path, device="cpu").start())
