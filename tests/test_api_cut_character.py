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
