"""A GGUF file's tool_use chat template at work in a chat with tools: the template that
renders a request with tools (tool_use, as transformers and llama.cpp pick it) is the one
whose text says whether the tools and past calls must be shown in the messages (a template
that renders no tools gets them as a Hermes system message) and which tool-call format the
output is read in. Both were asked of the tokenizer's templates as a dict, whose keys
("default", "tool_use") hold neither "tools" nor a call marker: a tool_use template that
renders the tools got them twice, past calls were rewritten into text it renders itself,
and a Llama 3 tool_use template's calls were read and held in Hermes' format."""

from __future__ import annotations

import json

import pytest
from live_server import LiveServer, http
from test_gguf_qwen_tokenizer_log import VOCAB, write_tokenizer_only

from aiollm.engine import Engine

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]
# renders its tools and past calls itself
RENDERS_TOOLS = ("TOOLS:{{ tools | length }}{% for m in messages %}|{{ m.role }}:{{ m.content }}"
                 "{% if m.tool_calls %}CALLS:{{ m.tool_calls | length }}{% endif %}"
                 "{% endfor %}")
# Llama 3.1's format (its role for tool results, ipython, names it); the tools rendered too
LLAMA3 = ("{% for m in messages %}{{ m.content }}{% endfor %}{{ tools | tojson }}"
          "{# tool results: ipython #}")


def _tiny(tmp_path, tool_use: str) -> dict:
    """Engine options of a tiny random Llama (dummy weights) whose tokenizer is a GGUF file
    holding the default model's tokenizer (its first VOCAB tokens) and chat template, and
    `tool_use`."""
    tok = str(tmp_path / "tok.gguf")
    write_tokenizer_only(tok, "llama", {"tokenizer.chat_template.tool_use": tool_use})
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
    return {"model": str(model), "tokenizer": tok, "load_format": "dummy",
            "max_model_len": 1024, "kv_tokens": 2048}


def test_a_tool_use_template_that_renders_tools_is_given_them_once(tmp_path, loop):
    from conftest import run

    async def go():
        async with Engine(**_tiny(tmp_path, RENDERS_TOOLS)) as eng:
            hi = [{"role": "user", "content": "hi"}]
            ids, _ = eng.render_chat(hi, TOOLS)
            assert eng.tokenizer.decode(ids) == "TOOLS:1|user:hi"
            called = [*hi, {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": '{"x": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
            ids, _ = eng.render_chat(called, TOOLS)
            assert eng.tokenizer.decode(ids) == "TOOLS:1|user:hi|assistant:CALLS:1|tool:2"
            # without tools the default template (SmolLM2's, which renders neither) renders,
            # and is shown the past call in the assistant's text
            ids, _ = eng.render_chat(called)
            assert '<tool_call>\n{"name": "f"' in eng.tokenizer.decode(ids)

    run(loop, go())


@pytest.fixture()
def llama3_server(tmp_path):
    srv = LiveServer(**_tiny(tmp_path, LLAMA3)).start()
    yield srv
    srv.close()


def test_calls_follow_the_tool_use_templates_format(llama3_server):
    status, _, raw = http(llama3_server, "POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "call f"}], "tools": TOOLS,
        "tool_choice": "required", "max_tokens": 40, "logprobs": True})
    assert status == 200, raw
    choice = json.loads(raw)["choices"][0]
    text = "".join(t["token"] for t in choice["logprobs"]["content"])
    assert text.startswith('{"name": "f", "parameters": '), text  # Llama 3's, not <tool_call>
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "f", choice
