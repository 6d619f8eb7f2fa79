"""Which paths hold a tokenizer, told from their files alone (no torch, no transformers), so
that a --tokenizer path without one is refused before the weights load (seconds to minutes).

A path holds one as aiollm/model/tokenizer.py reads it: a .gguf file; a directory with one of
the files a Hugging Face tokenizer is built from; or a directory whose one .gguf file is the
model (no config.json beside it: paths.resolve_model_path's rule, which the loader reads it by).
"""

from __future__ import annotations

import os
from glob import glob

from aiollm.model.paths import GGUF_MAGIC, check_links, is_gguf_file, resolve_model_path

# Files a Hugging Face tokenizer is built from; without one, AutoTokenizer may still return a
# tokenizer (Qwen's, with an empty vocabulary) that encodes every text to no tokens.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer_path(path: str) -> None:
    """Returns when `path` (a user's path: ~ is expanded) holds a tokenizer; raises
    FileNotFoundError saying what is missing otherwise: the path itself, a file that is not
    a .gguf, a directory without tokenizer files (naming them, and the .gguf files that
    were not taken for one) or with one linked to nothing. The message starts with the path
    as given, for the caller to name the option before it."""
    full = os.path.expanduser(path)
    give = "give a model directory or .gguf file that holds a tokenizer"
    if not os.path.exists(full):
        raise FileNotFoundError(f"{path!r} does not exist ({give})")
    if os.path.isfile(full):
        if is_gguf_file(full):
            _check_gguf(full, path)
            return
        raise FileNotFoundError(f"{path!r} is a file but not a GGUF file ({give})")
    # an HF cache link whose blob is gone: named, not "none of"
    check_links([os.path.join(full, name) for name in TOKENIZER_FILES], shown=path)
    if any(os.path.exists(os.path.join(full, f)) for f in TOKENIZER_FILES):
        return
    model_dir, gguf = resolve_model_path(full)  # the directory's .gguf, as the loader takes it
    if gguf is not None:
        _check_gguf(os.path.join(model_dir, gguf), os.path.join(path, gguf))
        return
    ggufs = sorted(os.path.basename(g) for g in glob(os.path.join(full, "*.gguf")))
    why = ""
    if len(ggufs) > 1:
        names = ", ".join(ggufs[:3]) + (", ..." if len(ggufs) > 3 else "")
        why = f"; it has {len(ggufs)} .gguf files ({names}): give one of them"
    elif ggufs:
        why = (f"; beside config.json its .gguf file is not read as the tokenizer: give "
               f"{os.path.join(path, ggufs[0])!r}")
    raise FileNotFoundError(f"{path!r} is a directory without a tokenizer: it has none of "
                            f"{', '.join(TOKENIZER_FILES)}{why}")


def _check_gguf(full: str, path: str) -> None:
    """FileNotFoundError when the file `full` (given as `path`) does not start as a GGUF file
    does: empty, or another file named .gguf (a cut download, an error page saved in its
    place). Such a file passed for a tokenizer until it was read, once the weights had
    loaded, as "cannot mmap an empty file" without the path or the option."""
    try:
        with open(full, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise FileNotFoundError(f"{path!r} cannot be read: {e.strerror or e}") from None
    if head != GGUF_MAGIC:
        what = "is empty" if not head else "does not start with GGUF's magic bytes"
        raise FileNotFoundError(f"{path!r} is not a GGUF file: it {what} (a download cut "
                                "short? give a model directory or .gguf file that holds a "
                                "tokenizer)")
