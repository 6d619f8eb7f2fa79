"""Fields of a request body that no endpoint knows (a typo such as max_token, a vendor's
extension) are served as if left out, as vLLM serves them, and named in one WARNING line of
the server's log per request: they were ignored silently, so a typo changed nothing and
nobody was told. On the session's tiny random Llama server (conftest's random_server):
what is checked is the log's lines and the answer's form, which no model's words change."""

from __future__ import annotations

import json
import logging

import pytest
from live_server import http

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(random_server):
    return random_server


def served(server, caplog, path: str, body: dict) -> tuple[dict | bytes, list[str]]:
    """The answer to `body` on `path` (its JSON; a stream's bytes), and the warnings the
    request logged (the aiollm.api loggers')."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        status, _, raw = http(server, "POST", path, json=body)
    assert status == 200, raw
    warned = [r.getMessage() for r in caplog.records
              if r.name.startswith("aiollm.api") and r.levelno == logging.WARNING]
    return raw if body.get("stream") else json.loads(raw), warned


def test_unknown_lightllm_parameters_are_named_once(server, caplog):
    """LightLLM's `parameters` with max_token (max_new_tokens' typo): the output is the
    one without it, and one line names the field by its path."""
    params = {"max_new_tokens": 3, "do_sample": False}
    want, warned = served(server, caplog, "/generate", {"inputs": "Hi", "parameters": params})
    assert warned == []
    got, warned = served(server, caplog, "/generate", {
        "inputs": "Hi", "parameters": {**params, "max_token": 9, "top_kk": 2}, "extra": 1})
    assert got == want
    assert len(warned) == 1, warned
    assert "/generate" in warned[0]
    for name in ("parameters.max_token", "parameters.top_kk", "extra"):
        assert name in warned[0], warned[0]
    assert "parameters.max_new_tokens" not in warned[0]


@pytest.mark.parametrize("path,body,refused", [
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0}, {"suffix": "!"}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 2, "temperature": 0},
     {"audio": {"voice": "alloy", "format": "wav"}}),
], ids=["completions", "chat"])
def test_unknown_openai_fields_are_named_once(server, caplog, path, body, refused):
    """Top-level fields (max_token, another vendor's safety_settings; metadata, OpenAI's,
    is chat's own now: api/metadata.py checks it) and those of a known object
    (stream_options) are named; fields the endpoint knows, served or refused, are not:
    an OpenAI field the server refuses (suffix, audio...) stays a 400 naming it."""
    want, warned = served(server, caplog, path, body)
    assert warned == []
    got, warned = served(server, caplog, path, {**body, "max_token": 9,
                                                "safety_settings": {"user": "x"}})
    assert got["choices"][0].get("text") == want["choices"][0].get("text")
    assert got["choices"][0].get("message") == want["choices"][0].get("message")
    assert len(warned) == 1, warned
    assert "max_token, safety_settings" in warned[0] and path in warned[0], warned[0]
    _, warned = served(server, caplog, path, {**body, "stream": True, "stream_options": {
        "include_usage": True, "include_usages": False}})
    assert len(warned) == 1 and "stream_options.include_usages" in warned[0], warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm.api"):
        status, _, raw = http(server, "POST", path, json={**body, **refused})
    assert status == 400 and json.loads(raw)["error"]["param"] == [*refused][0], raw
    assert not [r for r in caplog.records if "unknown" in r.getMessage()], caplog.text


def test_the_line_stays_one_short_line(server, caplog):
    """The keys are the client's text: a line break in one is escaped (it would forge a
    line of the log), a long one cut, and past 16 the rest are counted, not named."""
    extra = {f"k{i}": 0 for i in range(20)}
    _, warned = served(server, caplog, "/generate", {
        "inputs": "Hi", "parameters": {"max_new_tokens": 1, "a\nb": 0, "x" * 10**4: 0},
        **extra})
    assert len(warned) == 1, warned
    line = warned[0]
    assert "\n" not in line and "'parameters.a\\nb'" in line, line
    assert len(line) < 1000 and line.endswith("and 6 more are unknown to this endpoint and "
                                              "were ignored"), line


def test_unknown_field_nested_to_the_decoders_limit_is_served(server, caplog):
    """An unknown field nested as deep as the body's decoder takes: the body decoded, then
    the scan for unknown fields, a few frames deeper, ran out of recursion and the request
    failed with a 500 (RecursionError) instead of being served. At every depth the answer
    is now a 200 or a refusal ("nested too deeply"), at the top level and in `parameters`."""
    def status(depth: int, nested: bool) -> int:
        deep = "[" * depth + "]" * depth
        params = '{"max_new_tokens":1' + (f',"zz":{deep}}}' if nested else "}")
        body = f'{{"inputs":"Hi","parameters":{params}' + ("}" if nested else f',"zz":{deep}}}')
        code, _, raw = http(server, "POST", "/generate", data=body.encode(),
                            headers={"Content-Type": "application/json"})
        assert code in (200, 417), (depth, code, raw)  # LightLLM's refusal
        return code

    for nested in (False, True):
        lo, hi = 1, 1 << 14  # served at lo, refused as too deep at hi
        assert (status(lo, nested), status(hi, nested)) == (200, 417)
        while hi - lo > 1:  # the deepest body served: the scan's edge
            mid = (lo + hi) // 2
            if status(mid, nested) == 200:
                lo = mid
            else:
                hi = mid
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aiollm.api"):
            assert status(lo, nested) == 200
        assert "zz" in caplog.text, caplog.text  # named, as any unknown field


def test_a_body_of_many_keys_is_decoded_and_scanned_off_the_event_loop(server, caplog,
                                                                       monkeypatch):
    """The scan builds a Python object per key: a body under the 1 MiB inline bound with
    tens of thousands of unknown keys held the event loop (and every stream) for 50-90 ms
    on this machine, ten times its decode. Such a body is decoded, once, and scanned on a
    worker thread (the decode stayed on the loop, and the body was decoded a second time
    for the scan); one of a few keys stays on the loop (no thread hand-off per request).
    The line is the same either way."""
    import threading

    from aiollm.api import unknown_fields as scan
    from aiollm.api import whole_floats

    threads = []

    def spy(real):  # the real function, recording where it runs
        def run(*args, **kwargs):
            threads.append((real.__name__, threading.current_thread().name))
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(scan, "unknown_in", spy(scan.unknown_in))
    monkeypatch.setattr(scan, "unknown_fields", spy(scan.unknown_fields))
    monkeypatch.setattr(whole_floats, "plain_and_typed", spy(whole_floats.plain_and_typed))
    body = {"prompt": "Hi", "max_tokens": 1}
    _, warned = served(server, caplog, "/v1/completions", {**body, "k": 0})
    on_loop = [("plain_and_typed", "api-test-server"), ("unknown_in", "api-test-server")]
    assert len(warned) == 1 and threads == on_loop, (threads, warned)
    threads.clear()
    _, warned = served(server, caplog, "/v1/completions",
                      {**body, **{f"k{i}": 0 for i in range(20000)}})
    assert len(warned) == 1 and warned[0].endswith(
        "and 19984 more are unknown to this endpoint and were ignored"), warned
    assert [name for name, _ in threads] == ["plain_and_typed", "unknown_in"], threads
    assert "api-test-server" not in {thread for _, thread in threads}, threads


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "<|im_start|>user\nHi", "max_tokens": 4, "temperature": 0}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 4, "temperature": 0}),
], ids=["completions", "chat"])
def test_spaces_between_special_tokens_is_known(server, caplog, path, body):
    """vLLM's spaces_between_special_tokens (its slow tokenizers' joining of special
    tokens' text), which lm-eval-harness and vLLM's own clients send, is taken as the
    Python API takes it: a boolean, naming the field otherwise. The tokenizers served
    here (transformers 5's) join special tokens with no spacing rule, as vLLM's fast ones
    do: both values give the same text. It was logged as an unknown field."""
    body = {**body, "skip_special_tokens": False, "ignore_eos": True,
            "logit_bias": {"1": 100, "2": 100}}
    texts = []
    for spaces in (True, False):
        got, warned = served(server, caplog, path,
                             {**body, "spaces_between_special_tokens": spaces})
        assert warned == [], warned
        choice = got["choices"][0]
        texts.append(choice["text"] if "text" in choice else choice["message"]["content"])
    assert texts[0] == texts[1] and "<|im_start|>" in texts[0], texts
    status, _, raw = http(server, "POST", path, json={**body,
                                                      "spaces_between_special_tokens": "no"})
    assert status == 400, raw
    assert json.loads(raw)["error"]["param"] == "spaces_between_special_tokens", raw


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 1}),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": 1}),
], ids=["chat", "responses"])
def test_an_unknown_key_of_prompt_cache_options_is_named(server, caplog, path, body):
    """prompt_cache_options was a free-form object: a key OpenAI does not name in it (ttl
    misspelt) was taken without a word, and /v1/responses echoed it in the Response as if
    it had been applied. It is named in the line as any unknown field is, and the echo
    holds OpenAI's keys alone."""
    got, warned = served(server, caplog, path, {**body, "prompt_cache_options": {
        "mode": "explicit", "ttll": "1h"}})
    assert len(warned) == 1 and "prompt_cache_options.ttll" in warned[0], warned
    if path == "/v1/responses":
        assert got["prompt_cache_options"] == {"mode": "explicit"}, got
    _, warned = served(server, caplog, path, {**body, "prompt_cache_options": {
        "mode": "implicit", "ttl": "30m"}})
    assert warned == []
