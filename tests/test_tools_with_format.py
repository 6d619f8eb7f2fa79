"""Tools beside a response format (or vLLM's guided_json / structured_outputs) on
/v1/chat/completions, against the real server: under tool_choice "auto" the output is calls or
the format's content, the model's pick; under "required" or a named function calls only;
structural tags beside tools refused. The model's pick is forced with a logit bias on the first
token of one branch, so both are exercised deterministically. Where the grammar and the bias
force every token of the answer, a tiny random model with the default model's tokenizer serves
the request (`hermes`); json_object's content is free, so it stays on the default model."""

from __future__ import annotations

import functools
import json
import time
from typing import Literal

import pydantic
import pytest
from live_server import at_once, http, sse_events

ASK = [{"role": "user", "content": "Weather in Paris? Answer yes or no."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"], "additionalProperties": False}}}
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
NAMED = {"type": "function", "function": {"name": "get_weather"}}  # tool_choice naming it
FORMATS = {
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": ANSWER}}},
    "json_object": {"response_format": {"type": "json_object"}},
    "guided_json": {"guided_json": ANSWER},
    "structured_outputs": {"structured_outputs": {"choice": ["yes", "no"]}},
}


@pytest.fixture(scope="module")
def hermes(server, tmp_path_factory):
    """A tiny random Llama (dummy weights) with the default model's tokenizer, whose template
    names no call format (the hermes parser, as the default model's): for requests whose
    every token the grammar (and a logit bias) forces, the model's weights do not matter."""
    from live_server import tiny_server

    srv, _ = tiny_server(server, tmp_path_factory.mktemp("hermes"), lambda tok: None,
                         "<tool_call>")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def hermes_client(hermes):
    """The official `openai` client on the `hermes` server."""
    from live_server import openai_client

    return openai_client(hermes)


def _call_first(server) -> dict[str, int]:
    """A logit bias that makes the model open a call: toward the first token of a call's
    marker (the marker is several tokens)."""
    t = server.engine.tokenizer.encode("<tool_call>", add_special_tokens=False)[0]
    return {str(t): 100}


def _content_first(server) -> dict[str, int]:
    """A logit bias that keeps the model from opening a call: every token that could begin
    the marker banned (a bias toward the content's first token, "{", would hold in its
    strings too)."""
    vocab = server.engine.tokenizer.get_vocab()
    return {str(t): -100 for piece, t in vocab.items() if "<tool_call>".startswith(piece)}


def _post(server, body: dict) -> dict:
    """The first choice's message and finish reason, from the whole answer or joined from
    the stream's chunks: {"content", "tool_calls", "finish_reason"}."""
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=body)
    assert status == 200, raw
    if not body.get("stream"):
        choice = json.loads(raw)["choices"][0]
        return {**choice["message"], "finish_reason": choice["finish_reason"]}
    content, calls, finish = None, {}, None
    for data in sse_events(raw)[:-1]:
        for c in json.loads(data)["choices"]:
            d = c["delta"]
            if d.get("content"):
                content = (content or "") + d["content"]
            for tc in d.get("tool_calls") or []:
                got = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                got["name"] += tc.get("function", {}).get("name") or ""
                got["arguments"] += tc.get("function", {}).get("arguments") or ""
            finish = c["finish_reason"] or finish
    return {"content": content, "finish_reason": finish,
            "tool_calls": [{"function": calls[i]} for i in sorted(calls)] or None}


# room for a call's JSON with the whitespace the tiny random model writes in it (the calls'
# grammar lets each run of it hold up to 16 tokens, and the model takes them)
ROOM = 120


def _body(server, fmt: str, call: bool, stream: bool, **kw) -> dict:
    """A request of tools and format `fmt`, biased to open a call or not."""
    bias = _call_first(server) if call else _content_first(server)
    return {"messages": ASK, "tools": [WEATHER], "max_tokens": ROOM, "temperature": 0,
            "stream": stream, "logit_bias": bias, **FORMATS[fmt], **kw}


def test_auto_answers_calls_when_the_model_opens_one(hermes):
    """The first token opens a call: the grammar holds the rest to a call of one tool (one
    call: parallel_tool_calls false), read into tool_calls, whole or streamed (it was a 400).
    Under "required" or a named function the format shapes a content, which a calls-only
    answer has none of: calls, as OpenAI answers (it was a 400). The requests run at once
    (the server batches them), for time."""
    asked = [("json_schema", False, "auto"), ("guided_json", True, "auto"),
             ("json_schema", False, "required"), ("json_schema", False, "named")]
    bodies = [_body(hermes, fmt, True, stream, parallel_tool_calls=False,
                    tool_choice=choice if choice in ("auto", "required") else NAMED)
              for fmt, stream, choice in asked]
    for how, m in zip(asked, at_once(*(functools.partial(_post, hermes, b) for b in bodies))):
        # a forced named call finishes "stop", as OpenAI and vLLM answer it
        finish = "stop" if how[2] == "named" else "tool_calls"
        assert m["finish_reason"] == finish and not m["content"], (how, m)
        [call] = m["tool_calls"]
        assert call["function"]["name"] == "get_weather", (how, m)
        assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome"), (how, m)


@pytest.mark.parametrize("fmt,stream", [(f, False) for f in FORMATS] + [("json_schema", True)])
def test_auto_answers_the_format_when_the_model_opens_content(server, hermes, fmt, stream):
    """The first token opens the format's content: the grammar holds the rest to it, and it
    is the message's content (it was a 400)."""
    srv = server if fmt == "json_object" else hermes  # a free object needs a model's answer
    m = _post(srv, _body(srv, fmt, False, stream))
    assert m["finish_reason"] == "stop" and not m.get("tool_calls"), m
    if fmt == "structured_outputs":
        assert m["content"] in ("yes", "no"), m
    else:
        answer = json.loads(m["content"])
        assert isinstance(answer, dict), m
        if fmt != "json_object":
            assert answer["answer"] in ("yes", "no") and len(answer) == 1, m


def test_none_answers_the_format_only(hermes):
    """tool_choice "none": the format alone, even where the model would open a call."""
    m = _post(hermes, _body(hermes, "json_schema", True, False, tool_choice="none"))
    assert m["finish_reason"] == "stop" and not m.get("tool_calls"), m
    assert json.loads(m["content"])["answer"] in ("yes", "no"), m


@pytest.mark.parametrize("choice", [None, "required", NAMED], ids=["absent", "required", "named"])
def test_structural_tag_beside_tools_is_refused(server, choice):
    """A structural tag shapes the whole output, calls included: beside tools it is a 400
    that names the tool_choice as sent."""
    body = {"messages": ASK, "max_tokens": 4, "tools": [WEATHER], "structured_outputs": {
        "structural_tag": {"type": "structural_tag", "format": {
            "type": "const_string", "value": "hi"}}}}
    if choice:
        body["tool_choice"] = choice
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=body)
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "tool_choice", err
    assert ('"required"' in err["message"]) == (choice == "required"), err
    assert ("absent" in err["message"]) == (choice is None), err
    assert ('"get_weather"' in err["message"]) == (choice is NAMED), err


