"""vLLM's return_token_ids on /v1/completions and /v1/chat/completions: the prompt's token ids
and each choice's generated ids beside the text, whole and streamed (the stream sends the
prompt's ids once, in a choice's first chunk for completions and in the first chunk for chat,
and each chunk the ids it brings), as RL and evaluation clients read them."""

from __future__ import annotations

import json

from live_server import http, sse_events

PROMPTS = ["The capital of France is", "Hello"]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def post(server, path: str, body: dict) -> dict | list[dict]:
    """The answer, or a stream's chunks (the usage chunk and [DONE] left out)."""
    status, _, raw = http(server, "POST", path, json={"model": None, **body})
    assert status == 200, raw
    if not body.get("stream"):
        return json.loads(raw)
    return [c for c in map(json.loads, (e for e in sse_events(raw) if e != "[DONE]"))
            if c["choices"]]


def tokenized(server, body: dict) -> list[int]:
    status, _, raw = http(server, "POST", "/tokenize", json=body)
    assert status == 200, raw
    return json.loads(raw)["tokens"]


def test_completions_return_token_ids(server):
    body = {"prompt": PROMPTS, "n": 2, "max_tokens": 5, "temperature": 0,
            "return_token_ids": True}
    whole = post(server, "/v1/completions", body)
    tokenizer = server.engine.tokenizer
    for k, choice in enumerate(whole["choices"]):
        assert choice["prompt_token_ids"] == tokenized(server, {"prompt": PROMPTS[k // 2]})
        assert len(choice["token_ids"]) == 5, choice
        assert tokenizer.decode(choice["token_ids"]) == choice["text"], choice
    chunks = post(server, "/v1/completions", {**body, "stream": True})
    for k, choice in enumerate(whole["choices"]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == k]
        assert mine[0]["prompt_token_ids"] == choice["prompt_token_ids"], mine[0]
        assert all("prompt_token_ids" not in c for c in mine[1:]), mine
        assert sum((c["token_ids"] for c in mine), []) == choice["token_ids"], mine
    plain = post(server, "/v1/completions", {**body, "return_token_ids": False})
    assert all("token_ids" not in c and "prompt_token_ids" not in c for c in plain["choices"])


def test_chat_return_token_ids(server):
    body = {"messages": ASK, "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    whole = post(server, "/v1/chat/completions", body)
    assert whole["prompt_token_ids"] == tokenized(server, {"messages": ASK}), whole
    [choice] = whole["choices"]
    assert len(choice["token_ids"]) == whole["usage"]["completion_tokens"] == 6, choice
    assert server.engine.tokenizer.decode(choice["token_ids"]) == choice["message"]["content"]
    chunks = post(server, "/v1/chat/completions", {**body, "stream": True})
    assert chunks[0]["prompt_token_ids"] == whole["prompt_token_ids"], chunks[0]
    assert all("prompt_token_ids" not in c for c in chunks[1:]), chunks
    assert sum((c["choices"][0].get("token_ids", []) for c in chunks), []) == choice["token_ids"]
    plain = post(server, "/v1/chat/completions", {**body, "return_token_ids": False})
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0], plain


def test_chat_stream_sends_the_ids_of_text_the_tool_parser_holds_back(server):
    """A forced call's markup is held back until the output ends (here cut by max_tokens
    inside the call): no content comes, but the chunks still bring every generated id (a
    chunk with an empty delta where the parser holds all of a token's text)."""
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 16,
            "temperature": 0, "return_token_ids": True}
    whole = post(server, "/v1/chat/completions", body)
    [choice] = whole["choices"]
    assert choice["message"]["tool_calls"], choice
    assert len(choice["token_ids"]) == whole["usage"]["completion_tokens"], choice
    chunks = post(server, "/v1/chat/completions", {**body, "stream": True})
    assert sum((c["choices"][0].get("token_ids", []) for c in chunks), []) == choice["token_ids"]
