"""Tool-call formats without a model: every output the "required" grammar of each parser
allows (random walks over xgrammar's token masks, on a character vocabulary) parses back into
calls whose arguments validate against their tool's schema, and the parsers read the forms
models write (';' inside strings, several Mistral blocks, names with quotes)."""

from __future__ import annotations

import json
import random
import re
import sys

import jsonschema
import numpy as np
import pytest
import xgrammar as xgr

from aiollm.api.json_calls import json_call
from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.api.tool_stream import StreamingToolParser

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {
            "city": {"type": "string", "maxLength": 8},
            "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": 'say "hi"'}},  # no parameters, quotes in its name
    {"type": "function", "function": {"name": "tag", "parameters": {  # items of any kind
        "type": "object", "properties": {"t": {"type": "array", "minItems": 1, "maxItems": 2}},
        "required": ["t"], "additionalProperties": False}}},
]
# every format; the Mistral of tokenizer v11 on writes `[TOOL_CALLS]NAME[ARGS]{...}`
PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser()]
VOCAB = [chr(c) for c in range(32, 127)] + ["\n", "</s>", "<tool_call>", "[TOOL_CALLS]"]
EOS = VOCAB.index("</s>")


def _random_step(matcher, bitmask, rng) -> int:
    """One token the grammar allows, drawn at random (EOS half the time it is allowed), and
    accepted by the matcher."""
    matcher.fill_next_token_bitmask(bitmask)
    row = bitmask[0].numpy().view(np.uint32)
    allowed = [t for t in range(len(VOCAB)) if row[t >> 5] >> (t & 31) & 1]
    tok = EOS if EOS in allowed and rng.random() < 0.5 else rng.choice(allowed)
    assert matcher.accept_token(tok)
    return tok


def _walks(spec_value: str, n: int, seed: int, start: str | None = None) -> list[str]:
    """n random outputs the grammar allows, each to its end; each begins with the token
    `start` where given (under "auto" a random walk rarely writes a call's marker)."""
    info = xgr.TokenizerInfo(VOCAB, stop_token_ids=[EOS])
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_structural_tag(spec_value)
    rng, outs = random.Random(seed), []
    bitmask = xgr.allocate_token_bitmask(1, len(VOCAB))
    while len(outs) < n:
        matcher, text = xgr.GrammarMatcher(compiled), []
        if start is not None:
            assert matcher.accept_token(VOCAB.index(start)), start
            text.append(start)
        for _ in range(400):
            tok = _random_step(matcher, bitmask, rng)
            if tok == EOS:
                outs.append("".join(text))
                break
            text.append(VOCAB[tok])
    return outs


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
@pytest.mark.parametrize("parallel", [True, False])
def test_required_outputs_are_calls_that_parse(parser, parallel):
    spec = parser.grammar(TOOLS, required=True, parallel=parallel)
    by_name = {t["function"]["name"]: t for t in TOOLS}
    for text in _walks(spec.value, 12, seed=len(parser.name) + parallel):
        content, calls = parser.parse(text)
        assert calls and not content, text  # calls only: no text around them
        assert parallel or len(calls) == 1, text
        for call in calls:
            schema = by_name[call.name]["function"].get("parameters") or {"type": "object"}
            jsonschema.validate(json.loads(call.arguments), schema)


