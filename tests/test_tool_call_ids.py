"""Tool-call ids in each family's form. Mistral's chat templates refuse a history whose call
ids are not 9 letters or digits ("Tool call IDs should be alphanumeric strings with length
9!"), so an agent that sent a Mistral model's calls back with their results got a 400 on its
next turn: the ids were OpenAI's `call_` + 24 hex digits for every family. vLLM's Mistral
parser makes 9-character ids; the others keep OpenAI's form."""

from __future__ import annotations

import json
import re

import pytest
from live_server import http

from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser
from aiollm.api.tool_stream import StreamingToolParser

MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
TWO = '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "f", "arguments": {"a": 1}}]'


def test_mistral_call_ids_are_nine_letters_or_digits_whole_cut_and_streamed():
    parser = MistralParser()
    _, calls = parser.calls(TWO, {"f"})
    _, cut = parser.calls(TWO[:-8], {"f"}, cut=True)  # max_tokens inside the second call
    stream = StreamingToolParser(parser, {"f"})
    for i in range(0, len(TWO), 5):
        stream.feed(TWO[i:i + 5])
    _, streamed = stream.finish()
    for found in (calls, cut, streamed):
        assert len(found) == 2 and all(MISTRAL_ID.fullmatch(c.id) for c in found), found
    assert len({c.id for c in calls + cut + streamed}) == 6  # each call its own


@pytest.mark.parametrize("parser, text", [
    (HermesParser(), '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
    (Llama3Parser(), '{"name": "f", "parameters": {}}')])
def test_other_families_keep_openais_form(parser, text):
    _, [call] = parser.calls(text, {"f"})
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id), call.id


@pytest.fixture
def mistral_server(server):
    """The shared server as `aiollm serve --tool-call-parser mistral
    --trust-request-chat-template` runs it."""
    from aiollm.api.state import STATE

    st, config = server.app[STATE], server.engine.config
    before = config.tool_call_parser
    server.call(lambda: (setattr(st, "trust_request_chat_template", True),
                         setattr(config, "tool_call_parser", "mistral")))
    yield server
    server.call(lambda: (setattr(st, "trust_request_chat_template", False),
                         setattr(config, "tool_call_parser", before)))


# the check Mistral-7B-Instruct-v0.3's template makes of a history's call ids
CHECKING_TEMPLATE = (
    "{% for m in messages %}{% for c in m.tool_calls or [] %}"
    "{% if c.id is not defined or c.id|length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
    "{% endif %}{% endfor %}"
    "{% if m.role == 'tool' and m.tool_call_id|length != 9 %}"
    "{{ raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
    "{% endif %}{{ m.content or '' }}{% endfor %}")


def test_a_mistral_call_sent_back_renders_on_the_next_turn(mistral_server):
    """The agent loop: a forced call, then the history with that call and its result, under
    a template that checks the ids as Mistral's does."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]
    first = [{"role": "user", "content": "Call f."}]
    status, _, raw = http(mistral_server, "POST", "/v1/chat/completions", json={
        "messages": first, "tools": tools, "tool_choice": "required", "max_tokens": 40,
        "temperature": 0, "chat_template": CHECKING_TEMPLATE})
    out = json.loads(raw)
    assert status == 200, out
    calls = out["choices"][0]["message"]["tool_calls"]
    assert calls and all(MISTRAL_ID.fullmatch(c["id"]) for c in calls), calls
    history = first + [{"role": "assistant", "tool_calls": calls}] + [
        {"role": "tool", "tool_call_id": c["id"], "content": "3"} for c in calls]
    status, _, raw = http(mistral_server, "POST", "/v1/chat/completions", json={
        "messages": history, "tools": tools, "max_tokens": 2,
        "chat_template": CHECKING_TEMPLATE})
    assert status == 200, raw


def test_a_call_sent_back_with_arguments_nested_deep_is_refused_not_a_500(server):
    """A history's call whose arguments are JSON nested deeper than the server can hand the
    template parsed (decoded, then checked string by string): a 400 naming messages, as a
    body nested too deeply is, where chat and Responses failed with a 500 (RecursionError)
    from 500 levels on; shallow ones still render. The server serves on, nothing held."""
    for depth in (50, 500, 1500, 100_000):
        args = '{"a": ' + "[" * depth + "]" * depth + "}"
        history = [{"role": "user", "content": "Call f."},
                   {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "type": "function",
                                                         "function": {"name": "f",
                                                                      "arguments": args}}]},
                   {"role": "tool", "tool_call_id": "abcdefghi", "content": "3"}]
        items = [history[0], {"type": "function_call", "call_id": "abcdefghi", "name": "f",
                              "arguments": args},
                 {"type": "function_call_output", "call_id": "abcdefghi", "output": "3"}]
        for path, body in (("/v1/chat/completions", {"messages": history, "max_tokens": 1}),
                           ("/v1/responses", {"input": items, "max_output_tokens": 1})):
            status, _, raw = http(server, "POST", path, json=body)
            if depth == 50:
                assert status == 200, (path, raw)
                continue
            assert status == 400, (path, depth, raw[:300])
            error = json.loads(raw)["error"]
            if depth == 500 and error["code"] == "context_length_exceeded":
                continue  # rendered (the recursion a thread has left varies): too long
            assert "nested too deeply" in error["message"], error
            assert error["param"].startswith(("messages", "input")), error
    server.wait_idle()
