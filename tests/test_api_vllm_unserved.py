"""vLLM request fields that change the output but that the server does not serve
(`logits_processors`, `prompt_embeds`): refused with a 400 naming them, as vLLM answers them
unless started with the flag that enables them, rather than ignored (they were logged as
unknown and the request served as if they had not been sent). And the parameter errors of
LightLLM's /generate say what it takes."""

from __future__ import annotations

import json

import pytest
from live_server import http, refused_status

C, CHAT, G = "/v1/completions", "/v1/chat/completions", "/generate"
HI = [{"role": "user", "content": "hi"}]
BODIES = {C: {"prompt": "Hi", "max_tokens": 1}, CHAT: {"messages": HI, "max_tokens": 1}}


def error_of(status: int, raw: bytes, param: str | None, path: str = C) -> str:
    """The message of a refusal naming `param` (a 400; at LightLLM's `path`, a 417)."""
    err = json.loads(raw)["error"]
    assert status == refused_status(path) and err["param"] == param, (status, err)
    return err["message"]


@pytest.mark.parametrize("path", [C, CHAT])
def test_logits_processors_are_refused(server, path):
    """vLLM's per-request logits processors (qualified names it loads) are a 400 there
    unless --logits-processor-pattern allows them; none is loaded here, so one sent is
    refused, not ignored. None and an empty list ask for nothing."""
    for value in (None, []):
        status, _, raw = http(server, "POST", path,
                              json={**BODIES[path], "logits_processors": value})
        assert status == 200, raw
    for value in (["my_module.MyProcessor"], [{"qualname": "m.P", "args": [1]}]):
        msg = error_of(*http(server, "POST", path, json={
            **BODIES[path], "logits_processors": value})[::2], "logits_processors")
        assert "not served" in msg, msg


def test_prompt_embeds_are_refused(server):
    """vLLM's completions take prompt embeddings (with --enable-prompt-embeds, else a 400):
    the server reads token ids and text only, so embeddings sent are refused, not dropped
    (the answer had no choice for them)."""
    status, _, raw = http(server, "POST", C, json={**BODIES[C], "prompt_embeds": None})
    assert status == 200, raw
    for value in ("AAAA", ["AAAA", "BBBB"]):
        msg = error_of(*http(server, "POST", C, json={
            **BODIES[C], "prompt_embeds": value})[::2], "prompt_embeds")
        assert "not served" in msg and "prompt" in msg, msg


@pytest.mark.parametrize("top_k", [0, -2, -100])
def test_generate_top_k_error_says_what_it_takes(server, top_k):
    """/generate takes top_k -1 (off) or >= 1, as LightLLM does: every refused value is told
    so. -2 was told "-1 or 0 (off)", the OpenAI endpoints' rule, and 0 is refused here."""
    msg = error_of(*http(server, "POST", G, json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 1, "do_sample": True,
                                       "top_k": top_k}})[::2],
        "parameters.top_k", G)
    assert "-1 (off)" in msg and "or 0" not in msg and str(top_k) in msg, msg
