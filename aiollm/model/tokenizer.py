"""load_tokenizer: the model's transformers tokenizer, chat template included, from local files.

An HF directory goes through AutoTokenizer (local_files_only); a GGUF file through
transformers' GGUF support, which rebuilds a fast tokenizer from the file's vocabulary and
merges and takes the chat template from its tokenizer.chat_template metadata.
"""

from __future__ import annotations

import copy
import functools
import logging
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from aiollm.model.loader import resolve_model_path

log = logging.getLogger(__name__)


# Files a Hugging Face tokenizer is built from; without one, AutoTokenizer may still return a
# tokenizer (Qwen's, with an empty vocabulary) that encodes every text to no tokens.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model path; FileNotFoundError for a directory without one."""
    model_dir, gguf_name = resolve_model_path(path)
    source = os.path.join(model_dir, gguf_name) if gguf_name else model_dir
    if gguf_name is None and not any(
            os.path.exists(os.path.join(model_dir, f)) for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    tok = _load(model_dir, gguf_name, _stamp(source))
    if not tok.chat_template:
        log.warning("tokenizer of %s has no chat template: chat requests will fail", source)
    # Building a tokenizer from a GGUF file takes seconds (its vocabulary is parsed in Python);
    # a copy of the cached one takes a few milliseconds and leaves callers free to modify it.
    return copy.deepcopy(tok)


def _stamp(source: str) -> int:
    """Latest modification time of the file, or of the files in the directory."""
    if os.path.isfile(source):
        return os.stat(source).st_mtime_ns
    return max((e.stat().st_mtime_ns for e in os.scandir(source)), default=0)


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, gguf_name: str | None, stamp: int) -> PreTrainedTokenizerBase:
    if gguf_name is not None:
        return AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name, local_files_only=True)
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
