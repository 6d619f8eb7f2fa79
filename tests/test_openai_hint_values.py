"""The values of OpenAI's fields that change nothing here (api/openai_hints.py), checked as
OpenAI checks them: a value outside the field's enumeration, or a prediction that is no text,
is a 400 naming the field, on /v1/chat/completions and (its caching fields and service_tier)
on /v1/responses; each value OpenAI takes is taken. On the session's tiny random Llama
server (conftest's random_server): what is checked is a value's acceptance or its error,
which no model's words change."""

from __future__ import annotations

import json
import logging

import pytest
from live_server import http, sse_events

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
RESPONSES = {"input": "Hi", "max_output_tokens": 1}


@pytest.fixture(scope="module")
def server(random_server):
    return random_server


def _error(server, path: str, body: dict) -> dict:
    status, _, raw = http(server, "POST", path, json=body)
    assert status == 400, raw[:300]
    return json.loads(raw)["error"]


@pytest.mark.parametrize("fields, param", [
    ({"verbosity": "loud"}, "verbosity"),
    ({"prompt_cache_retention": "1w"}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"mode": "sometimes"}}, "prompt_cache_options.mode"),
    ({"prompt_cache_options": {"ttl": 30}}, "prompt_cache_options.ttl"),
    ({"prediction": {"type": "image", "content": "x"}}, "prediction.type"),
    ({"prediction": {"content": "x"}}, "prediction.type"),
    ({"prediction": {"type": "content"}}, "prediction.content"),
    ({"prediction": {"type": "content", "content": 5}}, "prediction.content"),
    ({"prediction": {"type": "content", "content": [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "data:,"}}]}}, "prediction.content[1].type"),
    ({"prediction": {"type": "content", "content": [{"type": "text"}]}},
     "prediction.content[0].text"),
    ({"prediction": {"type": "content", "content": ["a"]}}, "prediction.content[0]"),
    ({"safety_identifier": "u" * 129}, "safety_identifier"),
])
def test_chat_value_openai_refuses_is_a_400_naming_it(server, fields, param):
    """Each was answered 200 as if the field were left out, where OpenAI answers 400 (a
    safety_identifier past its 128 characters too)."""
    error = _error(server, "/v1/chat/completions", {**CHAT, **fields})
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert error["message"].startswith(param), error


@pytest.mark.parametrize("fields, param", [
    ({"prompt_cache_retention": "1w"}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"mode": "x"}}, "prompt_cache_options.mode"),
    ({"text": {"verbosity": "loud"}}, "text.verbosity"),
    ({"text": {"verbosity": 3}}, "text.verbosity"),
    ({"safety_identifier": "u" * 129}, "safety_identifier"),
])
def test_responses_value_openai_refuses_is_a_400_naming_it(server, fields, param):
    """The Response echoes these as given: text.verbosity "loud" (chat's verbosity, here)
    was echoed as the verbosity asked for."""
    error = _error(server, "/v1/responses", {**RESPONSES, **fields})
    assert error["param"] == param, error


