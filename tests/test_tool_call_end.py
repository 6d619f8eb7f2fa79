"""A forced tool call (tool_choice "required" or a named function), and a json_schema answer,
end right after the call or the JSON: once the grammar is complete it allows the model's end
tokens only (a single optional newline before them, or, with parallel calls, the separator of
a next call), so the request finishes with vLLM's finish_reason ("tool_calls" for "required",
"stop" for a named function and for a response format) well before max_tokens, even on a
random-weight model that writes whatever the grammar allows. A grammar that let whitespace or
text run on after the call would end these at max_tokens with finish_reason "length".
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_api_token_ids_echo import TEMPLATE, post, tiny  # noqa: F401 (the fixture)

from aiollm.api import create_app
from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.engine import Engine

TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a"], "additionalProperties": False}}}
NAMED = {"type": "function", "function": {"name": "f"}}
ASK = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 200
# one complete call of TOOL in each family's format
CALLS = {"hermes": '<tool_call>\n{"name": "f", "arguments": {"a": 3}}\n</tool_call>',
         "llama3": '{"name": "f", "parameters": {"a": 3}}',
         "mistral": '[TOOL_CALLS][{"name": "f", "arguments": {"a": 3}}]',
         "mistral_v11": '[TOOL_CALLS]f[ARGS]{"a": 3}'}
PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser()]


def _serve(tiny: str, check):
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=1024, chat_template=TEMPLATE)
        async with TestClient(TestServer(create_app(engine))) as client:
            return await check(engine, client)
    return asyncio.run(main())


def _allowed(grammars, matcher) -> set[int]:
    import xgrammar as xgr

    mask = xgr.allocate_token_bitmask(1, grammars.grammar_vocab)
    matcher.fill_next_token_bitmask(mask)
    bits = np.unpackbits(mask.numpy().view(np.uint8), bitorder="little")
    return {int(t) for t in np.flatnonzero(bits[:grammars.grammar_vocab])}


def _after_call(engine, spec, text: str):
    """The matcher of `spec`'s compiled grammar once `text` is written."""
    import xgrammar as xgr

    grammars = engine.grammars
    matcher = xgr.GrammarMatcher(grammars.compile_now(spec),
                                 override_stop_tokens=grammars.stop_ids)
    assert matcher.accept_string(text), text
    return matcher


def test_a_complete_call_allows_only_the_end(tiny):
    """After a whole call (required or named, one call; "auto" with parallel_tool_calls
    false) the grammar allows the end tokens and one newline, after which the end alone;
    with parallel calls, the end or the first characters of the next call's separator."""
    async def check(engine, client):
        g, stops = engine.grammars, set(engine.grammars.stop_ids)
        tok = engine.tokenizer
        assert stops
        for parser in PARSERS:
            call = CALLS[parser.name]
            for required in (True, False):
                m = _after_call(engine, parser.grammar([TOOL], required=required,
                                                       parallel=False), call)
                nl = _allowed(g, m) - stops
                assert stops <= _allowed(g, m), parser.name
                assert [tok.decode([t]) for t in nl] in ([], ["\n"]), (parser.name, required)
                if nl:
                    assert m.accept_string("\n") and _allowed(g, m) == stops, parser.name
            m = _after_call(engine, parser.grammar([TOOL], required=True, parallel=True), call)
            more = _allowed(g, m) - stops
            assert stops <= _allowed(g, m)
            nexts = (parser.separator, "\n")  # another call, or the closing newline
            assert all(any(s.startswith(tok.decode([t])) for s in nexts) for t in more), (
                parser.name, [tok.decode([t]) for t in more])
        return True
    assert _serve(tiny, check)


def _body(**kw) -> dict:
    return {"messages": ASK, "max_tokens": MAX_TOKENS, "temperature": 0,
            "return_token_ids": True, **kw}


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {
    "name": "a", "schema": TOOL["function"]["parameters"], "strict": True}}


