"""/v1/responses fields OpenAI's Response echoes as the request gave them (prompt_cache_key,
safety_identifier, prompt_cache_retention, prompt_cache_options, max_tool_calls), whole,
streamed and kept; and stream_options, which every endpoint takes with stream true only (a
400 naming it without, as chat answers it)."""

from __future__ import annotations

import json
import logging

import pytest
from live_server import http

ECHOED = {"prompt_cache_key": "tenant-7/session-42", "safety_identifier": "user-9f2a",
          "prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "30m"}}
ASK = {"input": "hi", "max_output_tokens": 2}


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in raw.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_prompt_cache_key_and_safety_identifier_are_echoed(server, caplog):
    """OpenAI's Response carries each as given (they were taken and left out; the cache's
    two were named as unknown fields in the log): in the answer, in each streamed event's
    response, and in the kept response read back. Of the wrong type, a 400 naming it."""
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        status, _, raw = http(server, "POST", "/v1/responses", json={**ASK, **ECHOED})
    assert status == 200, raw[:300]
    assert "unknown" not in caplog.text, caplog.text
    whole = json.loads(raw)
    assert {k: whole[k] for k in ECHOED} == ECHOED, whole
    status, _, raw = http(server, "GET", f"/v1/responses/{whole['id']}")
    assert status == 200 and {k: json.loads(raw)[k] for k in ECHOED} == ECHOED, raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={**ASK, **ECHOED, "stream": True})
    responses = [e["response"] for e in _events(raw) if "response" in e]
    assert status == 200 and responses, raw[:300]
    assert all({k: r[k] for k in ECHOED} == ECHOED for r in responses), responses[-1]
    status, _, raw = http(server, "POST", "/v1/responses", json=ASK)
    assert {k: json.loads(raw)[k] for k in ECHOED} == dict.fromkeys(ECHOED), raw[:300]
    for name in ECHOED:
        status, _, raw = http(server, "POST", "/v1/responses", json={**ASK, name: 24})
        assert status == 400 and json.loads(raw)["error"]["param"] == name, raw[:300]


@pytest.mark.parametrize("path, body, options", [
    ("/v1/responses", ASK, {"include_obfuscation": False}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 2}, {"include_usage": True}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2}, {"include_usage": True}),
], ids=["responses", "chat", "completions"])
@pytest.mark.parametrize("stream", [False, None], ids=["false", "absent"])
def test_stream_options_without_stream_is_a_400(server, path, body, options, stream):
    """stream_options shapes a stream: without stream true the answer in one piece would
    leave out what they ask for. Chat refused it; /v1/responses took it (and ignored it).
    Each endpoint now answers the same 400, naming the field."""
    sent = {**body, "stream_options": options, **({} if stream is None else {"stream": stream})}
    status, _, raw = http(server, "POST", path, json=sent)
    assert status == 400, raw[:300]
    assert json.loads(raw)["error"] == {
        "message": "stream_options is only allowed with stream true: send stream true, or "
                   "leave stream_options out", "type": "invalid_request_error",
        "param": "stream_options", "code": None}


def test_responses_stream_options_with_stream_are_served(server):
    """With stream true, /v1/responses takes OpenAI's stream_options (include_obfuscation:
    this server pads no events, either value) and a null as "not set" without stream."""
    status, _, raw = http(server, "POST", "/v1/responses", json={
        **ASK, "stream": True, "stream_options": {"include_obfuscation": False}})
    assert status == 200, raw[:300]
    assert _events(raw)[-1]["type"] in ("response.completed", "response.incomplete"), raw[-300:]
    status, _, raw = http(server, "POST", "/v1/responses", json={**ASK, "stream_options": None})
    assert status == 200, raw[:300]


def test_max_tool_calls_is_taken_and_echoed(server):
    """OpenAI's max_tool_calls bounds calls to built-in tools, none of which run here: a
    client setting it (an agent framework's limit) got a 400 where OpenAI answers. It is
    taken with function tools, echoed whole, streamed and kept; a negative count is a 400."""
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    body = {**ASK, "tools": tools, "max_tool_calls": 3}
    status, _, raw = http(server, "POST", "/v1/responses", json=body)
    assert status == 200, raw[:300]
    whole = json.loads(raw)
    assert whole["max_tool_calls"] == 3, whole
    status, _, raw = http(server, "GET", f"/v1/responses/{whole['id']}")
    assert status == 200 and json.loads(raw)["max_tool_calls"] == 3, raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses", json={**body, "stream": True})
    responses = [e["response"] for e in _events(raw) if "response" in e]
    assert status == 200 and [r["max_tool_calls"] for r in responses] == [3] * 3, raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses", json=ASK)
    assert json.loads(raw)["max_tool_calls"] is None, raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses", json={**ASK, "max_tool_calls": -1})
    assert status == 400 and json.loads(raw)["error"]["param"] == "max_tool_calls", raw[:300]
