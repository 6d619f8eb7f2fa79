"""A GGUF file's named chat templates (tokenizer.chat_template.<name>: Hermes' tool_use) are
served beside its default one, as llama.cpp serves them and transformers holds several: a
request with tools renders tool_use. transformers' GGUF conversion read only the default,
so tools never reached the prompt."""

from __future__ import annotations

import pytest

from aiollm.model import load_serving_tokenizer
from test_gguf_qwen_tokenizer_log import write_tokenizer_only

TOOL_USE = ("TOOLS:{{ (tools or []) | length }}{% for m in messages %}|{{ m.content }}"
            "{% endfor %}")
MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


# llama: served by ServingTokenizer; qwen2: by transformers (its Qwen2Tokenizer class)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_request_with_tools_renders_the_files_tool_use_template(tmp_path, arch):
    path = str(tmp_path / "model.gguf")
    write_tokenizer_only(path, arch, {"tokenizer.chat_template.tool_use": TOOL_USE})
    for start in ("converted", "from the cache"):
        tok = load_serving_tokenizer(path)
        assert sorted(tok.chat_template) == ["default", "tool_use"], start
        with_tools = tok.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=False)
        assert with_tools == "TOOLS:1|hi", start
        plain = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        assert plain.startswith("<|im_start|>system") and plain.endswith("assistant\n"), start


def test_a_tool_use_template_without_a_default_one_is_the_default(tmp_path, caplog):
    """llama.cpp renders a file's tool_use template for every request when the file has no
    default one; the tokenizer held only {"tool_use": ...}, and transformers refused every
    chat request without tools ("multiple chat templates with no default specified")."""
    path = str(tmp_path / "model.gguf")
    write_tokenizer_only(path, "llama", {"tokenizer.chat_template.tool_use": TOOL_USE},
                         without=("tokenizer.chat_template",))
    for start in ("converted", "from the cache"):
        tok = load_serving_tokenizer(path)
        assert tok.apply_chat_template(MESSAGES, tokenize=False) == "TOOLS:0|hi", start
        with_tools = tok.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=False)
        assert with_tools == "TOOLS:1|hi", start


def test_named_templates_llama_cpp_never_renders_leave_no_default_to_fail(tmp_path, caplog):
    """A file whose only template is named other than tool_use: llama.cpp renders none of
    it; the tokenizer held it as its only template, with no default, and every chat request
    failed at transformers. It is warned of at the start as having no chat template."""
    path = str(tmp_path / "model.gguf")
    write_tokenizer_only(path, "llama", {"tokenizer.chat_template.rag": TOOL_USE},
                         without=("tokenizer.chat_template",))
    with caplog.at_level("WARNING", logger="aiollm.model.tokenizer"):
        tok = load_serving_tokenizer(path)
    assert not tok.chat_template
    assert "has no chat template" in caplog.text


@pytest.mark.parametrize("reader", ["transformers", "gguf"])
def test_the_named_templates_read_without_parsing_the_vocabulary(tmp_path, monkeypatch,
                                                                  reader):
    """The named templates come from transformers' metadata-only reader (the gguf
    package's GGUFReader parses every field, the vocabulary's strings too: ~3.5 s more on a
    GGUF's first start at 49k tokens), or from GGUFReader on a transformers without that
    reader: both give the file's templates, and the vocabulary only as its length."""
    import sys

    from aiollm.model.tokenizer import _gguf_metadata

    path = str(tmp_path / "model.gguf")
    write_tokenizer_only(path, "llama", {"tokenizer.chat_template.tool_use": TOOL_USE})
    if reader == "gguf":  # a transformers without integrations.gguf: its import fails
        monkeypatch.setitem(sys.modules, "transformers.integrations.gguf", None)
    meta = _gguf_metadata(path)
    assert meta["tokenizer.chat_template.tool_use"] == TOOL_USE
    assert meta["tokenizer.chat_template"].startswith("{%")
    if reader == "transformers":
        assert meta["tokenizer.ggml.tokens"] == 1024  # a length: no string parsed
