"""Grammars on a vocabulary with no eos (the letters vocabulary of
tests/test_api_letters_vocab.py), the ways a user meets the end of a grammar there: n > 1,
streams, logprobs, max_tokens reached on the grammar's last token, and grammars that may go
on (a+) and must not stop early."""

from __future__ import annotations

import json

import pytest
from live_server import http
from test_api_letters_vocab import model_dir, server  # noqa: F401

pytestmark = pytest.mark.usefixtures("server")


def post(server, path, body):
    status, _, raw = http(server, "POST", path, json=body)
    return status, raw


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().split("\n")
            if line.startswith("data: {")]


def test_n_choices_with_logprobs_each_end_with_stop(server):
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "a(b|c)d", "n": 4, "max_tokens": 8,
        "temperature": 1.0, "logprobs": 2})
    assert status == 200, raw
    out = json.loads(raw)
    assert len(out["choices"]) == 4
    for c in out["choices"]:
        assert c["finish_reason"] == "stop", c
        assert c["text"].replace(" ", "") in ("abd", "acd"), c
        assert len(c["logprobs"]["tokens"]) == 3, c
    assert out["usage"]["completion_tokens"] == 12, out
    assert server.wait_idle()


def test_a_stream_of_n_choices_ends_each_once(server):
    status, raw = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "n": 3, "stream": True,
        "max_tokens": 8, "temperature": 1.0, "logprobs": True, "top_logprobs": 1,
        "stream_options": {"include_usage": True},
        "structured_outputs": {"choice": ["cab", "bad"]}})
    assert status == 200, raw
    evs = events(raw)
    assert not any("error" in e for e in evs), evs
    finish = {}
    text = {}
    for e in evs:
        for c in e["choices"]:
            text[c["index"]] = text.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["finish_reason"]:
                assert c["index"] not in finish, evs
                finish[c["index"]] = c["finish_reason"]
    assert finish == {0: "stop", 1: "stop", 2: "stop"}, evs
    assert all(t.replace(" ", "") in ("cab", "bad") for t in text.values()), text
    assert evs[-1]["usage"]["completion_tokens"] == 9, evs[-1]
    assert server.wait_idle()


@pytest.mark.parametrize("max_tokens", [2, 3])
def test_max_tokens_on_the_grammars_last_token(server, max_tokens):
    """max_tokens 3 reached with the grammar's last token: "length" (vLLM checks the
    length before the stop); 2 cuts it: "length"."""
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "abc", "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, raw
    c = json.loads(raw)["choices"][0]
    assert c["text"].replace(" ", "") == "abc"[:max_tokens], c
    assert c["finish_reason"] == "length", c
    assert server.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_a_grammar_that_may_go_on_is_not_stopped_early(server, stream):
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "a+", "max_tokens": 6, "temperature": 1.0,
        "stream": stream})
    assert status == 200, raw
    if stream:
        evs = events(raw)
        text = "".join(c["text"] for e in evs for c in e["choices"])
        finish = [c["finish_reason"] for e in evs for c in e["choices"] if c["finish_reason"]]
    else:
        c = json.loads(raw)["choices"][0]
        text, finish = c["text"], [c["finish_reason"]]
    assert text.replace(" ", "") == "aaaaaa" and finish == ["length"], raw
    assert server.wait_idle()


def test_an_optional_tail_is_taken_as_far_as_the_vocabulary_allows(server):
    """ab? with no eos: after "a" only "b" can be sampled (nothing ends it), then "stop"."""
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "ab?", "max_tokens": 6, "temperature": 1.0})
    assert status == 200, raw
    c = json.loads(raw)["choices"][0]
    assert c["text"].replace(" ", "") == "ab" and c["finish_reason"] == "stop", c
    assert server.wait_idle()


def test_a_stop_string_inside_the_grammars_output_ends_it_first(server):
    """A stop string met before the grammar's end is the stop reason (the decoder writes
    a space between these tokens)."""
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "abcd", "stop": ["b c"], "max_tokens": 6,
        "temperature": 0})
    assert status == 200, raw
    c = json.loads(raw)["choices"][0]
    assert c["finish_reason"] == "stop" and c["stop_reason"] == "b c", c
    assert "d" not in c["text"], c
    assert server.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ending_where_the_grammar_ends_is_the_stop_reason(server, stream):
    """The grammar's last token completes a stop string too: the string is the stop
    reason and is cut from the text, as a stop string met anywhere else."""
    status, raw = post(server, "/v1/completions", {
        "prompt": "hi", "guided_regex": "abc", "stop": ["b c"], "max_tokens": 6,
        "temperature": 0, "stream": stream})
    assert status == 200, raw
    if stream:
        evs = events(raw)
        text = "".join(c["text"] for e in evs for c in e["choices"])
        last = [c for e in evs for c in e["choices"] if c["finish_reason"]]
        assert len(last) == 1, evs
        c = last[0]
    else:
        c = json.loads(raw)["choices"][0]
        text = c["text"]
    assert c["finish_reason"] == "stop" and c["stop_reason"] == "b c", c
    assert "b" not in text and "c" not in text, text
    assert server.wait_idle()