@pytest.mark.parametrize("kw,finish", [
    ({"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False}, "tool_calls"),
    ({"tools": [TOOL], "tool_choice": "required"}, "tool_calls"),
    ({"tools": [TOOL], "tool_choice": NAMED}, "stop"),  # vLLM's for a named function
    ({"response_format": SCHEMA_FORMAT}, "stop"),
], ids=["required-one", "required-parallel", "named", "json_schema"])
def test_the_answer_ends_at_the_end_of_the_call(tiny, kw, finish):
    """Greedy on a random-weight model, max_tokens 200: the answer is the call (or the JSON)
    and the model's end token, with vLLM's finish_reason, far below max_tokens."""
    async def check(engine, client):
        r = await post(client, "/v1/chat/completions", _body(**kw))
        return r, set(engine.eos_ids.tolist())
    r, eos = _serve(tiny, check)
    choice = r["choices"][0]
    assert choice["finish_reason"] == finish, choice
    assert r["usage"]["completion_tokens"] < MAX_TOKENS // 2, r["usage"]
    assert choice["token_ids"][-1] in eos, choice["token_ids"]
    if "tools" in kw:
        calls = choice["message"]["tool_calls"]
        assert calls and all(c["function"]["name"] == "f" for c in calls), choice
        assert json.loads(calls[0]["function"]["arguments"])["a"] in range(10)
    else:
        assert json.loads(choice["message"]["content"])["a"] in range(10)


def test_a_named_call_on_responses_completes(tiny):
    """/v1/responses with a named function: the call, status "completed" (not "incomplete"
    for max_output_tokens), well below the limit."""
    async def check(engine, client):
        return await post(client, "/v1/responses", {
            "input": "hi", "tools": [{"type": "function", **TOOL["function"]}],
            "tool_choice": {"type": "function", "name": "f"},
            "max_output_tokens": MAX_TOKENS, "temperature": 0})
    r = _serve(tiny, check)
    assert r["status"] == "completed" and r["incomplete_details"] is None, r
    assert r["usage"]["output_tokens"] < MAX_TOKENS // 2, r["usage"]
    [call] = r["output"]
    assert call["type"] == "function_call" and call["name"] == "f", call
    assert json.loads(call["arguments"])["a"] in range(10)


def _sse(raw: str) -> list[dict]:
    """The JSON of each `data:` line of a stream (chat's or /v1/responses' events)."""
    return [json.loads(line[len("data: "):]) for line in raw.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def _both_endpoints(tiny: str, stop: list[str], stream: bool, **kw) -> tuple[str, str]:
    """The raw bodies of one chat completion and one Response, each asked for TOOL's one
    call (tool_choice "required") with the client's `stop` (and the fields `kw`), streamed
    or not."""
    async def check(engine, client):
        chat = await client.post("/v1/chat/completions", json=_body(
            tools=[TOOL], tool_choice="required", parallel_tool_calls=False, stop=stop,
            stream=stream, **kw))
        resp = await client.post("/v1/responses", json={
            "input": "hi", "tools": [{"type": "function", **TOOL["function"]}],
            "tool_choice": "required", "parallel_tool_calls": False, "stop": stop,
            "max_output_tokens": MAX_TOKENS, "temperature": 0, "stream": stream, **kw})
        assert chat.status == resp.status == 200
        return await chat.text(), await resp.text()
    return _serve(tiny, check)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_string_at_the_calls_end_tag_leaves_the_call_complete(tiny, stream):
    """A client's stop string "</tool_call>" (the server drops it from the text) ends a
    Hermes call whose arguments and JSON are whole, its end tag not written: the call is
    complete, as vLLM's Hermes parser reads a last call without its end tag. Chat says
    "tool_calls"; /v1/responses a completed call in a completed Response. Only max_tokens
    leaves a call whose markup is open incomplete; a stop is where the output chose to end."""
    chat, resp = _both_endpoints(tiny, ["</tool_call>"], stream)
    if stream:
        chunks = _sse(chat)
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        resp = _sse(resp)[-1]["response"]
    else:
        finish = json.loads(chat)["choices"][0]["finish_reason"]
        resp = json.loads(resp)
    assert finish == "tool_calls", chat[-600:]
    assert resp["status"] == "completed", resp
    [call] = resp["output"]
    assert call["type"] == "function_call" and call["status"] == "completed", call
    assert json.loads(call["arguments"])["a"] in range(10)


def _finish_args_response(chat: str, resp: str, stream: bool) -> tuple[str, str, dict]:
    """Chat's finish_reason and its one call's arguments (joined from the deltas where
    streamed), and the Response (the last event's where streamed), from _both_endpoints'."""
    if stream:
        chunks = [c for c in _sse(chat) if c["choices"]]
        args = "".join(f["function"].get("arguments") or "" for c in chunks
                       for f in c["choices"][0]["delta"].get("tool_calls") or [])
        return chunks[-1]["choices"][0]["finish_reason"], args, _sse(resp)[-1]["response"]
    choice = json.loads(chat)["choices"][0]
    [call] = choice["message"]["tool_calls"]
    return choice["finish_reason"], call["function"]["arguments"], json.loads(resp)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_string_inside_a_calls_arguments_leaves_the_response_incomplete(tiny, stream):
    """A client's stop string that matches inside a call's arguments ('"a"', the key of
    TOOL's one argument) ends the output there: the call keeps its name and the arguments
    written so far, and says it was cut, on both endpoints alike. Chat: finish_reason "stop"
    (not "tool_calls": the call is not whole). /v1/responses: the function_call item
    "incomplete", and the Response too (it was "completed" around a call whose arguments
    are no JSON, which an agent loop would run), with no reason OpenAI's list names (a stop
    string is none of max_output_tokens or content_filter)."""
    chat, resp = _both_endpoints(tiny, ['"a"'], stream)
    finish, args, resp = _finish_args_response(chat, resp, stream)
    assert finish == "stop", chat[-600:]
    assert args.strip() == "{", chat[-600:]  # cut before the key the stop string matched
    assert resp["status"] == "incomplete", resp
    assert resp["incomplete_details"] == {"reason": None}, resp
    [call] = resp["output"]
    assert call["type"] == "function_call" and call["status"] == "incomplete", call
    assert call["name"] == "f" and call["arguments"].strip() == "{", call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_kept_stop_string_that_closes_the_arguments_leaves_the_call_incomplete(tiny, stream):
    """A stop string "}" kept in the text (include_stop_str_in_output) ends the output at
    the arguments' closing brace, before the call's own: the arguments parse, but the
    output ended inside the call, which is no complete call. Chat: finish_reason "stop"
    (it said "tool_calls", a complete call), streamed and whole alike; /v1/responses: the
    call and the Response "incomplete" (they said "completed")."""
    chat, resp = _both_endpoints(tiny, ["}"], stream, include_stop_str_in_output=True)
    finish, args, resp = _finish_args_response(chat, resp, stream)
    assert finish == "stop", chat[-600:]
    assert json.loads(args)["a"] in range(10), args  # the arguments' "}" kept: whole JSON
    assert resp["status"] == "incomplete", resp
    [call] = resp["output"]
    assert call["type"] == "function_call" and call["status"] == "incomplete", call
    assert json.loads(call["arguments"])["a"] in range(10), call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_string_inside_a_calls_head_leaves_the_response_incomplete(tiny, stream):
    """A client's stop string that matches inside a call's head ('"name"', before the name
    is written) cuts the call before it is one: the reading drops it (no call, no markup
    as content), so the Response has no call and an empty message, which it said was
    "completed": an agent loop read it as the model's final answer, though the output
    (tool_choice "required": calls only) ended inside a call. It is "incomplete", as for
    a stop inside the arguments, whole and streamed alike."""
    async def check(engine, client):
        resp = await client.post("/v1/responses", json={
            "input": "hi", "tools": [{"type": "function", **TOOL["function"]}],
            "tool_choice": "required", "parallel_tool_calls": False, "stop": ['"name"'],
            "max_output_tokens": MAX_TOKENS, "temperature": 0, "stream": stream})
        assert resp.status == 200
        return await resp.text()
    resp = _serve(tiny, check)
    resp = _sse(resp)[-1]["response"] if stream else json.loads(resp)
    assert not [o for o in resp["output"] if o["type"] == "function_call"], resp
    assert resp["status"] == "incomplete", resp
    assert resp["incomplete_details"] == {"reason": None}, resp


# a sampled answer of the tiny model, tool_choice "required" with parallel calls, that
# writes two calls: a stop string kept at the second one's opening ends it in that call
TWO_CALLS = {"temperature": 1.0, "seed": 5, "tool_choice": "required",
             "stop": ["</tool_call>\n<tool_call>"], "include_stop_str_in_output": True}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_in_a_second_calls_opening_is_no_tool_calls_finish(tiny, stream):
    """A stop that ends the output in a second call's opening, before its name (the first
    call whole), ended it inside a call: /v1/responses says "incomplete" (its first call
    "completed"), and chat's finish_reason is "stop" as for a stop inside any call's JSON;
    it said "tool_calls", an answer of whole calls only, whole and streamed alike."""
    async def check(engine, client):
        chat = await client.post("/v1/chat/completions", json={
            "messages": ASK, "tools": [TOOL], "max_tokens": MAX_TOKENS, "stream": stream,
            **TWO_CALLS})
        resp = await client.post("/v1/responses", json={
            "input": "hi", "tools": [{"type": "function", **TOOL["function"]}],
            "max_output_tokens": MAX_TOKENS, "stream": stream, **TWO_CALLS})
        assert chat.status == resp.status == 200
        return await chat.text(), await resp.text()
    chat, resp = _serve(tiny, check)
    if stream:
        chunks = [c for c in _sse(chat) if c["choices"]]
        last = chunks[-1]["choices"][0]
        heads = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls") or []
                 if f.get("id")]
        resp = _sse(resp)[-1]["response"]
    else:
        last = json.loads(chat)["choices"][0]
        heads = last["message"]["tool_calls"]
        resp = json.loads(resp)
    assert last["stop_reason"] == TWO_CALLS["stop"][0], chat[-600:]  # a second call begun
    assert len(heads) == 1 and heads[0]["function"]["name"] == "f", heads
    assert last["finish_reason"] == "stop", chat[-600:]
    assert resp["status"] == "incomplete", resp
    [call] = resp["output"]
    assert call["type"] == "function_call" and call["status"] == "completed", call
