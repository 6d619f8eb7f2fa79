"""Tokenizers of model paths, chat templates included, from local files.

load_tokenizer gives transformers' tokenizer: an HF directory through AutoTokenizer
(local_files_only); a GGUF file through transformers' GGUF support, which rebuilds a fast
tokenizer from the file's vocabulary and merges and takes the chat template from its
tokenizer.chat_template metadata. That conversion takes seconds, so its result is kept in the
on-disk cache keyed by the file's hash (derived_cache.py) and read back from there later.

load_serving_tokenizer is what the engine serves with: for a GGUF file, a ServingTokenizer over
the cached conversion, which answers as transformers' tokenizer does without importing
transformers (seconds of start-up); for anything else, load_tokenizer's.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from typing import TYPE_CHECKING

from aiollm.model.derived_cache import GGUFCache
from aiollm.model.paths import check_links, resolve_model_path
from aiollm.model.tokenizer_files import TOKENIZER_FILES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from aiollm.model.serving_tokenizer import ServingTokenizer

log = logging.getLogger(__name__)


def load_tokenizer(path: str | None) -> PreTrainedTokenizerBase:
    """The transformers tokenizer of a model path (None: the default model);
    FileNotFoundError for a directory without one or with a tokenizer file linked to nothing
    (paths.check_links), ValueError naming the directory and its tokenizer files for one
    transformers cannot read."""
    model_dir, gguf_name = _source(path)
    source = os.path.join(model_dir, gguf_name) if gguf_name else model_dir
    tok = _load(model_dir, gguf_name, _stamp(source))
    _check_chat_template(tok.chat_template, source)
    # a copy of the cached one takes a few milliseconds and leaves callers free to modify it
    return copy.deepcopy(tok)


def load_serving_tokenizer(path: str | None) -> ServingTokenizer | PreTrainedTokenizerBase:
    """The tokenizer to serve a model path with: a ServingTokenizer over the cached
    conversion of a GGUF file (converted now if it is not cached yet), else load_tokenizer's."""
    model_dir, gguf_name = _source(path)
    if gguf_name is None:
        return load_tokenizer(path)
    gguf_path = os.path.join(model_dir, gguf_name)
    cache = GGUFCache(gguf_path)
    if cache.tokenizer_dir is None:
        # converts, and caches when the cache is on; load_tokenizer's copy of the conversion
        # (0.13 s at 49k tokens) only when there is no cached one to serve
        _load(model_dir, gguf_name, _stamp(gguf_path))
        if cache.tokenizer_dir is None:
            return load_tokenizer(path)
    from aiollm.model.serving_tokenizer import NotServedNatively, ServingTokenizer

    try:
        tok = ServingTokenizer(cache.tokenizer_dir, name_or_path=model_dir)
    except NotServedNatively as e:
        # a tokenizer class of its own (Qwen2Tokenizer: every Qwen GGUF): served as an HF
        # directory's is, nothing to warn of at every start
        log.info("serving the tokenizer of %s through transformers: %s", gguf_path, e)
        return load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 (tokenizers raises Exception itself)
        log.warning("serving the tokenizer of %s through transformers: %s", gguf_path, e)
        return load_tokenizer(path)
    _check_chat_template(tok.chat_template, gguf_path)
    return tok


def _check_chat_template(template: str | dict | None, source: str) -> None:
    """Warns when the tokenizer of `source` has no chat template, or one that does not
    compile (a syntax error): the server still serves completions, and every chat request
    fails, with the template's error."""
    if not template:
        log.warning("tokenizer of %s has no chat template: chat requests will fail", source)
        return
    from jinja2 import TemplateError

    from aiollm.model.serving_tokenizer import compile_chat_template

    for t in template.values() if isinstance(template, dict) else [template]:
        try:
            compile_chat_template(t)
        except TemplateError as e:
            log.warning("the chat template of %s does not compile (%s: %s): chat requests "
                        "will fail", source, type(e).__name__, e)


