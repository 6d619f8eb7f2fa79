"""tool_choice "none" builds no grammar from the tools (vLLM builds none either): a
`parameters` schema the grammar could not enforce is taken there, on /v1/chat/completions
and /v1/responses alike, and refused (400 naming the tool's parameters) where a call may
come. A tools entry of the wrong shape is a 400 in every mode, as vLLM's request
validation refuses it."""

from __future__ import annotations

import json

import pytest
from live_server import http

ASK = [{"role": "user", "content": "Hello"}]
# uniqueItems: xgrammar compiles it without enforcing it (grammar_check refuses it)
UNENFORCED = {"type": "object", "properties": {"tags": {
    "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}


def _chat(tool: dict) -> dict:
    return {"type": "function", "function": tool}


def _responses(tool: dict) -> dict:
    return {"type": "function", **tool}


ENDPOINTS = [("/v1/chat/completions", _chat, "tools[0].function",
              lambda tools, choice: {"messages": ASK, "max_tokens": 2, "tools": tools,
                                     "tool_choice": choice}),
             ("/v1/responses", _responses, "tools[0]",
              lambda tools, choice: {"input": ASK, "max_output_tokens": 2, "tools": tools,
                                     "tool_choice": choice, "store": False})]


@pytest.mark.parametrize("path, tool, at, body", ENDPOINTS)
def test_a_schema_the_grammar_cannot_enforce_is_taken_under_none(server, path, tool, at,
                                                                body):
    tools = [tool({"name": "tag", "parameters": UNENFORCED})]
    status, _, raw = http(server, "POST", path, json=body(tools, "none"))
    assert status == 200, raw
    status, _, raw = http(server, "POST", path, json=body(tools, "auto"))
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == f"{at}.parameters", err
    assert "uniqueItems" in err["message"], err


@pytest.mark.parametrize("path, tool, at, body", ENDPOINTS)
@pytest.mark.parametrize("bad, field", [({"name": 5}, "name"),
                                        ({"name": "f", "parameters": "x"}, "parameters")])
def test_a_malformed_tool_is_refused_under_none(server, path, tool, at, body, bad, field):
    status, _, raw = http(server, "POST", path, json=body([tool(bad)], "none"))
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == f"{at}.{field}", err


@pytest.mark.parametrize("path, tool, at, body", ENDPOINTS)
@pytest.mark.parametrize("depth", [65, 180])
def test_a_schema_nested_too_deeply_is_refused_under_none(server, path, tool, at, body,
                                                          depth):
    """A parameters schema nested past MAX_SCHEMA_DEPTH is refused in every mode, naming
    it: under "none" it reached the chat template, whose walk ran out of recursion (a 400
    blaming `messages`), or was a 400 for a prompt the context could not hold."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    status, _, raw = http(server, "POST", path,
                          json=body([tool({"name": "deep", "parameters": schema})], "none"))
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == f"{at}.parameters", err
    assert "nests deeper than 64 levels" in err["message"], err


@pytest.mark.parametrize("path, tool, at, body", ENDPOINTS)
@pytest.mark.parametrize("choice", ["None", "nothing"])
def test_a_tool_choice_of_no_form_is_told_before_the_schemas(server, path, tool, at, body,
                                                             choice):
    """A mistyped "none" is told the forms: the schemas' check depends on the mode, and it
    was told to remove the uniqueItems that "none" would have taken."""
    tools = [tool({"name": "tag", "parameters": UNENFORCED})]
    status, _, raw = http(server, "POST", path, json=body(tools, choice))
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "tool_choice", err
    assert "uniqueItems" not in err["message"], err