@pytest.mark.parametrize("field,value", [
    ("guided_json", {"type": "object", "not": {"required": ["a"]}}),  # not enforced
    ("guided_grammar", 'root ::= "a" |'),  # does not parse
    ("guided_regex", "\\Ayes"),  # an escape xgrammar reads as its letter
])
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_bad_format_beside_tools_names_its_field(server, field, value, choice):
    """The format is checked as when it is alone, even where calls only will answer: the
    400 names its field."""
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 4, "tools": [WEATHER], "tool_choice": choice,
        field: value})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == field, err


class Answer(pydantic.BaseModel):
    answer: str = pydantic.Field(pattern="^(yes|no)$")


class GetWeather(pydantic.BaseModel):
    city: Literal["Paris", "Rome"]


@pytest.mark.parametrize("call", [True, False], ids=["call", "content"])
def test_sdk_parse_with_tools(hermes_client, hermes, call):
    """The openai SDK's parse(response_format=Model, tools=[...]), as agent frameworks send
    it: a call parsed into its tool's model, or content parsed into the format's."""
    import openai

    r = hermes_client.chat.completions.parse(
        model=None, messages=ASK, response_format=Answer, max_tokens=ROOM, temperature=0,
        tools=[openai.pydantic_function_tool(GetWeather)], parallel_tool_calls=False,
        logit_bias=_call_first(hermes) if call else _content_first(hermes))
    m = r.choices[0].message
    if not call:
        assert r.choices[0].finish_reason == "stop" and isinstance(m.parsed, Answer), m
        assert not m.tool_calls, m
    else:
        assert r.choices[0].finish_reason == "tool_calls" and m.parsed is None, m
        [call] = m.tool_calls
        assert isinstance(call.function.parsed_arguments, GetWeather), m


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_named_call_finishes_as_vllm_answers_it_whole_and_streamed(hermes, stream):
    """A forced named call: "stop" once its call is complete, in every one of n choices;
    "length" where max_tokens cut it; and the stream's finish agrees with the whole answer's."""
    ask = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, "temperature": 1.0,
           "seed": 3, "stream": stream}
    (status, _, raw), cut = at_once(  # at once (the server batches them), for time
        lambda: http(hermes, "POST", "/v1/chat/completions",
                     json={**ask, "n": 2, "max_tokens": 60}),
        lambda: _post(hermes, {**ask, "max_tokens": 5}))
    assert status == 200, raw
    if stream:
        finishes = {c["index"]: c["finish_reason"] for data in sse_events(raw)[:-1]
                    for c in json.loads(data)["choices"] if c["finish_reason"]}
    else:
        finishes = {c["index"]: c["finish_reason"] for c in json.loads(raw)["choices"]}
    assert finishes == {0: "stop", 1: "stop"}, raw
    assert cut["finish_reason"] == "length", cut


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_cut_named_call_is_still_the_call_as_vllm_answers_it(hermes, stream):
    """A named call that max_tokens cut is that call, with the arguments text written so far
    ("" before any), as vLLM answers a named tool_choice: its output is the arguments alone,
    given as the call of the named function whatever was written. A cut before the call's
    name was complete (its marker, or part of its head) answered no call at all."""
    ask = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, "temperature": 0,
           "stream": stream}
    cuts = (1, 7, 18)  # the whole answer and the cut ones at once, for time
    whole, *answers = at_once(*(functools.partial(_post, hermes, {**ask, "max_tokens": n})
                                for n in (60, *cuts)))
    [call] = whole["tool_calls"]
    done = call["function"]["arguments"]
    assert json.loads(done)["city"] in ("Paris", "Rome"), whole
    for max_tokens, cut in zip(cuts, answers):
        assert cut["finish_reason"] == "length" and not cut["content"], cut
        assert len(cut.get("tool_calls") or []) == 1, cut
        [call] = cut["tool_calls"]
        assert call["function"]["name"] == "get_weather", cut
        arguments = call["function"]["arguments"]
        assert done.startswith(arguments) and len(arguments) < len(done), cut
        if max_tokens < 14:  # the head ("<tool_call>\n{"name": "get_weather", ") unwritten
            assert arguments == "", cut