def test_every_value_openai_takes_is_taken(server):
    """OpenAI's whole enumeration of each field, and a prediction given as text parts.
    service_tier and prompt_cache_options.ttl, whose lists OpenAI keeps growing, take any
    string: a tier or a lifetime named after openai 3.63 changes nothing here either."""
    for tier in ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast", "next"):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/responses", RESPONSES)):
            status, _, raw = http(server, "POST", path, json={
                **body, "service_tier": tier, "prompt_cache_retention": "in_memory",
                "prompt_cache_options": {"mode": "explicit", "ttl": "30m"}})
            assert status == 200, (tier, path, raw[:300])
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/responses", RESPONSES)):
        status, _, raw = http(server, "POST", path, json={  # the retention's first spelling
            **body, "prompt_cache_retention": "in-memory",
            "prompt_cache_options": {"mode": "implicit", "ttl": "24h"}})
        assert status == 200, (path, raw[:300])
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/responses", RESPONSES)):
        # OpenAI's bound, 128 characters (a SHA-512 in hex, a hash and a prefix...)
        status, _, raw = http(server, "POST", path, json={
            **body, "safety_identifier": "u" * 128})
        assert status == 200, (path, raw[:300])
    for verbosity in ("low", "medium", "high"):
        status, _, raw = http(server, "POST", "/v1/responses", json={
            **RESPONSES, "text": {"format": {"type": "text"}, "verbosity": verbosity}})
        assert status == 200 and json.loads(raw)["text"]["verbosity"] == verbosity, raw[:300]
    for verbosity in ("low", "medium", "high"):
        status, _, raw = http(server, "POST", "/v1/chat/completions", json={
            **CHAT, "verbosity": verbosity, "prediction": {
                "type": "content", "content": [{"type": "text", "text": "Hello"}]}})
        assert status == 200, (verbosity, raw[:300])


@pytest.mark.parametrize("tier", [None, "auto", "flex", "priority"])
def test_the_tier_reported_is_the_one_that_served(server, tier):
    """OpenAI reports the tier that served a request ("default" for a normal one, "auto"
    asked included), never the one asked for. /v1/responses reported the tier asked for
    (or "auto") and chat none: a client reading it believed flex or priority processing
    had run. Every answer, whole, each chunk and each streamed Response, says "default"."""
    sent = {} if tier is None else {"service_tier": tier}
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={**CHAT, **sent})
    assert status == 200 and json.loads(raw)["service_tier"] == "default", raw[:300]
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        **CHAT, **sent, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert chunks and {c["service_tier"] for c in chunks} == {"default"}, raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses", json={**RESPONSES, **sent})
    assert status == 200 and json.loads(raw)["service_tier"] == "default", raw[:300]
    status, _, raw = http(server, "POST", "/v1/responses", json={
        **RESPONSES, **sent, "stream": True})
    events = [json.loads(line[len("data: "):]) for line in raw.decode().splitlines()
              if line.startswith("data: ")]
    told = [e["response"] for e in events if "response" in e]
    assert told and {r["service_tier"] for r in told} == {"default"}, raw[:300]


def test_responses_prompt_cache_options_has_openais_four_keys(server, caplog):
    """/v1/responses' prompt_cache_options has four keys in openai 3.x
    (response_create_params.PromptCacheOptions: comparison_response_id, mode, prewarm,
    ttl), chat's two: the Struct of chat's two named comparison_response_id and prewarm
    unknown in the log and dropped them from the Response, whose own PromptCacheOptions
    carries comparison_response_id back. They are taken, typed, and echoed as sent."""
    options = {"mode": "implicit", "ttl": "12h", "comparison_response_id": "resp_0",
               "prewarm": False}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        status, _, raw = http(server, "POST", "/v1/responses", json={
            **RESPONSES, "prompt_cache_options": options})
    assert status == 200 and json.loads(raw)["prompt_cache_options"] == options, raw[:300]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiollm.api")
            and r.levelno == logging.WARNING] == []
    for value, param in ((5, "comparison_response_id"), ("yes", "prewarm")):
        error = _error(server, "/v1/responses", {
            **RESPONSES, "prompt_cache_options": {param: value}})
        assert error["param"] == f"prompt_cache_options.{param}", error


def test_prewarm_true_is_refused(server):
    """prewarm true asks OpenAI to fill its prompt cache and generate nothing ("Prepares
    the prompt cache without generating output"): answered with generated output it was
    another request than the one sent. It is a 400 naming it, as a field that would change
    the output and is not served; prewarm false (OpenAI's default) is taken."""
    error = _error(server, "/v1/responses", {**RESPONSES, "prompt_cache_options": {
        "prewarm": True}})
    assert error["param"] == "prompt_cache_options.prewarm", error
    assert "prewarm" in error["message"], error
