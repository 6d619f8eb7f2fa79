"""Mistral's newer call format (tokenizer v11 on: Mistral-Small-3.2, Magistral, Devstral),
`[TOOL_CALLS]NAME[ARGS]{...}` one block per call, chosen where the chat template writes
calls with [ARGS]: read whole and streamed alike (content before the first marker kept,
arguments as written, ids as Mistral's templates take them), cut by max_tokens, and held to
the tools' schemas by the grammar. The checks every format shares take this one too
(test_tool_parsers.py, test_tool_call_stream.py, test_tool_call_wrappers.py)."""

from __future__ import annotations

import json
import random

import pytest

from aiollm.api.tool_parsers import parser_for
from aiollm.api.tool_stream import StreamingToolParser
from test_tool_call_stream import NAMES, _check
from test_tool_parsers import TOOLS, _walks

# the part of a v13 Mistral template that writes an assistant's calls (v11's, Mistral-Small
# 3.2's, writes '[CALL_ID]' + the call's id before '[ARGS]': test_tool_call_mistral_ids.py)
TEMPLATE = ("{%- for tool in message['tool_calls'] %}{%- set arguments = "
            "tool['function']['arguments'] %}{{- '[TOOL_CALLS]' + tool['function']['name'] "
            "+ '[ARGS]' + arguments }}{%- endfor %}{{- eos_token }}")
OLD = "{{- '[TOOL_CALLS][' + calls|tojson + ']' }}"  # the older Mistral's JSON array
P = '{"city": "Paris", "unit": "c"}'


def _parser():
    return parser_for(TEMPLATE)


def test_the_template_picks_the_format():
    """A template that writes [ARGS] reads [ARGS] calls, under --tool-call-parser mistral
    too (as vLLM's mistral parser reads by the tokenizer's version); one without reads the
    JSON array; mistral_v11 names the newer one whatever the template."""
    assert _parser().name == "mistral_v11"
    assert parser_for(TEMPLATE, "mistral").name == "mistral_v11"
    assert parser_for(OLD).name == parser_for(OLD, "mistral").name == "mistral"
    assert parser_for(OLD, "mistral_v11").name == "mistral_v11"
    assert _parser().special == ("[ARGS]",)  # decoded with special tokens kept


def test_calls_as_the_models_write_them():
    parser = _parser()
    text = 'Let me check.[TOOL_CALLS]get_weather[ARGS]' + P
    content, [call] = parser.calls(text, NAMES)
    assert (content, call.name, call.arguments, call.complete) == (
        "Let me check.", "get_weather", P, True)
    assert len(call.id) == 9 and call.id.isalnum()  # Mistral's templates take no other
    two = '[TOOL_CALLS]get_weather[ARGS]' + P + '[TOOL_CALLS]tag[ARGS]{"t": [1, "]"]}'
    content, calls = parser.calls(two, NAMES)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", json.loads(P)), ("tag", {"t": [1, "]"]})]
    # the older form is no call of this one, nor is a name no tool has
    old = '[TOOL_CALLS][{"name": "get_weather", "arguments": %s}]' % P
    assert parser.calls(old, NAMES) == (old, [])
    assert parser.calls("[TOOL_CALLS]nope[ARGS]{}", NAMES) == ("[TOOL_CALLS]nope[ARGS]{}", [])


def test_a_name_that_begins_another_is_read_once_whole():
    """`get` is a part of `get_weather`: the stream sends a name only once [ARGS] ends it."""
    parser, names = _parser(), {"get", "get_weather"}
    text = "[TOOL_CALLS]get_weather[ARGS]" + P
    stream = StreamingToolParser(parser, names)
    for i in range(len("[TOOL_CALLS]get_weather[ARGS]") - 1):
        stream.feed(text[i])
        assert stream.take() == [], text[:i + 1]
    stream.feed(text[len("[TOOL_CALLS]get_weather[ARGS]") - 1:])
    first, *rest = stream.take()
    assert first.name == "get_weather" and "".join(f.arguments for f in rest) == P
    _, [call] = stream.finish()
    assert call.id == first.id and call.arguments == P


@pytest.mark.parametrize("mode", ["auto", "required", "named"])
def test_grammar_outputs_stream_and_cut_like_the_whole_answer(mode):
    """Every output the tool grammar allows parses into calls valid for their tools, and
    streamed (split anywhere) or cut by max_tokens anywhere reads as the whole answer."""
    import jsonschema

    parser, rng = _parser(), random.Random(len(mode))
    tools = TOOLS[:1] if mode == "named" else TOOLS
    spec = parser.grammar(tools, required=mode != "auto", parallel=mode != "named")
    texts = _walks(spec.value, 8, seed=5)
    kw = {"required": mode != "auto", "named": "get_weather" if mode == "named" else None}
    by_name = {t["function"]["name"]: t for t in TOOLS}
    for text in texts:
        content, calls = _check(parser, text, rng, **kw)
        if mode != "auto":
            assert calls and not content and (mode == "required" or len(calls) == 1), text
        for call in calls:
            schema = by_name[call.name]["function"].get("parameters") or {"type": "object"}
            jsonschema.validate(json.loads(call.arguments), schema)
        for n in range(len(text)):
            _check(parser, text[:n], rng, cut=True, **kw)