def test_sdk_stream_helper_and_parse_take_a_named_call(hermes_client):
    """The openai SDK's stream helper and parse() with a forced named call of a strict tool:
    the call is parsed into its tool's model and the answer finishes "stop", both ways."""
    import openai

    ask = dict(model=None, messages=ASK, max_tokens=60, temperature=0,
               tools=[openai.pydantic_function_tool(GetWeather)],
               tool_choice={"type": "function", "function": {"name": "GetWeather"}})

    def stream_it():
        with hermes_client.chat.completions.stream(**ask) as s:
            done = [e for e in s if e.type == "tool_calls.function.arguments.done"]
            return done, s.get_final_completion()

    (done, streamed), parsed = at_once(stream_it,
                                       lambda: hermes_client.chat.completions.parse(**ask))
    for r in (streamed, parsed):
        assert r.choices[0].finish_reason == "stop", r
        [call] = r.choices[0].message.tool_calls
        assert isinstance(call.function.parsed_arguments, GetWeather), r
    assert [e.parsed_arguments for e in done] == [
        streamed.choices[0].message.tool_calls[0].function.parsed_arguments]


SLOW = "slow_to_compile"  # a property name: a grammar holding it compiles until released


@pytest.fixture
def slow_part(monkeypatch):
    """xgrammar's compilations (of a JSON schema, an EBNF grammar or a structural tag) of any
    grammar whose text holds SLOW made to wait until the yielded event is set: a part that
    compiles for minutes, alone or inside a grammar that embeds it. At the end it is set,
    and once those compilations have returned their grammars are dropped from the process's
    cache (the next test would find them compiled)."""
    import threading

    import xgrammar as xgr

    from aiollm.engine import grammar

    release, running, lock = threading.Event(), [0], threading.Lock()

    def held(real):
        def compile_(self, text, *args, **kwargs):
            if SLOW not in str(text):
                return real(self, text, *args, **kwargs)
            with lock:
                running[0] += 1
            try:
                release.wait(30)
                return real(self, text, *args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1
        return compile_

    for name in ("compile_json_schema", "compile_grammar", "compile_structural_tag"):
        monkeypatch.setattr(xgr.GrammarCompiler, name, held(getattr(xgr.GrammarCompiler, name)))
    yield release
    release.set()
    deadline = time.monotonic() + 10
    while running[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # from the compile's return to the cache's insert
    with grammar._CACHE.lock:
        for key in [k for k in grammar._CACHE.compiled if SLOW in str(k)]:
            del grammar._CACHE.compiled[key]


def test_a_compile_timeout_names_the_field_whose_grammar_is_slow(hermes, slow_part):
    """Tools beside a response format compile as one grammar, named "tools" in its errors:
    a format too slow to compile was a 400 telling the client to simplify its tools. The
    format is compiled alone first (cached, as sent without tools), so the field named is
    the one that is slow: the format's when it does not compile alone in time, "tools"
    when the format does and the grammar with the tools does not."""
    from live_server import LiveServer

    def slow(i: int) -> dict:  # one per case: a released compilation is cached
        return {"type": "object", "properties": {f"{SLOW}_{i}": {"type": "string"}}}

    cases = [  # (tools, format fields, the field named)
        ([WEATHER], {"response_format": {"type": "json_schema", "json_schema": {
            "name": "slow", "schema": slow(1)}}}, "response_format.json_schema.schema"),
        ([WEATHER], {"guided_json": slow(2)}, "guided_json"),
        ([{"type": "function", "function": {"name": "slow", "parameters": slow(3)}}],
         FORMATS["json_schema"], "tools"),
    ]
    # the tiny model: what is timed is the grammar's compilation, for the tokenizer alone
    srv = LiveServer(**{**hermes.engine_options, "grammar_compile_timeout": 0.5}).start()
    try:
        for tools, fmt, param in cases:
            status, _, raw = http(srv, "POST", "/v1/chat/completions", json={
                "messages": ASK, "tools": tools, "max_tokens": 4, **fmt})
            err = json.loads(raw)["error"]
            assert status == 400 and err["param"] == param, (param, err)
            assert err["message"].startswith(f"{param}: the grammar did not compile within "
                                             "0.5 s"), err
            slow_part.set()  # its compilation ends: the next case has the threads to itself
            time.sleep(0.2)
            slow_part.clear()
    finally:
        srv.close()


# a content the format forces that holds a call's markup after text of its own: only the
# format's branch of the grammar writes text before a call (the calls' branch opens with one)
QUOTED = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
QUOTING = {"guided_regex": r'Answer: <tool_call>\n\{"name": "get_weather", "arguments": '
                           r'\{"city": "Paris"\}\}\n</tool_call>'}
# a JSON answer that holds a Llama 3 call's JSON as a value (the grammar writes JSON with
# ", " and ": ", as the call's head is written)
HOLDER = {"type": "object", "properties": {"answer": {
    "type": "object", "properties": {"name": {"const": "get_weather"}, "parameters": {
        "type": "object", "properties": {"city": {"const": "Paris"}}, "required": ["city"],
        "additionalProperties": False}},
    "required": ["name", "parameters"], "additionalProperties": False}},
    "required": ["answer"], "additionalProperties": False}
HELD = '{"answer": {"name": "get_weather", "parameters": {"city": "Paris"}}}'
# a JSON list answer whose one item is spelt as a Llama 3 call
LISTER = {"type": "array", "items": HOLDER["properties"]["answer"], "minItems": 1,
          "maxItems": 1}
LISTED = '[{"name": "get_weather", "parameters": {"city": "Paris"}}]'


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_format_s_content_that_quotes_a_call_is_content(hermes, stream):
    """tools with tool_choice "auto" beside a format (guided_regex here) whose content holds
    a call's markup after text: the model took the format's branch (the calls' branch has
    nothing before the first call), so the output is the content the client shaped, call
    markup and all, and no call (it was "Answer:" and a get_weather call the client never
    let the model choose). vLLM runs its parser on any output there; its format holds the
    whole output, so no call can be written but one the format spells, which it then reads
    as one: aiollm reads a call only where the output opens with one, as the calls' branch
    of its grammar writes it."""
    m = _post(hermes, {"messages": ASK, "tools": [WEATHER], "max_tokens": 60,
                       "temperature": 0, "stream": stream, **QUOTING})
    assert m["finish_reason"] == "stop" and not m.get("tool_calls"), m
    assert m["content"] == "Answer: " + QUOTED, m


@pytest.fixture(scope="module")
def llama3_server(server, tmp_path_factory):
    """A tiny random Llama whose template writes Llama 3's calls (the llama3 parser)."""
    from live_server import tiny_server

    srv, _ = tiny_server(server, tmp_path_factory.mktemp("llama3"), lambda tok: None,
                         "<|python_tag|>")
    yield srv
    srv.close()


def _events_data(raw: bytes) -> list[dict]:
    """The data of each event of a /v1/responses stream (an "event:" line before each)."""
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_json_schema_answer_holding_a_llama3_call_is_content(llama3_server, api, stream):
    """A json_schema answer beside tools ("auto") whose value is a Llama 3 call's JSON: the
    JSON the client asked for, whole, on both endpoints (it was the call, and the content
    '{"answer": }', no JSON)."""
    if api == "chat":
        m = _post(llama3_server, {
            "messages": ASK, "tools": [WEATHER], "max_tokens": 60, "temperature": 0,
            "stream": stream, "response_format": {"type": "json_schema", "json_schema": {
                "name": "holder", "schema": HOLDER}}})
        assert m["finish_reason"] == "stop" and not m.get("tool_calls"), m
        assert m["content"] == HELD, m
        return
    status, _, raw = http(llama3_server, "POST", "/v1/responses", json={
        "input": ASK[0]["content"], "tools": [{"type": "function", **WEATHER["function"]}],
        "max_output_tokens": 60, "temperature": 0, "stream": stream,
        "text": {"format": {"type": "json_schema", "name": "holder", "schema": HOLDER}}})
    assert status == 200, raw
    r = _events_data(raw)[-1]["response"] if stream else json.loads(raw)
    assert r["status"] == "completed", r
    assert [(i["type"], [c["text"] for c in i.get("content", [])]) for i in r["output"]] == [
        ("message", [HELD])], r


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_json_list_answer_whose_item_is_a_llama3_call_is_content(llama3_server, stream):
    """A json_schema list answer beside tools ("auto") whose item is spelt as a Llama 3
    call: the list the client asked for (it was the call, the list read as its wrapper, as
    the parser reads one elsewhere; but the calls' branch never writes a '[', so the list
    came from the format's). A bias toward '[' picks the format's branch."""
    _, _, raw = http(llama3_server, "POST", "/tokenize", json={
        "prompt": LISTED[:2], "add_special_tokens": False})
    first = json.loads(raw)["tokens"][0]
    m = _post(llama3_server, {
        "messages": ASK, "tools": [WEATHER], "max_tokens": 60, "temperature": 0,
        "logit_bias": {str(first): 100}, "stream": stream, "response_format": {
            "type": "json_schema", "json_schema": {"name": "lister", "schema": LISTER}}})
    assert m["finish_reason"] == "stop" and not m.get("tool_calls"), m
    assert m["content"] == LISTED, m
