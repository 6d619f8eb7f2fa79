"""A GGUF file's named chat templates (tokenizer.chat_template.<name>: Hermes' tool_use) are
served beside its default one, as llama.cpp serves them and transformers holds several: a
request with tools renders tool_use. transformers' GGUF conversion read only the default,
so tools never reached the prompt."""

from __future__ import annotations

import pytest

from aiollm.model import load_serving_tokenizer
from test_gguf_qwen_tokenizer_log import write_tokenizer_only

TOOL_USE = "TOOLS:{{ tools | length }}{% for m in messages %}|{{ m.content }}{% endfor %}"
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
