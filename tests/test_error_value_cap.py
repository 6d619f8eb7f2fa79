"""A client's bad string value is quoted short in the error, through the real server: a
100,000-character role, type or name came back whole, a 100 KB error body."""

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


def test_an_unknown_model_is_quoted_short(server):
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={"model": LONG, "messages": USER, "max_tokens": 1})
    assert status == 404 and len(raw) < 2000, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found", error


RESPONSES = [
    ({"text": {"format": {"type": LONG}}}, "text.format.type"),
    ({"input": [{"role": "user", "content": [{"type": LONG, "text": "Hi"}]}]},
     "input[0].content[0].type"),
]


@pytest.mark.parametrize("body, param", RESPONSES, ids=[p for _, p in RESPONSES])
def test_responses_quotes_a_bad_value_short(server, model, body, param):
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"model": model, "input": "Hi", "max_output_tokens": 1, **body})
    assert status == 400 and len(raw) < 2000, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == param, error