def test_parsers_read_what_models_write():
    content, calls = Llama3Parser().parse(
        '<|python_tag|>{"name": "f", "parameters": {"q": "a; b"}}; {"name":"g","parameters":{}}')
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("f", {"q": "a; b"}), ("g", {})]
    content, calls = MistralParser().parse(
        'ok [TOOL_CALLS][{"name": "f", "arguments": {"x": "]"}}] [TOOL_CALLS][{"name": "g", '
        '"arguments": {}}, {"name": "h", "arguments": {}}]')
    assert content == "ok" and [c.name for c in calls] == ["f", "g", "h"]
    assert MistralParser().parse("[TOOL_CALLS] not json") == ("[TOOL_CALLS] not json", [])
    assert Llama3Parser().parse('a {"b": 1}') == ('a {"b": 1}', [])


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
def test_markers_inside_arguments_are_text(parser):
    """An argument string may hold the call markers (a tool that takes code or markup): the
    grammar allows it, so the parser must read past it, streamed or not."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}
    args = {"x": "a </tool_call> <tool_call> [TOOL_CALLS] ; b"}
    text = {"hermes": '<tool_call>\n{"name": "f", "arguments": %s}\n</tool_call>',
            "llama3": '{"name": "f", "parameters": %s}',
            "mistral": '[TOOL_CALLS][{"name": "f", "arguments": %s}]',
            "mistral_v11": "[TOOL_CALLS]f[ARGS]%s"}[parser.name]
    text = "Sure. " + text % json.dumps(args)
    assert parser.grammar([tool], required=False, parallel=True)  # a call the grammar allows
    content, [call] = parser.calls(text, {"f"})
    assert content == "Sure." and json.loads(call.arguments) == args
    stream = StreamingToolParser(parser, {"f"})
    sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, [call] = stream.finish()
    assert (sent + rest).strip() == "Sure." and json.loads(call.arguments) == args


def test_a_call_to_no_tool_is_content():
    """A call to a function the request has not got is text, streamed or not (Llama 3's
    format is any JSON object that starts with "name"; the grammar holds the name only where
    it triggers, so this guards what it does not see)."""
    text = 'A person: {"name": "Bob", "age": 3}'
    parser = Llama3Parser()
    assert parser.calls(text, {"get_weather"}) == (text, [])
    stream = StreamingToolParser(parser, {"get_weather"})
    sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, calls = stream.finish()
    assert sent + rest == text and calls == []
    content, [call] = parser.calls('{"name": "get_weather", "parameters": {}}', {"get_weather"})
    assert content == "" and call.name == "get_weather"


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
def test_an_answer_without_a_call_is_the_text_as_written(parser):
    """Under "auto" an answer with no call is the model's text to the character, streamed or
    not, as the same answer without tools is: the Mistral parser stripped its trailing
    whitespace (a model that wrote "\\n\\n" answered "")."""
    for text in ("\n\n\n", "Sure.\n", "a b "):
        assert parser.calls(text, {"f"}) == (text, []), text
        stream = StreamingToolParser(parser, {"f"})
        sent = "".join(stream.feed(c) for c in text)
        rest, calls = stream.finish()
        assert (sent + rest, calls) == (text, []), text


@pytest.mark.parametrize("spelled", [True, False], ids=["spelled", "token"])
def test_auto_calls_parse_whether_the_marker_is_spelled_or_a_token(spelled):
    """Under "auto" a model may open a Mistral call with the [TOOL_CALLS] token or write the
    marker out character by character: the grammar holds the call to its schema either way,
    and the parser finds it, streamed or not."""
    parser = MistralParser()
    spec = parser.grammar(TOOLS, required=False, parallel=True)
    info = xgr.TokenizerInfo(VOCAB, stop_token_ids=[EOS])
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_structural_tag(spec.value)
    bitmask = xgr.allocate_token_bitmask(1, len(VOCAB))
    rng = random.Random(int(spelled))
    for _ in range(6):
        matcher = xgr.GrammarMatcher(compiled)
        text = ["o", "k", " "] + (list("[TOOL_CALLS]") if spelled else ["[TOOL_CALLS]"])
        for tok in text:
            assert matcher.accept_token(VOCAB.index(tok))
        while True:
            tok = _random_step(matcher, bitmask, rng)
            if tok == EOS:
                break
            text.append(VOCAB[tok])
        names = {t["function"]["name"] for t in TOOLS}
        content, calls = parser.calls("".join(text), names)
        assert calls and content.startswith("ok"), text
        stream = StreamingToolParser(parser, names)
        sent = "".join(stream.feed(t) for t in text)
        rest, streamed = stream.finish()
        assert [c.name for c in streamed] == [c.name for c in calls] and sent.startswith("ok")


def test_llama3_calls_streamed_or_not_alike():
    """A Llama 3 call opens with the text the "auto" grammar triggers on; JSON spelt
    otherwise ({"name":"f"...: no space) was never held to the tool's schema, and the stream
    sent it as content while the whole response made it a call: it is content in both."""
    parser, names = Llama3Parser(), {"get_weather"}
    for text in ('{"name":"get_weather","parameters":{"city":1}}',
                 'x {"name": "get_weather", "parameters": {"city": "P"}}'):
        whole = parser.calls(text, names)
        stream = StreamingToolParser(parser, names)
        sent = "".join(stream.feed(text[i:i + 2]) for i in range(0, len(text), 2))
        rest, calls = stream.finish()
        assert ((sent + rest).strip(), [c.name for c in calls]) == (
            whole[0], [c.name for c in whole[1]]), text
    assert parser.calls('{"name":"get_weather","parameters":{}}', names)[1] == []


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
@pytest.mark.parametrize("before,after", [
    ("Sure.\n\n", ""), ("\n", ""), ("", "\n"), ("a ", " b"), ("\n Sure ", " done\n"),
    ("Hello world", ""), ("x\t", "\n\ny ")])
def test_streamed_content_joins_to_the_whole_content(parser, before, after):
    """The content a stream sends (feed, then finish) is the whole answer's, to the character:
    the whitespace before a call was sent ("Sure.\\n\\n" where the whole answer had "Sure.",
    "\\n" where it had none) and the whitespace after a call was dropped ("a b" for "a  b")."""
    call = {"hermes": '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
            "llama3": '{"name": "f", "parameters": {}}',
            "mistral": '[TOOL_CALLS][{"name": "f", "arguments": {}}]',
            "mistral_v11": "[TOOL_CALLS]f[ARGS]{}"}[parser.name]
    for text in (before + call + after, before + after):  # with a call, and without
        content, calls = parser.calls(text, {"f"})
        assert len(calls) == (call in text), text
        for step in (1, 2, 5):
            stream = StreamingToolParser(parser, {"f"})
            sent = "".join(stream.feed(text[i:i + step]) for i in range(0, len(text), step))
            rest, streamed = stream.finish()
            assert sent + rest == content and len(streamed) == len(calls), (text, step)


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
@pytest.mark.parametrize("required", [True, False], ids=["required", "auto"])
def test_calls_cut_by_max_tokens_are_calls_streamed_or_not(parser, required):
    """Every output the tool grammar allows, cut after each character (max_tokens), reads
    as calls: the complete ones whole, the cut one (once its name is written) with the
    arguments written so far; no call markup is content, and the stream reads it alike. The
    partial call's text stayed in content (finish_reason "length")."""
    names = {t["function"]["name"] for t in TOOLS}
    spec = parser.grammar(TOOLS, required=required, parallel=True)
    before = "" if required else "Sure. "
    outs = _walks(spec.value, 4, seed=7) if required else []
    if not required:  # "auto": text, then calls once the marker is written
        one = {"hermes": '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>',
               "llama3": '{"name": "get_weather", "parameters": %s}',
               "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": %s}]',
               "mistral_v11": "[TOOL_CALLS]get_weather[ARGS]%s"}
        outs = [before + one[parser.name] % '{"city": "Paris", "unit": "c"}']
    heads = re.compile("|".join(re.escape(parser.heads.named(n)) for n in names))
    for text in outs:
        _, whole = parser.calls(text, names)
        assert whole, text
        for n in range(len(before) + 1, len(text)):
            cut = text[:n]
            content, calls = parser.calls(cut, names, cut=True, required=required)
            # under "auto" a marker cut part way may be text ("a <"): it stays content
            opened = required or parser.start in cut
            assert content == (before.strip() if opened else cut), (cut, content)
            assert [c.name for c in calls] == [c.name for c in whole[:len(calls)]], cut
            # a call is a call once its name is written, whatever of its head is cut
            # ('{"name": "get_weather", "arguments":' is get_weather with no arguments yet)
            assert len(calls) == len(heads.findall(cut)), (cut, calls)
            for got, want in zip(calls[:-1], whole):
                assert got.arguments == want.arguments, cut
            if calls and calls[-1].arguments != whole[len(calls) - 1].arguments:
                assert cut.endswith(calls[-1].arguments), (cut, calls[-1])  # as written
            stream = StreamingToolParser(parser, names, required=required)
            sent = "".join(stream.feed(cut[i:i + 3]) for i in range(0, len(cut), 3))
            rest, streamed = stream.finish(cut=True)
            assert (sent + rest).strip() == content.strip(), cut
            assert [(c.name, c.arguments) for c in streamed] == [
                (c.name, c.arguments) for c in calls], cut


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
def test_a_named_call_cut_anywhere_is_the_named_call(parser):
    """Under a named tool_choice, an output cut anywhere is the named function's call, as
    vLLM answers it: with the arguments written so far, "" before any (the call's marker
    or head cut). A cut before the name was complete was no call. The stream reads it
    alike; an output that is not cut is read as before."""
    spec = parser.grammar(TOOLS[:1], required=True, parallel=False)
    name = TOOLS[0]["function"]["name"]
    text, = _walks(spec.value, 1, seed=3)
    assert len(parser.calls(text, {name})[1]) == 1, text
    ends = "}\n</tool_call>" if parser.name == "hermes" else "}"
    for n in range(len(text)):
        cut = text[:n]
        content, calls = parser.calls(cut, {name}, cut=True, length=True, required=True,
                                      named=name)
        assert content == "" and [c.name for c in calls] == [name], (cut, calls)
        # as written; one max_tokens cut after its arguments, in the call's end that the
        # grammar writes, is cut too (its markup is not closed)
        args = calls[0].arguments
        after = cut[cut.rfind(args) + len(args):] if args else ""
        if parser.name == "mistral_v11":  # nothing closes a call but its arguments' end
            assert calls[0].complete == (after == "" and _whole(args)), cut
        else:
            assert calls[0].complete != (after == "" or ends.startswith(after) and after != ends)
        stream = StreamingToolParser(parser, {name}, required=True, named=name)
        sent = "".join(stream.feed(cut[i:i + 3]) for i in range(0, len(cut), 3))
        rest, streamed = stream.finish(cut=True, length=True)
        assert sent + rest == "" and [(c.name, c.arguments, c.complete) for c in streamed] == [
            (name, calls[0].arguments, calls[0].complete)], cut
    assert parser.calls(text[:1], {name}, required=True, named=name) == (text[:1], [])


