"""Mistral-Small-3.2's call format (tokenizer v11's own chat template):
`[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}`, chosen where the template writes [CALL_ID]: the
grammar makes the model write the 9-character id, the answer's call carries it (whole and
streamed, from the first fragment on), a cut in the id or its marker leaves no markup, and
[CALL_ID] stays in the text as a special token. Templates without [CALL_ID] keep the form
without an id (test_tool_call_mistral_args.py)."""

from __future__ import annotations

import json
import random
import re

import pytest

from aiollm.api.tool_parsers import parser_for
from test_tool_call_mistral_args import TEMPLATE as V13
from test_tool_call_mistral_args import forced_call, served_with_special_markers
from test_tool_call_stream import NAMES, _check, _stream
from test_tool_parsers import TOOLS, _walks

# the part of Mistral-Small-3.2's template that writes an assistant's calls
TEMPLATE = ("{%- for tool in message['tool_calls'] %}{%- set arguments = "
            "tool['function']['arguments'] %}{{- '[TOOL_CALLS]' + tool['function']['name'] "
            "+ '[CALL_ID]' + tool['id'] + '[ARGS]' + arguments }}{%- endfor %}"
            "{{- eos_token }}")
P = '{"city": "Paris", "unit": "c"}'
CALLED = "Sure.[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]" + P
_HEAD = re.compile(r"\[TOOL_CALLS\]([^\[]+)\[CALL_ID\]([A-Za-z0-9]{9})\[ARGS\]")


@pytest.fixture(scope="module")
def tiny(server, tmp_path_factory):
    """A tiny random Llama (dummy weights) with the default model's tokenizer: the requests
    here force the call (a named tool_choice, its grammar) and bring their own template, so
    the model's weights decide nothing that is checked."""
    from live_server import tiny_server

    srv, _ = tiny_server(server, tmp_path_factory.mktemp("tiny"), lambda tok: None,
                         "[TOOL_CALLS]")
    yield srv
    srv.close()


def _parser():
    return parser_for(TEMPLATE)


def test_the_template_picks_the_form_with_ids():
    assert _parser().name == "mistral_v11" and _parser().heads.call_id == "[CALL_ID]"
    for override in ("mistral", "mistral_v11"):
        assert parser_for(TEMPLATE, override).heads.call_id == "[CALL_ID]"
    assert _parser().special == ("[ARGS]", "[CALL_ID]")  # decoded with them kept
    # without [CALL_ID] in the template: the form without an id, as before
    assert parser_for(V13).heads.call_id == "" and parser_for(V13).special == ("[ARGS]",)
    assert parser_for(V13).calls(CALLED, NAMES) == (CALLED, [])


def _every_split(parser, text, **kw):
    """The whole answer's (content, [(id, name, arguments, complete)]), checked equal to
    the stream's split in two at every point and one character at a time (the ids where
    the model wrote them)."""
    content, calls = parser.calls(text, NAMES, cut=kw.get("cut", False),
                                  required=kw.get("required", False), named=kw.get("named"))
    whole = [(c.id, c.name, c.arguments, c.complete) for c in calls]
    for cuts in [[i] for i in range(1, len(text))] + [list(range(1, len(text)))]:
        got, joined, final = _stream(parser, text, cuts, **kw)
        assert got == content, (text, cuts)
        assert joined == [(c.id, c.name, c.arguments) for c in final], (text, cuts)
        # ids the model wrote are the same in both; ours (none written) are new each time
        assert [(i if i in text else None, n, a) for i, n, a, _ in whole] == [
            (i if i in text else None, n, a) for i, n, a in joined], (text, cuts)
    return content, whole


def test_the_models_id_is_the_calls_whole_and_streamed():
    """The id the model wrote is the call's, in the first fragment and at the end."""
    parser = _parser()
    two = CALLED + '[TOOL_CALLS]tag[CALL_ID]ZZZZZZZZ9[ARGS]{"t": [1, "]"]}'
    content, calls = _every_split(parser, two)
    assert content == "Sure." and calls == [
        ("a1B2c3D4e", "get_weather", P, True), ("ZZZZZZZZ9", "tag", '{"t": [1, "]"]}', True)]
    # an id that is not 9 letters or digits is no call's head: the model's text
    for bad in ("a1B2", "a1B2c3D4e5", "a1B2c3-4e"):
        text = CALLED.replace("a1B2c3D4e", bad)
        assert _every_split(parser, text) == (text, [])


