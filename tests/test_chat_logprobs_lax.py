"""chat's `logprobs` read as vLLM's pydantic model reads a bool (lax mode): 1, "true",
"yes" are true, 0, "false", "no" false, and 2, 0.5, "maybe" a 400 naming logprobs
(aiollm/api/lax_bool.py)."""

from __future__ import annotations

import json

import pytest
from live_server import http

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def _chat_logprobs(server, value) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={**CHAT, "logprobs": value})
    return status, json.loads(raw)


@pytest.mark.parametrize("value", [True, 1, 1.0, "true", "True", "1", "yes", "on", "t", "Y"])
def test_chat_logprobs_read_as_true_as_vllm_reads_it(server, value):
    """chat's logprobs is a bool in vLLM's pydantic model, which (lax) reads 1 and "true"
    as true: `"logprobs": 1` (the completions API's count, sent to chat) was a 400 here."""
    status, body = _chat_logprobs(server, value)
    assert status == 200, body
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 2 and all("logprob" in c for c in content), content


@pytest.mark.parametrize("value", [False, 0, 0.0, "false", "FALSE", "0", "no", "off", "f",
                                   None])
def test_chat_logprobs_read_as_false_as_vllm_reads_it(server, value):
    status, body = _chat_logprobs(server, value)
    assert status == 200, body
    assert body["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("value", [2, -1, 0.5, "", " true", "maybe", "2", "1.0", [], {}])
def test_chat_logprobs_vllm_refuses_are_refused(server, value):
    status, body = _chat_logprobs(server, value)
    assert status == 400, body
    assert body["error"]["param"] == "logprobs", body
    assert "boolean" in body["error"]["message"]


def test_chat_top_logprobs_with_logprobs_1(server):
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={**CHAT, "logprobs": 1, "top_logprobs": 3})
    assert status == 200, raw
    content = json.loads(raw)["choices"][0]["logprobs"]["content"]
    assert all(len(c["top_logprobs"]) == 3 for c in content), content
    status, _, raw = http(server, "POST", "/v1/chat/completions",
                          json={**CHAT, "logprobs": "no", "top_logprobs": 3})
    assert status == 400 and json.loads(raw)["error"]["param"] == "top_logprobs", raw