def _whole(text: str) -> bool:
    """Whether `text` is a whole JSON value."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# a response format whose objects open as a Llama 3 call does ({"name": ...}): read as
# content, its name being no tool's
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"], "additionalProperties": False}


@pytest.mark.parametrize("parser", PARSERS,
                         ids=lambda p: p.name)
@pytest.mark.parametrize("parallel", [True, False])
def test_auto_beside_a_format_is_calls_or_the_format(parser, parallel):
    """tool_choice "auto" beside a response format: every output the grammar allows is
    calls only, each valid for its tool (one unless parallel), or content that validates
    against the format and holds no call; a stream reads it alike."""
    from aiollm.api.tools_or_format import content_format
    from aiollm.sampling_params import GrammarSpec

    fmt = content_format(GrammarSpec("json_schema", json.dumps(PERSON), "response_format"))
    spec = parser.either(TOOLS, fmt, parallel=parallel)
    names = {t["function"]["name"]: t for t in TOOLS}
    kinds = set()
    for text in _walks(spec.value, 24, seed=len(parser.name) + parallel):
        content, calls = parser.calls(text, names)
        if calls:
            assert not content and (parallel or len(calls) == 1), text
            for call in calls:
                schema = names[call.name]["function"].get("parameters") or {"type": "object"}
                jsonschema.validate(json.loads(call.arguments), schema)
        else:
            jsonschema.validate(json.loads(content), PERSON)
        kinds.add(bool(calls))
        stream = StreamingToolParser(parser, names)
        sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
        rest, streamed = stream.finish()
        assert (sent + rest, [(c.name, c.arguments) for c in streamed]) == (
            content, [(c.name, c.arguments) for c in calls]), text
    # a walk seldom spells a tool's name where a Llama 3 call and the content both open
    # with '{"name": "'
    assert kinds == ({False} if parser.name == "llama3" else {True, False}), kinds
    call = {"hermes": '<tool_call>\n{"name": "tag", "arguments": {"t": [1]}}\n</tool_call>',
            "llama3": '{"name": "tag", "parameters": {"t": [1]}}',
            "mistral": '[TOOL_CALLS][{"name": "tag", "arguments": {"t": [1]}}]',
            "mistral_v11": '[TOOL_CALLS]tag[ARGS]{"t": [1]}'}[parser.name]
    info = xgr.TokenizerInfo(VOCAB, stop_token_ids=[EOS])
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_structural_tag(spec.value)
    for text in (call, '{"name": "Bob", "ok": true}'):
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(text) and matcher.accept_token(EOS), text
        assert bool(parser.calls(text, names)[1]) == (text == call), text


@pytest.mark.parametrize("args_key", ["parameters", "arguments"])
def test_a_call_whose_arguments_are_too_deep_to_read_again_is_no_call(args_key):
    """json_call reads a call's arguments text again from the text (member_text), a few
    calls deeper than the object was decoded: at the decoder's recursion limit that second
    reading raised RecursionError, a failed request (main's Llama 3 and Mistral readings
    did at 988-990 levels; h189's Brackets.decode, one call deeper, made both readings
    meet the limit together, by chance of frame counts). Too deep to read is no call, as
    too deep to decode is."""
    text = '{"name": "f", "%s": %s}' % (args_key, "[" * 3000 + "]" * 3000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        obj = json.loads(text)  # the object as a reader at a shallower depth decoded it
    finally:
        sys.setrecursionlimit(limit)
    assert json_call(obj, "parameters", text, 0) is None


_JSON_BITS = ['-', '-0', '01', '1.', '1e', '1E+', '.5', '1.5e-3', '1e999', '-Infinity', 'NaN',
              'Infinityx', 'tru', 'true', 'null', '"\\u123"', '"\\u00e9"', '"\\ud800"',
              '"\\x"', '"\x1f"', '"\x7f\U0001F600"', '"\\"', '\x0b', '\xa0', '\u2028', ' ',
              '\n', ',', ':', '"k"', '[', ']', '{', '}', '[]', '{}', '[1,]', '{"a":1,}',
              '{"a":1,"a":[2, {}]}']


def _json_ish(rng: random.Random, depth: int = 0) -> str:
    """A random JSON value, or near one: JSON's edge cases among its parts."""
    if depth > 4 or rng.random() < 0.4:
        return rng.choice(_JSON_BITS)
    space = lambda: rng.choice(["", "", " ", "\n", "\t", "\x0c"])  # noqa: E731
    parts = [_json_ish(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        return "[" + space() + ",".join(parts) + space() + "]"
    keys = [rng.choice(['"a"', '"\\u0041"', "b"]) + space() + ":" + space() for _ in parts]
    return "{" + ",".join(k + v for k, v in zip(keys, parts)) + space() + "}"


def test_brackets_end_where_the_decoder_does():
    """json_brackets.Brackets.end(p) is where JSONDecoder.raw_decode(text, p) ends the
    object or array at text[p], -1 exactly where it fails, asked in any order on one
    instance (its cache) or on a fresh one: random texts of JSON's edge cases."""
    from aiollm.api.json_brackets import Brackets

    rng, decoder = random.Random(7), json.JSONDecoder()
    for _ in range(4000):
        text = _json_ish(rng)
        for _ in range(rng.randint(0, 2)):  # a part dropped or added
            k = rng.randint(0, len(text))
            text = text[:k] + rng.choice(_JSON_BITS + [""]) + text[k + rng.randint(0, 2):]
        opens = [i for i, c in enumerate(text) if c in "[{"]
        rng.shuffle(opens)
        shared = Brackets(text)
        for p in opens:
            try:
                want = decoder.raw_decode(text, p)[1]
            except ValueError:
                want = -1
            assert shared.end(p) == Brackets(text).end(p) == want, (text, p)
