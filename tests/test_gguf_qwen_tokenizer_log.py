"""The tokenizer of a Qwen GGUF file (transformers converts it to its Qwen2Tokenizer class,
which ServingTokenizer leaves to transformers) is served by transformers without a warning:
every start of every Qwen GGUF warned that it was "not served natively"."""

from __future__ import annotations

import logging

import gguf

from aiollm.model import default_model_path, load_serving_tokenizer


def write_tokenizer_only(path: str, arch: str, strings: dict | None = None,
                         without: tuple[str, ...] = ()) -> None:
    """A GGUF file of architecture `arch` holding the default model's tokenizer metadata
    (but the keys `without`) and `strings` (key -> str) and nothing else (the tokenizer is
    all that is read here)."""
    source = gguf.GGUFReader(default_model_path())
    w = gguf.GGUFWriter(path, arch)
    for key, field in source.fields.items():
        if key.startswith("tokenizer.") and key not in without:
            sub = field.types[1] if len(field.types) > 1 else None
            w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
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
    assert tok.encode("Hello world") == [19556, 905]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "through transformers" in caplog.text  # said once, at INFO
