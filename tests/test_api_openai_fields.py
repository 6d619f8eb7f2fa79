"""Fields of OpenAI's current Chat Completions request (openai 3.x's completion_create_params)
that change nothing here are taken without the log's unknown-field line, their types checked
as OpenAI checks them (a 400 naming the field); those whose request the server cannot do
(web search, moderation) are a 400 naming them, never ignored. stream_options'
include_obfuscation, OpenAI's on chat and completions, is taken on both. On the session's
tiny random Llama server (conftest's random_server): what is checked is a field's
acceptance, its error and the answer against the same server's without it, which no
model's words change."""

from __future__ import annotations

import json
import logging

import pytest
from live_server import http

HI = [{"role": "user", "content": "Hi"}]
CHAT = {"messages": HI, "max_tokens": 3, "temperature": 0}

@pytest.fixture(scope="module")
def server(random_server):
    return random_server


# sent as a client of OpenAI's API sends them; none changes the answer here
NO_EFFECT = {
    "prompt_cache_key": "tenant-7/session-42",
    "safety_identifier": "user-9f2a",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "service_tier": "flex",
    "store": True,
    "verbosity": "low",
    "prediction": {"type": "content", "content": "Hello"},
}


def _served(server, caplog, path: str, body: dict) -> tuple[int, bytes, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        status, _, raw = http(server, "POST", path, json=body)
    warned = [r.getMessage() for r in caplog.records
              if r.name.startswith("aiollm.api") and r.levelno == logging.WARNING]
    return status, raw, warned


def _text(raw: bytes) -> str:
    choice = json.loads(raw)["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def test_openai_chat_fields_without_effect_are_taken_silently(server, caplog):
    """Each was named in the unknown-field warning (prompt_cache_key and safety_identifier,
    which OpenAI's SDK users now send in place of `user`, on every request): taken, with
    the answer of the request without them and no warning."""
    status, raw, warned = _served(server, caplog, "/v1/chat/completions", CHAT)
    assert status == 200 and warned == [], (raw[:300], warned)
    want = _text(raw)
    for name, value in NO_EFFECT.items():
        status, raw, warned = _served(server, caplog, "/v1/chat/completions",
                                      {**CHAT, name: value})
        assert status == 200 and warned == [], (name, raw[:300], warned)
        assert _text(raw) == want, name
    status, raw, warned = _served(server, caplog, "/v1/chat/completions",
                                  {**CHAT, **NO_EFFECT})
    assert status == 200 and warned == [] and _text(raw) == want, (raw[:300], warned)
    # null is "not set", as for every OpenAI field
    status, raw, warned = _served(server, caplog, "/v1/chat/completions",
                                  {**CHAT, **dict.fromkeys(NO_EFFECT)})
    assert status == 200 and warned == [], (raw[:300], warned)


@pytest.mark.parametrize("name, value, expected", [
    ("prompt_cache_key", 42, "a string"),
    ("safety_identifier", ["u"], "a string"),
    ("prompt_cache_retention", 24, "a string"),
    ("prompt_cache_options", "30m", "an object"),
    ("service_tier", True, "a string"),
    ("store", "yes", "a boolean"),
    ("verbosity", 1, "a string"),
    ("prediction", "Hello", "an object"),
])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(server, name, value, expected):
    """OpenAI answers a prompt_cache_key that is no string with a 400; so does this server,
    naming the field (it was ignored whatever its type)."""
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={**CHAT, name: value})
    assert status == 400, raw[:300]
    error = json.loads(raw)["error"]
    assert error["param"] == name and error["message"].startswith(f"{name}: expected "
                                                                  f"{expected}"), error


@pytest.mark.parametrize("name, value", [
    ("web_search_options", {"search_context_size": "low"}),
    ("web_search_options", {}),
    ("moderation", {"model": "omni-moderation-latest"}),
])
def test_a_field_asking_for_what_the_server_cannot_do_is_a_400(server, caplog, name, value):
    """A web search before the answer, or moderation of input and output: ignored, the
    answer would be one the client did not ask for (no search; unmoderated, and no scores
    or block), so each is a 400 naming it, as audio is. null is "not set"."""
    status, raw, warned = _served(server, caplog, "/v1/chat/completions",
                                  {**CHAT, name: value})
    assert status == 400 and json.loads(raw)["error"]["param"] == name, raw[:300]
    assert "not served" in json.loads(raw)["error"]["message"], raw[:300]
    assert warned == [], warned
    status, raw, warned = _served(server, caplog, "/v1/chat/completions",
                                  {**CHAT, name: None})
    assert status == 200 and warned == [], (raw[:300], warned)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0}),
], ids=["chat", "completions"])
def test_stream_options_include_obfuscation_is_taken(server, caplog, path, body):
    """OpenAI pads stream chunks with an `obfuscation` field unless include_obfuscation is
    false; this server pads none (as vLLM, and as its /v1/responses takes the option), so
    either value is served as false, without the unknown-field line it had. A value that is
    no boolean is a 400 naming it."""
    for value in (False, True):
        status, raw, warned = _served(server, caplog, path, {
            **body, "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": value}})
        assert status == 200 and warned == [], (raw[:300], warned)
        assert b"obfuscation" not in raw, raw[:300]
    status, _, raw = http(server, "POST", path, json={
        **body, "stream": True, "stream_options": {"include_obfuscation": "no"}})
    assert status == 400, raw[:300]
    assert json.loads(raw)["error"]["param"] == "stream_options.include_obfuscation", raw


def test_responses_moderation_is_a_400(server, caplog):
    """/v1/responses takes OpenAI's moderation too (its Response reports the moderation's
    results): refused as on chat, naming it, where it was ignored with the unknown-field
    line; null is "not set"."""
    ask = {"input": "hi", "max_output_tokens": 2}
    status, raw, warned = _served(server, caplog, "/v1/responses",
                                  {**ask, "moderation": {"model": "omni-moderation-latest"}})
    assert status == 400 and json.loads(raw)["error"]["param"] == "moderation", raw[:300]
    assert warned == [], warned
    status, raw, warned = _served(server, caplog, "/v1/responses", {**ask, "moderation": None})
    assert status == 200 and warned == [], (raw[:300], warned)
