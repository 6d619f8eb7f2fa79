"""An output that stops inside a multibyte character, on the OpenAI endpoints, through the
real server: the incomplete character is dropped, as vLLM's detokenizer never flushes one
(it ended the text as the U+FFFD the tokenizer decodes it to), from the streamed deltas and
the unstreamed text alike, so that the stream's text joins to the text the same request
gets unstreamed. (LightLLM's endpoints drop it too, as its detokenizer does:
tests/test_lightllm_wire.py.)"""

from __future__ import annotations

import json

import pytest
from live_server import http, sse_events

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_cut_character_is_dropped_and_the_stream_joins_to_the_text(server, path):
    first = server.engine.tokenizer.encode("🚀", add_special_tokens=False)[0]
    assert server.engine.tokenizer.decode([first]) == "\ufffd"  # the case at hand
    body = {"max_tokens": 3, "ignore_eos": True, "allowed_token_ids": [first],
            **({"prompt": "hi"} if path == "/v1/completions" else {"messages": HI})}
    status, _, raw = http(server, "POST", path, json=body)
    assert status == 200, raw
    choice = json.loads(raw)["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    status, _, raw = http(server, "POST", path, json={**body, "stream": True})
    assert status == 200, raw
    chunks = [json.loads(e) for e in sse_events(raw) if e != "[DONE]"]
    deltas = [c["choices"][0].get("text", c["choices"][0].get("delta", {}).get("content"))
              or "" for c in chunks if c["choices"]]
    assert "".join(deltas) == text, (deltas, text)
    # three tokens that are each a character's first byte: no whole character
    assert text == "", text


@pytest.mark.parametrize("char", ["\ufffd", "🚀"])
def test_chat_logprob_bytes_are_each_tokens_own_next_to_a_held_back_character(server, char):
    """Tokens the detokenizer holds back as a possibly unfinished character: one whose bytes
    decode to U+FFFD (a real one, whole, or a character's first bytes), then "a" or the
    end. Each chat logprob gives its token's own bytes, and they decode to the content (with
    the held-back character dropped at the end). A whole U+FFFD token that the end dropped
    gave no bytes ([]), and the token after one took its bytes as well as its own."""
    tok = server.engine.tokenizer
    held = tok.encode(char, add_special_tokens=False)[0]
    a = tok.encode("a", add_special_tokens=False)[0]
    assert tok.decode([held]) == "\ufffd"  # the case at hand
    body = {"messages": HI, "max_tokens": 8, "ignore_eos": True, "allowed_token_ids": [held, a],
            "temperature": 100, "seed": 3, "n": 4, "logprobs": True}
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=body)
    assert status == 200, raw
    seen = set()
    for choice in json.loads(raw)["choices"]:
        entries = choice["logprobs"]["content"]
        seen.add(tuple(e["token"] == "a" for e in entries))
        for e in entries:
            assert bytes(e["bytes"]).decode("utf-8", "backslashreplace") == e["token"], e
        joined = b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace")
        assert joined.rstrip("\ufffd") == choice["message"]["content"], (joined, choice)
    # the case at hand: the held token before "a" and at the end
    assert any(s[-1] is False and True in s for s in seen), seen
    assert any(s[k:k + 2] == (False, True) for s in seen for k in range(len(s))), seen
