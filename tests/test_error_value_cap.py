"""A client's bad string value is quoted short in the error, through the real server: a
100,000-character role, type or name came back whole, a 100 KB error body. It is quoted as
JSON spells it ("ttt", null, true), the body's own words, not as Python's repr ('ttt',
None, True)."""

from __future__ import annotations

import json

import pytest
from live_server import http

LONG = "t" * 100_000
USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def model(server) -> str:
    status, _, raw = http(server, "GET", "/v1/models")
    assert status == 200, raw[:300]
    return json.loads(raw)["data"][0]["id"]


CHAT = [
    ({"messages": [{"role": LONG, "content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": LONG, "text": "Hi"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "tool_calls": [
                       {"id": "c", "type": LONG, "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].type"),
    ({"response_format": {"type": LONG}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": LONG}}},
     "response_format.json_schema.name"),
    ({"tools": [{"type": LONG, "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": LONG}}]}, "tools[0].function.name"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": LONG}}},
     "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": LONG}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {}, "required": [LONG]}}}]},
     "tools[0].function.parameters"),
    ({"reasoning_effort": LONG}, "reasoning_effort"),
    ({"logit_bias": {LONG: 1}}, "logit_bias"),
]


@pytest.mark.parametrize("body, param", CHAT, ids=[p for _, p in CHAT])
def test_chat_quotes_a_bad_value_short(server, model, body, param):
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={"model": model, "messages": USER, "max_tokens": 1, **body})
    assert status == 400 and len(raw) < 2000, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == param, error
    assert "ttttt" in error["message"], error  # the value is still quoted
    # as JSON spells it, not as Python's repr ('ttt...')
    assert '"ttttt' in error["message"] and "'ttt" not in error["message"], error


def test_an_unknown_model_is_quoted_short(server):
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={"model": LONG, "messages": USER, "max_tokens": 1})
    assert status == 404 and len(raw) < 2000, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found", error
    assert error["message"].startswith('model "ttt'), error  # JSON's quotes, not repr's
    assert "'" not in error["message"], error


RESPONSES = [
    ({"text": {"format": {"type": LONG}}}, "text.format.type", '"ttt'),
    ({"text": {"format": {"type": "json_schema", "name": LONG}}}, "text.format.name", '"ttt'),
    ({"input": [{"role": "user", "content": [{"type": LONG, "text": "Hi"}]}]},
     "input[0].content[0].type", '"ttt'),
    ({"input": [{"role": "user", "content": [{"type": "function_call", "text": "Hi"}]}]},
     "input[0].content[0].type", '"function_call"'),
    ({"input": [{"type": LONG}]}, "input[0].type", '"ttt'),
    ({"input": [{"type": "computer_call", "id": "x"}]}, "input[0].type", '"computer_call"'),
    ({"truncation": LONG}, "truncation", '"ttt'),
    ({"tools": [{"type": LONG}]}, "tools[0].type", '"ttt'),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": LONG}},
     "tool_choice", '"ttt'),
]


@pytest.mark.parametrize("body, param, quoted", RESPONSES, ids=[p for _, p, _ in RESPONSES])
def test_responses_quotes_a_bad_value_short(server, model, body, param, quoted):
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"model": model, "input": "Hi", "max_output_tokens": 1, **body})
    assert status == 400 and len(raw) < 2000, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == param, error
    # as JSON spells it, not as Python's repr ('ttt...')
    assert quoted in error["message"] and f"'{quoted[1:5]}" not in error["message"], error


# values other than strings, as JSON spells them: null, true, an array
SPELLED = [
    ("/v1/responses", {"tools": [{"type": None}]}, "tools[0].type", "null"),
    ("/v1/responses", {"tools": [{"type": True}]}, "tools[0].type", "true"),
    ("/v1/responses", {"tools": [{"type": "function", "name": "f"}],
                       "tool_choice": {"type": None}}, "tool_choice", "null"),
    ("/v1/responses", {"tools": [{"type": "function", "name": "f"}],
                       "tool_choice": {"type": False}}, "tool_choice", "false"),
    ("/v1/chat/completions", {"tools": [{"type": None, "function": {"name": "f"}}]},
     "tools[0].type", "null"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": True}}}, "response_format.json_schema.name", "true"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": ["a"]}}}, "response_format.json_schema.name", '["a"]'),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "tool_calls": [
                                               {"id": "c", "type": None, "function": {
                                                   "name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].type", "null"),
    # strings the server names back, in JSON's quotes too
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice",
     'tool_choice "required" asks for a call'),
    ("/v1/chat/completions", {"tools": [TOOL], "tool_choice": {
        "type": "function", "function": {"name": "g"}}}, "tool_choice", 'names "g"'),
    ("/v1/chat/completions", {"tools": [TOOL, TOOL]}, "tools[1].function.name",
     'both named "f"'),
    ("/v1/chat/completions", {"stop": ["a", ""]}, "stop", 'stop[1] must be a non-empty '
     'string, got ""'),
    # a zero-width space, which JSON leaves as it is, escaped: the name looked right
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {
        "name": "get\u200bweather"}}]}, "tools[0].function.name", 'got "get\\u200bweather"'),
    ("/v1/chat/completions", {"structured_outputs": {"regexx": "a"}},
     "structured_outputs.regexx", 'no field "regexx"'),
    ("/v1/chat/completions", {"chat_template_kwargs": {"messages": 1}},
     "chat_template_kwargs.messages", '"messages" cannot be a template variable'),
]


@pytest.mark.parametrize("path, body, param, spelled", SPELLED,
                         ids=[f"{p}-{s}" for _, _, p, s in SPELLED])
def test_a_value_is_spelled_as_json(server, model, path, body, param, spelled):
    base = ({"input": "Hi", "max_output_tokens": 1} if path == "/v1/responses"
            else {"messages": USER, "max_tokens": 1})
    status, _, raw = http(server, "POST", path, json={"model": model, **base, **body})
    assert status == 400, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == param, error
    assert spelled in error["message"], error
    for word in ("None", "True", "False", "['a']"):
        assert word not in error["message"], error