def test_a_call_cut_by_max_tokens():
    """Cut in its arguments: the call so far, incomplete; cut in the name: no call and
    no markup in content; cut after the arguments: the call whole (nothing
    closes it but the end)."""
    parser = _parser()
    text = "Sure.[TOOL_CALLS]get_weather[ARGS]" + P
    for n in range(len("Sure."), len(text) + 1):
        content, calls = parser.calls(text[:n], NAMES, cut=True, length=True)
        # under "auto" a marker cut part way may be text ("a [")
        assert content == ("Sure." if "[TOOL_CALLS]" in text[:n] else text[:n]), text[:n]
        named = n >= text.index("[ARGS]") + len("[ARGS]")
        assert [c.name for c in calls] == (["get_weather"] if named else []), text[:n]
        if named:
            assert calls[0].arguments == text[text.index("[ARGS]") + 6:n].lstrip() or (
                not calls[0].arguments)
            assert calls[0].complete == (n == len(text)), text[:n]


@pytest.fixture
def trusting_server(server):
    """The shared server as `aiollm serve --trust-request-chat-template` runs it: a
    request's chat template picks the call format."""
    from aiollm.api.state import STATE

    st = server.app[STATE]
    server.call(lambda: setattr(st, "trust_request_chat_template", True))
    yield server
    server.call(lambda: setattr(st, "trust_request_chat_template", False))


def forced_call(server, calls_template: str, stream: bool
                ) -> tuple[str, list[dict], list[str]]:
    """A chat completion that forces a call of f(a: 0-9) under a chat template whose
    assistant turns with calls render `calls_template` (the server must trust a request's
    template): (what the model wrote, decoded from the answer's token ids, the answer's
    calls as {"id", "name", "arguments"}, the id of every streamed fragment that has one)."""
    from live_server import http

    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"], "additionalProperties": False}}}]
    template = ("{% for message in messages %}{% if message['tool_calls'] %}" + calls_template
                + "{% else %}[INST]{{ message['content'] }}[/INST]{% endif %}{% endfor %}")
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Call f."}], "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "max_tokens": 80,
        "temperature": 0, "chat_template": template, "stream": stream,
        "return_token_ids": True})
    assert status == 200, raw
    ids: list[int] = []
    call_ids: list[str] = []
    if stream:
        by_index: dict[int, dict] = {}
        for line in raw.decode().splitlines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            ids += choice.get("token_ids") or []
            for frag in choice["delta"].get("tool_calls") or []:
                call = by_index.setdefault(frag["index"],
                                           {"id": frag.get("id"), "arguments": ""})
                call_ids += [frag["id"]] if frag.get("id") else []
                call["name"] = frag["function"].get("name") or call.get("name")
                call["arguments"] += frag["function"]["arguments"]
        calls = list(by_index.values())
    else:
        choice = json.loads(raw)["choices"][0]
        calls = [{"id": c["id"], **c["function"]} for c in choice["message"]["tool_calls"]]
        ids = choice["token_ids"]
    return server.engine.tokenizer.decode(ids), calls, call_ids


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_call_over_http_under_a_v11_template(trusting_server, stream):
    """Served end to end: the template's [ARGS] picks the format, the grammar writes a call
    in it, and the answer is that call, with Mistral's 9-character id."""
    written, calls, _ = forced_call(trusting_server, TEMPLATE, stream)
    assert written.startswith("[TOOL_CALLS]f[ARGS]"), written  # the template's form
    assert [c["name"] for c in calls] == ["f"], calls
    assert isinstance(json.loads(calls[0]["arguments"])["a"], int), calls
    assert len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum(), calls


@pytest.mark.parametrize("specials", [("[TOOL_CALLS]", "[ARGS]"), ("[ARGS]",)],
                         ids=["both", "args-only"])
def test_markers_that_are_special_tokens_stay_in_the_text(server, tmp_path, specials):
    """Mistral's tokenizers (v11 on) hold [TOOL_CALLS] and [ARGS] as special tokens, which
    text decoded skipping them loses: [ARGS] is kept for the parser as [TOOL_CALLS] is, also
    where it alone is special (the decoding is chosen by either)."""
    served_with_special_markers(server, tmp_path, specials, TEMPLATE)


def served_with_special_markers(server, tmp_path, specials: tuple[str, ...],
                                template: str) -> None:
    """A tiny random model with the default tokenizer plus `specials` as special tokens and
    a chat template that writes calls as `template` does, asked for a call: each marker is
    written as its token (a logit bias makes the model write it rather than spell it), and
    the answer is the call, none of its markup content."""
    import tokenizers

    from live_server import http, tiny_server

    srv, tok = tiny_server(server, tmp_path, lambda tok: tok.add_tokens(
        [tokenizers.AddedToken(t, special=True) for t in specials]), template)
    try:
        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"q": {"enum": ["a", "b"]}}, "required": ["q"],
            "additionalProperties": False}}}
        bias = {str(tok.convert_tokens_to_ids(t)): 100 for t in specials}
        status, _, raw = http(srv, "POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Call f."}], "tools": [tool],
            "tool_choice": "required", "max_tokens": 200, "temperature": 0,
            "logit_bias": bias, "logprobs": True, "parallel_tool_calls": False})
        assert status == 200, raw
        choice = json.loads(raw)["choices"][0]
        tokens = [t["token"] for t in choice["logprobs"]["content"]]
        assert all(t in tokens for t in specials if t != "[TOOL_CALLS]"), tokens  # as tokens
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "f", choice["message"]
        assert json.loads(call["function"]["arguments"])["q"] in ("a", "b")
        assert not choice["message"]["content"], choice["message"]
    finally:
        srv.close()