def test_a_call_cut_in_its_id_or_marker():
    """max_tokens in [CALL_ID], the id or [ARGS]: no call (as a cut in the name) and no
    markup in content; under a named tool_choice the named call with our id (no model id
    was written); once [ARGS] is written, the call with the model's id."""
    parser = _parser()
    head_end = CALLED.index("[ARGS]") + len("[ARGS]")
    for n in range(CALLED.index("[CALL_ID]"), len(CALLED) + 1):
        content, calls = _every_split(parser, CALLED[:n], cut=True)
        assert content == "Sure.", CALLED[:n]
        if n < head_end:
            assert calls == [], CALLED[:n]
            _, [named] = _every_split(parser, CALLED[:n], cut=True, named="get_weather")
            assert named[1:] == ("get_weather", "", False) and named[0] != "a1B2c3D4e"
        else:
            [(cid, name, _, complete)] = calls
            assert (cid, name, complete) == ("a1B2c3D4e", "get_weather", n == len(CALLED))


@pytest.mark.parametrize("mode", ["auto", "required", "named"])
def test_the_grammar_writes_the_id(mode):
    """Every output the grammar allows writes [CALL_ID] and an id before [ARGS]; it
    parses into calls valid for their tools whose ids are the ones written, streamed (split
    anywhere) or cut anywhere as the whole answer."""
    import jsonschema

    parser, rng = _parser(), random.Random(len(mode))
    tools = TOOLS[:1] if mode == "named" else TOOLS
    spec = parser.grammar(tools, required=mode != "auto", parallel=mode != "named")
    texts = _walks(spec.value, 8, seed=7)
    if mode == "auto":
        texts += ["Sure. " + t for t in _walks(spec.value, 6, seed=7, start="[TOOL_CALLS]")]
    kw = {"required": mode != "auto", "named": "get_weather" if mode == "named" else None}
    by_name = {t["function"]["name"]: t for t in TOOLS}
    assert any(_HEAD.search(t) for t in texts), texts  # "auto" too writes calls
    for text in texts:
        content, calls = _check(parser, text, rng, **kw)
        written = [(m.group(2), m.group(1)) for m in _HEAD.finditer(text)]
        assert [(c.id, c.name) for c in calls] == written, text
        if mode != "auto":
            assert calls and not content, text
        for call in calls:
            schema = by_name[call.name]["function"].get("parameters") or {"type": "object"}
            jsonschema.validate(json.loads(call.arguments), schema)
        for n in range(len(text)):
            content, _ = _check(parser, text[:n], rng, cut=True, **kw)
            assert "[CALL_ID]" not in content and "[ARGS]" not in content, text[:n]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_call_over_http_under_small_3_2s_template(tiny, stream):
    """Served end to end: the template's [CALL_ID] picks the form, the grammar writes the
    id, and the answer's call has that id (every fragment of a stream the same)."""
    from aiollm.api.state import STATE

    server = tiny

    st = server.app[STATE]
    server.call(lambda: setattr(st, "trust_request_chat_template", True))
    try:
        written, calls, call_ids = forced_call(server, TEMPLATE, stream)
    finally:
        server.call(lambda: setattr(st, "trust_request_chat_template", False))
    m = _HEAD.match(written)
    assert m is not None and m.group(1) == "f", written  # the template's form, with an id
    assert [(c["id"], c["name"]) for c in calls] == [(m.group(2), "f")], (written, calls)
    assert set(call_ids) <= {m.group(2)}, call_ids
    assert isinstance(json.loads(calls[0]["arguments"])["a"], int), calls


def test_call_id_as_a_special_token_stays_in_the_text(server, tmp_path):
    """Mistral-Small-3.2's tokenizer holds [CALL_ID] as a special token: it is kept in the
    text for the parser, as [TOOL_CALLS] and [ARGS] are."""
    served_with_special_markers(server, tmp_path, ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
                                TEMPLATE)


