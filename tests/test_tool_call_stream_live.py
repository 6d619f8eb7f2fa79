"""Tool calls on /v1/chat/completions, streamed and whole, for outputs whose text the test
chooses: the engine holds each request to a regex of that text (`_forced`), unseen by the
API, so a random-weight model writes call markup, and text around it, exactly, and the
tool parser reads it as the model's own output under tool_choice "auto". (A client's
format beside tools would make such text that format's content, read for no calls:
aiollm/api/tools_or_format.py.) The stream's content and calls join to the whole
answer's, and text that is no call stays content."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_api_token_ids_echo import TEMPLATE, post, tiny  # noqa: F401 (the fixture)

from aiollm.api import create_app
from aiollm.engine import Engine
from aiollm.sampling_params import Constraint, GrammarSpec

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = '{"name": "get_weather", "parameters": {"city": "P"}}'


def _answers(tiny: str, texts: list[str]) -> list[tuple[dict, dict]]:
    """For each text, (the whole answer's message, the stream's joined message) of a
    Llama 3 tools request under "auto" whose output is that text."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=1024, chat_template=TEMPLATE,
                        tool_call_parser="llama3")
        out = []
        forced = _forced(engine)
        async with TestClient(TestServer(create_app(engine))) as client:
            for text in texts:
                forced[0] = text
                body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                        "max_tokens": 100, "temperature": 0}
                whole = (await post(client, "/v1/chat/completions", body))["choices"][0]
                chunks = await post(client, "/v1/chat/completions", {**body, "stream": True})
                out.append((_message(whole), _joined(chunks)))
        return out
    return asyncio.run(main())


def _forced(engine: Engine) -> list[str]:
    """A one-element list whose text every request `engine` generates or streams from then
    on is held to (a regex of it in place of the request's constraint: the tools' grammar),
    as the model's own output."""
    forced = [""]
    generate, stream = engine.generate, engine.stream

    def held(params):
        regex = GrammarSpec("regex", re.escape(forced[0]), "guided_regex")
        return dataclasses.replace(params, constraint=Constraint(regex))

    engine.generate = lambda ids, params, **kw: generate(ids, held(params), **kw)
    engine.stream = lambda ids, params, **kw: stream(ids, held(params), **kw)
    return forced


def _message(choice: dict) -> dict:
    m = choice["message"]
    return {"content": m["content"] or "", "finish_reason": choice["finish_reason"],
            "calls": [(c["function"]["name"], c["function"]["arguments"])
                      for c in m.get("tool_calls") or []]}


def _joined(chunks: list[dict]) -> dict:
    content, calls, finish = "", [], None
    for chunk in chunks:
        for c in chunk["choices"]:
            delta = c["delta"]
            content += delta.get("content") or ""
            for f in delta.get("tool_calls") or []:
                if f["index"] == len(calls):
                    calls.append([f["function"]["name"], ""])
                calls[f["index"]][1] += f["function"]["arguments"]
            finish = c["finish_reason"] or finish
    return {"content": content, "finish_reason": finish, "calls": [tuple(c) for c in calls]}


# output text: (the content, the calls) of the answer, streamed and whole
WANT = {"Sure {" + CALL: ("Sure {", [("get_weather", '{"city": "P"}')]),
        "Hi <|python_tag|>" + CALL: ("Hi", [("get_weather", '{"city": "P"}')]),
        'Use {"name": 5} here.': ('Use {"name": 5} here.', []),
        "Checking." + CALL + "\n\nDone.": ("Checking.\n\nDone.", [("get_weather", '{"city": "P"}')]),
        "x " + CALL + " A " + CALL + " B": (
            "x  A  B", [("get_weather", '{"city": "P"}')] * 2),
        "x " + CALL + ' A {"name": "get_weather"} B': (
            "x  A  B", [("get_weather", '{"city": "P"}'), ("get_weather", "{}")]),
        "<|python_tag|>" + CALL + "<|python_tag|>" + CALL: (
            "", [("get_weather", '{"city": "P"}')] * 2)}


@pytest.fixture(scope="module")
def answers(tiny) -> dict[str, tuple[dict, dict]]:
    return dict(zip(WANT, _answers(tiny, list(WANT))))


@pytest.mark.parametrize("text", WANT, ids=["brace-before-call", "python-tag", "no-call",
                                             "text-after-call", "call-shaped-text",
                                             "head-that-goes-on", "python-tag-twice"])
def test_stream_and_whole_answer_join_to_the_same_text(answers, text):
    """Text before a call ending with '{' (a marker's start), Llama 3's <|python_tag|> before
    a call (as text here, where the tokenizer has no such token), a marker that no call
    follows, and text after a call: the stream sent the '{' and the tag as content where
    the whole answer dropped them, both dropped the text from `{"name": ` on where no call
    came, and both dropped the paragraph break between a call and the text after it. A
    call after text, or after a second <|python_tag|> (Llama 3.2's parallel calls), is a
    call wherever it stands, as vLLM's llama3_json reads it (it was content, or a call
    only where the reader took it for one cut at the output's end)."""
    whole, stream = answers[text]
    assert whole == stream, (whole, stream)
    assert (whole["content"], whole["calls"]) == WANT[text], whole
    assert whole["finish_reason"] == ("tool_calls" if WANT[text][1] else "stop"), whole
