"""The tokenizer of a Qwen GGUF file (transformers converts it to its Qwen2Tokenizer class,
which ServingTokenizer leaves to transformers) is served by transformers without a warning:
every start of every Qwen GGUF warned that it was "not served natively"."""

from __future__ import annotations

import functools
import logging

import gguf

from aiollm.model import default_model_path, load_serving_tokenizer

# The default model's first VOCAB tokens (its 17 special ones, the 235 single characters of
# byte-level BPE, and the tokens its first VOCAB - 252 merges make: merge i makes token
# 252 + i) and those merges: a vocabulary that encodes any text, converted by transformers in
# a fraction of a second where the whole 49,152-token one takes ~10 s a file.
VOCAB = 1024
_FIRST_MERGED = 252


@functools.cache
def default_tokenizer_fields() -> tuple[tuple[str, object, list, object], ...]:
    """The default model's tokenizer.* metadata as (key, contents, value types, sub type),
    its vocabulary cut to VOCAB tokens; read once per process (GGUFReader takes ~3 s)."""
    source = gguf.GGUFReader(default_model_path())
    fields = []
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            value = field.contents()
            if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
                value = value[:VOCAB]
            elif key == "tokenizer.ggml.merges":
                value = value[:VOCAB - _FIRST_MERGED]
            sub = field.types[1] if len(field.types) > 1 else None
            fields.append((key, value, field.types[0], sub))
    return tuple(fields)


def write_tokenizer_only(path: str, arch: str, strings: dict | None = None,
                         without: tuple[str, ...] = ()) -> None:
    """A GGUF file of architecture `arch` holding the default model's tokenizer metadata
    (its first VOCAB tokens; but the keys `without`) and `strings` (key -> str) and nothing
    else (the tokenizer is all that is read here)."""
    w = gguf.GGUFWriter(path, arch)
    for key, value, kind, sub in default_tokenizer_fields():
        if key not in without:
            w.add_key_value(key, value, kind, sub_type=sub)
    for key, value in (strings or {}).items():
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_qwen_gguf_tokenizer_is_served_through_transformers_without_a_warning(tmp_path,
                                                                               caplog):
    path = str(tmp_path / "qwen.gguf")
    write_tokenizer_only(path, "qwen2")
    with caplog.at_level(logging.INFO, logger="aiollm.model.tokenizer"):
        tok = load_serving_tokenizer(path)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.encode("in the world") == [254, 260, 905]  # as the whole vocabulary has it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "through transformers" in caplog.text  # said once, at INFO
