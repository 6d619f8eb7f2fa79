"""Chats of the Python API render as the HTTP API's: Engine.chat and stream_chat take
tools (the prompt /v1/chat/completions builds for the same messages and tools)."""

from __future__ import annotations

import asyncio
import json

import pytest

from live_server import LiveServer, http

from aiollm import SamplingParams
from aiollm.errors import InvalidRequest

HI = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALLED = [  # a past call and its answer: a template that knows no calls is shown them in text
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]


def on_loop(server: LiveServer, coro):
    """coro run on the server's event loop (the engine's), its result or error."""
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(60)


def test_engine_chat_takes_tools_as_the_server_renders_them(server):
    """Engine.chat and stream_chat took no tools (TypeError), where LLM.chat and
    /v1/chat/completions take them. Their prompt is the server's for the same messages and
    tools (/tokenize renders a chat request's; a completion request with tools would also
    compile their grammar, seconds on a CPU): the default model's template knows no tools,
    so they and the past call are shown in the messages. A bad tool is an InvalidRequest
    naming it, as the HTTP API's 400 does."""
    engine = server.engine
    sp = SamplingParams(max_tokens=2, temperature=0)

    async def chats():
        out = await engine.chat(CALLED, sp, tools=TOOLS)
        streamed = [d async for d in engine.stream_chat(CALLED, sp, tools=TOOLS)]
        return out, streamed

    out, streamed = on_loop(server, chats())
    status, _, raw = http(server, "POST", "/tokenize", json={"messages": CALLED, "tools": TOOLS})
    assert status == 200, raw
    assert out.prompt_token_ids == json.loads(raw)["tokens"]
    text = engine.tokenizer.decode(out.prompt_token_ids)
    assert '"name": "get_weather"' in text and "<tool_call>" in text  # the tool, the past call
    assert streamed[-1].prompt_tokens == len(out.prompt_token_ids)
    assert "".join(d.text for d in streamed) == out.text  # greedy, on the same prompt
    bad = [{"type": "function", "function": {"name": "get weather"}}]
    with pytest.raises(InvalidRequest) as e:
        on_loop(server, engine.chat(HI, sp, tools=bad))
    assert e.value.param == "tools[0].function.name"
    for no_list in (5, {"name": "get_weather"}):
        with pytest.raises(InvalidRequest, match="tools must be a list") as e:
            on_loop(server, engine.chat(HI, sp, tools=no_list))
        assert e.value.param == "tools"

    async def stream_bad():
        engine.stream_chat(HI, sp, tools=bad)

    with pytest.raises(InvalidRequest) as e:
        on_loop(server, stream_bad())
    assert e.value.param == "tools[0].function.name"
    server.wait_idle()