def test_an_id_the_model_wrote_twice_is_the_first_calls_only():
    """Two calls of one answer under one id: the first keeps it, the second gets ours (9
    letters or digits, the template's form), whole and streamed, as OpenAI's calls of one
    message have ids of their own: a client matches each tool result to its call by id."""
    parser = _parser()
    two = CALLED + '[TOOL_CALLS]tag[CALL_ID]a1B2c3D4e[ARGS]{"t": [2]}'
    for cut in (False, True):
        _, calls = _every_split(parser, two, cut=cut)
        assert [c[0] for c in calls][:1] == ["a1B2c3D4e"] and calls[1][0] != "a1B2c3D4e"
        assert re.fullmatch("[A-Za-z0-9]{9}", calls[1][0]), calls
        for cuts in ([len(CALLED) + 3], list(range(1, len(two)))):
            _, joined, final = _stream(parser, two, cuts, cut=cut)
            assert len({c.id for c in final}) == 2 and joined[0][0] == "a1B2c3D4e", joined
            assert re.fullmatch("[A-Za-z0-9]{9}", joined[1][0]), joined


def test_a_call_sent_back_renders_as_the_model_wrote_it(tiny):
    """The agent loop under a template that writes [CALL_ID] and checks ids as Mistral's
    do: a forced call, then the history with it and its result renders (the ids 9 letters
    or digits), the model's id or, where max_tokens cut the call before it, ours."""
    from live_server import http

    from aiollm.api.state import STATE
    from test_tool_call_ids import CHECKING_TEMPLATE

    server = tiny
    st = server.app[STATE]
    # as Mistral-Small-3.2's: arguments a JSON object (the server hands a template the
    # history's arguments parsed, as vLLM does) are written with tojson
    parsed = TEMPLATE.replace("{{- '[TOOL_CALLS]'", "{%- if arguments is not string %}{%- set "
                              "arguments = arguments|tojson %}{%- endif %}{{- '[TOOL_CALLS]'")
    template = ("{% for message in messages %}{% if message['tool_calls'] %}" + parsed
                + "{% elif message['role'] == 'tool' %}[TOOL_RESULTS]{{ message['tool_call_id']"
                " }}[TOOL_CONTENT]{{ message['content'] }}[/TOOL_RESULTS]"
                "{% else %}[INST]{{ message['content'] }}[/INST]{% endif %}{% endfor %}")
    template = CHECKING_TEMPLATE.split("{{ m.content")[0] + "{% endfor %}" + template
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"], "additionalProperties": False}}}]
    first = [{"role": "user", "content": "Call f."}]
    server.call(lambda: setattr(st, "trust_request_chat_template", True))
    try:
        for max_tokens in (80, 7):  # 7: cut before the model wrote its id: ours
            status, _, raw = http(server, "POST", "/v1/chat/completions", json={
                "messages": first, "tools": tools, "max_tokens": max_tokens,
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "temperature": 0, "chat_template": template, "return_token_ids": True})
            assert status == 200, raw
            choice = json.loads(raw)["choices"][0]
            calls = choice["message"]["tool_calls"]
            written = server.engine.tokenizer.decode(choice["token_ids"])
            assert len(calls) == 1 and re.fullmatch("[A-Za-z0-9]{9}", calls[0]["id"]), calls
            assert (calls[0]["id"] in written) == (max_tokens == 80), (written, calls)
            if max_tokens == 7:
                calls[0]["function"]["arguments"] = '{"a": 1}'
            history = first + [{"role": "assistant", "content": None, "tool_calls": calls},
                               {"role": "tool", "tool_call_id": calls[0]["id"],
                                "content": "3"}]
            status, _, raw = http(server, "POST", "/v1/chat/completions", json={
                "messages": history, "tools": tools, "max_tokens": 1,
                "chat_template": template, "return_token_ids": True})
            assert status == 200, raw
    finally:
        server.call(lambda: setattr(st, "trust_request_chat_template", False))
