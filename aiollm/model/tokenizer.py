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


def load_tokenizer(path: str | None) -> PreTrainedTokenizerBase:
    model_dir, gguf_name = resolve_model_path(path)
    source = os.path.join(model_dir, gguf_name) if gguf_name else model_dir
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
