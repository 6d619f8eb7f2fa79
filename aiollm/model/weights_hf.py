"""Tensors of a Hugging Face model directory: one or many *.safetensors files.

model.safetensors is read when it is there (as transformers does, even beside an index); else
the files model.safetensors.index.json names; else every *.safetensors file of the directory.
Files are memory-mapped by safetensors and each tensor is read straight onto the target device.
A broken directory (an index that is not JSON, names no file or lists a missing shard; a
numbered shard missing beside no index; a link to nothing; a truncated or corrupt file) fails
with a ValueError or FileNotFoundError naming the file, before any weight is read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from glob import glob

import torch
from safetensors import SafetensorError, safe_open

from aiollm.model.paths import check_links, gguf_names

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# how a Git LFS pointer file begins (what a clone without git-lfs holds in place of a file)
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def safetensors_files(model_dir: str) -> list[str]:
    """The safetensors files holding the weights of an HF directory, in the order transformers'
    from_pretrained picks them: model.safetensors alone when it is there, whatever sits beside
    it (an index, Mistral's consolidated.safetensors, a LoRA adapter); else the files the index
    names; else (beyond transformers) every *.safetensors file but Mistral's own
    consolidated*.safetensors. Raises FileNotFoundError when there is none (or only
    Mistral's), the index names a file that is not there or one is a link to nothing,
    ValueError when the index is not one."""
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.lexists(single):  # a link to nothing too: _check_linked says so
        return check_links([single])
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        files = check_links([os.path.join(model_dir, n) for n in _indexed_files(index)])
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{index} lists {', '.join(missing[:3])}{more}, missing from {model_dir} "
                "(an interrupted download or copy?)")
        return files
    files = sorted(glob(os.path.join(model_dir, "*.safetensors")))
    # Mistral's own format beside transformers' files (its repositories hold both): not ours
    consolidated = [f for f in files if os.path.basename(f).startswith("consolidated")]
    if consolidated and len(consolidated) == len(files):
        more = f" and {len(consolidated) - 3} more" if len(consolidated) > 3 else ""
        names = ", ".join(os.path.basename(f) for f in consolidated[:3]) + more
        raise FileNotFoundError(
            f"{model_dir} holds {names} alone: Mistral's own format, not transformers' "
            "(vLLM reads it with --load-format mistral): give a directory of the model's "
            "transformers files (config.json, model*.safetensors), which its repository "
            "holds too")
    files = [f for f in files if f not in consolidated]
    if not files:
        ggufs = gguf_names(model_dir)
        if ggufs:  # beside config.json, a .gguf file is not taken for the model (paths.py)
            raise FileNotFoundError(
                f"no *.safetensors file in {model_dir}; it has {', '.join(ggufs[:3])}: give "
                f"that file, e.g. {os.path.join(model_dir, ggufs[0])!r} (and --tokenizer "
                f"{model_dir!r} for this directory's tokenizer)")
        raise FileNotFoundError(
            f"no *.safetensors file in {model_dir} (PyTorch .bin checkpoints are not supported; "
            "convert with save_pretrained(..., safe_serialization=True))"
        )
    return check_links(_check_numbered(files))


# a numbered shard's name, as save_pretrained writes them: model-00002-of-00004.safetensors
_SHARD = re.compile(r"(.*)-(\d+)-of-(\d+)\.safetensors$")


def _check_numbered(files: list[str]) -> list[str]:
    """`files`, unless they hold numbered shards (prefix-NNNNN-of-MMMMM) of which some are
    missing: FileNotFoundError naming them (without an index, their weights would be told
    missing one by one, not the file)."""
    present: dict[tuple[str, str, int], set[int]] = {}
    for path in files:
        if m := _SHARD.fullmatch(path):
            width = len(m[2])
            present.setdefault((m[1], m[3], width), set()).add(int(m[2]))
    for (prefix, total, width), numbers in present.items():
        missing = [f"{os.path.basename(prefix)}-{n:0{width}d}-of-{total}.safetensors"
                   for n in range(1, int(total) + 1) if n not in numbers]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{', '.join(missing[:3])}{more} {'is' if len(missing) == 1 else 'are'} "
                f"missing from {os.path.dirname(prefix)} (the other shards of {int(total)} are "
                f"there, with no {INDEX_FILE}): an interrupted download or copy?")
    return files


def _indexed_files(index: str) -> list[str]:
    """The file names an index's weight_map maps tensors to, sorted and without repeats."""
    try:
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{index} is not a safetensors index (a JSON object): {e}") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(n, str) for n in weight_map.values()):
        raise ValueError(f"{index} has no weight_map object of tensor name -> file name")
    if not weight_map:
        raise ValueError(f"{index} names no safetensors file (its weight_map is empty): save "
                         "the checkpoint again, or remove the index to read every "
                         "*.safetensors file")
    return sorted(set(weight_map.values()))


def damaged_file_advice(path: str) -> str:
    """What to do about a weights file that cannot be parsed: a Git LFS pointer (a repository
    cloned without git-lfs leaves these ~130-byte text files in place of the weights) needs
    `git lfs pull`; anything else, a new download."""
    with open(path, "rb") as f:
        if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
            return "it is a Git LFS pointer, not the file itself: run `git lfs pull` in its " \
                   "repository"
    return "a truncated or corrupt file; download or save it again"


@contextmanager
def _open(path: str, **kwargs):
    """safe_open, with a corrupt or truncated file reported by name (safetensors' own error
    names neither the file nor what to do)."""
    try:
        handle = safe_open(path, framework="pt", **kwargs)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): "
                         f"{damaged_file_advice(path)}") from None
    with handle as f:
        yield f