def _source(path: str | None) -> tuple[str, str | None]:
    model_dir, gguf_name = resolve_model_path(path)
    if gguf_name is None and not any(
            os.path.exists(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return model_dir, gguf_name


def _stamp(source: str) -> int:
    """Latest modification time of the file, or of the files in the directory."""
    if os.path.isfile(source):
        return os.stat(source).st_mtime_ns
    return max((_mtime(e) for e in os.scandir(source)), default=0)


def _mtime(entry: os.DirEntry) -> int:
    """The modification time of what `entry` names, or of the link itself when it links to
    nothing (a weights file of an HF cache whose blob is gone: the loader names it)."""
    try:
        return entry.stat().st_mtime_ns
    except FileNotFoundError:
        return entry.stat(follow_symlinks=False).st_mtime_ns


# the files of an HF directory that AutoTokenizer reads, beside tokenizer*, chat_template*
_TOKENIZER_PARTS = (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json",
                    "merges.txt")


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, gguf_name: str | None, stamp: int) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if gguf_name is None:
        names = sorted(os.listdir(model_dir))
        # an HF cache link whose blob is gone: transformers takes the file as absent, and
        # fails naming another thing or (tokenizer_config.json) loads without its tokens
        check_links([os.path.join(model_dir, f) for f in names if f in _TOKENIZER_PARTS
                     or f.startswith("tokenizer") or f.startswith("chat_template")])
        try:
            return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as e:  # noqa: BLE001 (tokenizers raises Exception itself)
            # a file cut short or replaced fails deep in transformers (a KeyError for "{}",
            # a JSONDecodeError), naming neither the file nor the directory
            files = ", ".join(f for f in names
                              if f.startswith("tokenizer") or f in TOKENIZER_FILES)
            raise ValueError(f"cannot read the tokenizer in {model_dir} ({files}): "
                             f"{type(e).__name__}: {e}") from e
    path = os.path.join(model_dir, gguf_name)
    cache = GGUFCache(path)
    if cache.tokenizer_dir is not None:
        try:
            tok = AutoTokenizer.from_pretrained(cache.tokenizer_dir, local_files_only=True)
            tok.name_or_path = model_dir  # as the conversion names it
            return tok
        except Exception as e:  # noqa: BLE001 (tokenizers raises Exception itself; another
            # install sharing the cache may remove an old copy while this start reads it)
            log.warning("ignoring the cached tokenizer in %s: %s", cache.tokenizer_dir, e)
    log.info("converting the tokenizer of %s for transformers (%s)", gguf_name,
             "once: cached for later starts" if cache.dir else
             "the cache is off: AIOLLM_CACHE_DIR=off")
    # transformers parses the whole file again here (its load_gguf_checkpoint opens a
    # GGUFReader of its own: ~2-5 s for the default model, as long as weights_gguf's parse)
    # and takes no parsed reader; building the tokenizer from ours would copy its private
    # value parsing and class choice. Only a start with nothing cached pays it twice.
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 (as above)
        # a file written without a tokenizer fails as KeyError: 'tokens', naming no file
        raise ValueError(f"cannot read the tokenizer of {path} (its tokenizer.ggml.* "
                         f"metadata): {type(e).__name__}: {e}: give one with --tokenizer "
                         "(Engine's tokenizer=), e.g. the Hugging Face directory of the "
                         "model it was converted from") from e
    _add_named_templates(tok, path)
    cache.store_tokenizer(tok)
    return tok


def _add_named_templates(tok: PreTrainedTokenizerBase, path: str) -> None:
    """Give `tok` the GGUF file's named chat templates (tokenizer.chat_template.<name>,
    e.g. Hermes' tool_use, which llama.cpp renders when a request has tools) beside its
    default one, as transformers holds several: a dict of name -> template, "default" the
    unnamed one, else tool_use (llama.cpp renders it for every request then). Without
    either, the named ones are left out, as llama.cpp renders none of them: a dict without
    a default fails every chat request at transformers. transformers' GGUF conversion
    reads only the unnamed one."""
    prefix = "tokenizer.chat_template."
    named = {key[len(prefix):]: value
             for key, value in _gguf_metadata(path).items() if key.startswith(prefix)}
    named = {k: v for k, v in named.items() if k and isinstance(v, str) and v}
    default = tok.chat_template or named.get("tool_use")
    if named and default:
        tok.chat_template = {"default": default, **named}


def _gguf_metadata(path: str) -> dict:
    """The GGUF file's metadata, key -> value, read by transformers' metadata-only reader
    (~20 ms at a 49k vocabulary; a string array comes back as its length); through the
    gguf package's GGUFReader (gguf_reader.open_gguf), which parses every field (~0.8 s
    there; arrays as lists), on a transformers without that reader. Strings are the same
    either way."""
    try:
        from transformers.integrations.gguf import read_gguf_metadata
    except ImportError:
        from aiollm.model.gguf_reader import open_gguf

        return {k: f.contents() for k, f in open_gguf(path).fields.items()}
    return read_gguf_metadata(path)[0]
