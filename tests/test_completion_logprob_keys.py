"""Legacy completions logprobs: each token's own entry in `top_logprobs` is keyed by the
same text as `tokens` gives it, as vLLM's are (both are its Logprob's decoded_token), so a
client reads `top_logprobs[i][tokens[i]]`. A token holding part of a UTF-8 character (CJK
text, emoji in byte-level BPE) was keyed by its bytes as \\xNN escapes while `tokens`
gave its share of the text ("" or the whole character)."""

from __future__ import annotations

import json

import pytest
from live_server import http

# characters of three and four UTF-8 bytes, which SmolLM2's byte-level BPE splits
TEXT = "你好世界 🦙🦙 naïve"


def _logprobs(server, **over) -> dict:
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": TEXT, "max_tokens": 4, "temperature": 0, "logprobs": 2, **over})
    assert status == 200, raw[:300]
    return json.loads(raw)["choices"][0]["logprobs"]


def _check_keys(lp: dict) -> None:
    for i, (token, value, top) in enumerate(zip(lp["tokens"], lp["token_logprobs"],
                                                lp["top_logprobs"])):
        if top is None:  # the prompt's first token
            continue
        assert token in top, (i, token, top)
        assert top[token] == value, (i, token, top)


def test_echoed_prompt_tokens_are_their_own_keys(server):
    lp = _logprobs(server, echo=True)
    # the case the test is about: the prompt's split characters are among the tokens
    assert "" in lp["tokens"], lp["tokens"]
    assert "".join(lp["tokens"]).startswith(TEXT)
    _check_keys(lp)


@pytest.mark.parametrize("stream", [False, True])
def test_generated_byte_tokens_are_their_own_keys(server, stream):
    """Byte tokens forced by logit_bias: 0xE4 0xBD 0xA0 is 你, one byte a token."""
    vocab = json.loads(http(server, "POST", "/tokenize", json={"prompt": "你"})[2])["tokens"]
    assert len(vocab) == 2, vocab  # its bytes in two tokens (the test's premise)
    bias = {str(t): 100 for t in vocab}
    body = {"prompt": "Hi", "max_tokens": 5, "temperature": 0, "logprobs": 1,
            "logit_bias": bias, "ignore_eos": True}
    if not stream:
        _check_keys(_logprobs(server, **body))
        return
    status, _, raw = http(server, "POST", "/v1/completions", json={**body, "stream": True})
    assert status == 200, raw[:300]
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            if choice.get("logprobs"):
                _check_keys(choice["logprobs"])