def count_tensors(files: list[str]) -> int:
    """Tensors in `files`, reading their headers only (which checks that each file is as long
    as its header says). Raises ValueError naming a file that is not a safetensors file."""
    total = 0
    for path in files:
        with _open(path) as f:
            total += len(f.keys())
    return total


def tied_embedding_source(files: list[str]) -> str:
    """What a checkpoint whose config ties the word embeddings holds, told as transformers 5's
    from_pretrained ties them: "embed" (the embedding alone, or lm_head.weight equal to it:
    tied), "lm_head" (lm_head.weight alone: the embedding is that tensor, still tied) or
    "both" (two different tensors: transformers keeps them apart, warning that the config is
    wrong). Reads the headers, and both tensors only when both are there (in row blocks)."""
    where = {}
    for path in files:
        with _open(path) as f:
            where.update((name, path) for name in (EMBED, LM_HEAD) if name in f.keys())
    if LM_HEAD not in where:
        return "embed"
    if EMBED not in where:
        return "lm_head"
    with _open(where[EMBED]) as e, _open(where[LM_HEAD]) as h:
        embed, head = e.get_slice(EMBED), h.get_slice(LM_HEAD)
        if embed.get_shape() != head.get_shape():
            return "both"
        rows = embed.get_shape()[0]
        for start in range(0, rows, 4096):  # a block at a time: a vocabulary is ~GB
            if not torch.equal(embed[start:start + 4096], head[start:start + 4096]):
                return "both"
    return "embed"


def iter_safetensors(files: list[str], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor on `device`) of every tensor of `files`, file by file."""
    # safetensors takes "cpu" or "cuda:N", not torch.device objects.
    target = "cpu" if device.type == "cpu" else str(device)
    for path in files:
        with _open(path, device=target) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


# Gemma3ForConditionalGeneration's checkpoints: the language model under one of these
# prefixes (transformers 4's layout, which transformers 5 still saves, and its own), the
# vision tower and the projector beside it
_LANGUAGE_MODEL_PREFIXES = (("language_model.model.", "model."),
                            ("model.language_model.", "model."),
                            ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")


def language_model_tensors(tensors: Iterator[tuple[str, torch.Tensor]]
                           ) -> Iterator[tuple[str, torch.Tensor]]:
    """The (transformers name, tensor) pairs of a Gemma 3 checkpoint's language model, named
    as Gemma3ForCausalLM names them: a multimodal checkpoint's (Gemma3ForConditionalGeneration)
    language-model tensors renamed, its vision tower and multimodal projector left out; a
    text-only checkpoint's as they are."""
    for name, tensor in tensors:
        if name.startswith(_VISION_PREFIXES):
            continue
        for old, new in _LANGUAGE_MODEL_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        yield name, tensor
