"""Tool calls streamed as they are written: for every parser and tool_choice mode, the
content and call fragments of a stream, split anywhere (one character at a time too), join
to the whole answer: the same content, the same calls, the same arguments byte for byte;
also for outputs cut by max_tokens. A call's name fragment goes out while its arguments
are still being written. The content around calls: test_tool_call_stream_text.py; Llama
3's <|python_tag|> and separators: test_tool_call_stream_llama3.py. The helpers here
(_check, _stream, CALL, ...) are those tests' too."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.api.tool_stream import StreamingToolParser, TakenBack
from test_tool_parsers import TOOLS, _walks

PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser()]
NAMES = {t["function"]["name"] for t in TOOLS}
# what models write (spacing, non-ASCII, escapes), which re-encoding would change
ARGS = '{"city":  "Zürich \\u00e9\\/",\n "unit": "c"}'
CALL = {"hermes": '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>',
        "llama3": '{"name": "get_weather", "parameters": %s}',
        "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": %s}]',
        "mistral_v11": "[TOOL_CALLS]get_weather[ARGS]%s"}
TAG = "<|python_tag|>"
P, Q = '{"city": "P", "unit": "c"}', '{"city": "Q", "unit": "f"}'


def _stream(parser, text: str, cuts: list[int], *, cut: bool = False, **kw):
    """(content, [(id, name, arguments)] joined from the fragments, the calls finish gave)
    of `text` fed in pieces ending at `cuts`."""
    stream = StreamingToolParser(parser, NAMES, **kw)
    content, frags, prev = "", [], 0
    for end in cuts + [len(text)]:
        content += stream.feed(text[prev:end])
        frags += stream.take()
        prev = end
    rest, calls = stream.finish(cut=cut)
    frags += stream.take()
    joined: list[list] = []
    for f in frags:
        if f.name is not None:
            assert f.index == len(joined) and f.arguments == "", f
            joined.append([f.id, f.name, ""])
        else:
            assert f.arguments, f  # no empty fragment
            joined[f.index][2] += f.arguments
    return content + rest, [tuple(c) for c in joined], calls


def _splits(text: str, rng: random.Random) -> list[list[int]]:
    """One character at a time, a few fixed steps, and random token boundaries."""
    out = [list(range(1, len(text))), list(range(3, len(text), 3)), []]
    for _ in range(6 if len(text) > 1 else 0):
        out.append(sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 4))))
    return out


def _check(parser, text: str, rng: random.Random, **kw):
    content, calls = parser.calls(text, NAMES, cut=kw.get("cut", False),
                                  required=kw.get("required", False), named=kw.get("named"))
    for cuts in _splits(text, rng):
        got, joined, final = _stream(parser, text, cuts, **kw)
        assert got == content, (text, cuts)
        assert [(n, a) for _, n, a in joined] == [(c.name, c.arguments) for c in calls], (
            text, cuts)
        assert [(c.id, c.name, c.arguments) for c in final] == joined
        assert [c.complete for c in final] == [c.complete for c in calls]
    return content, calls


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["auto", "required", "named"])
def test_fragments_join_to_the_whole_answer(parser, mode):
    rng = random.Random(len(parser.name) + len(mode))
    tools = TOOLS[:1] if mode == "named" else TOOLS
    spec = parser.grammar(tools, required=mode != "auto", parallel=mode != "named")
    texts = _walks(spec.value, 6, seed=11)
    kw = {"required": mode != "auto", "named": "get_weather" if mode == "named" else None}
    if mode == "auto":
        texts.append("Sure, let me see. " + CALL[parser.name] % ARGS)
    for text in texts:
        content, calls = _check(parser, text, rng, **kw)
        assert calls or mode == "auto" and parser.start not in text, text
        for n in range(0, len(text), max(1, len(text) // 25)):  # max_tokens anywhere
            _check(parser, text[:n], rng, cut=True, **kw)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_arguments_are_the_text_the_model_wrote(parser):
    """Streamed or not, a call's arguments are its JSON as written: spacing, escapes and
    non-ASCII kept (re-encoding them would change bytes the stream has already sent)."""
    text = CALL[parser.name] % ARGS
    content, [call] = _check(parser, text, random.Random(1))
    assert content == "" and call.arguments == ARGS and call.complete
    string = CALL[parser.name] % json.dumps(ARGS)  # arguments written as a JSON string
    _, [call] = _check(parser, string, random.Random(2))
    assert call.arguments == ARGS


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_the_name_goes_out_before_the_arguments_end(parser):
    text = "Hi. " + CALL[parser.name] % ARGS
    stream = StreamingToolParser(parser, NAMES)
    named = parser.heads.named("get_weather")  # '{"name": "get_weather"', 'get_weather[ARGS]'
    head = text.index(named) + len(named)
    assert stream.feed(text[:head - 1]) == "Hi." and stream.take() == []  # no part of a name
    stream.feed(text[head - 1:head])
    [first] = stream.take()
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "")
    assert first.id.startswith("call_") or parser.name.startswith("mistral")
    middle = text.index("Zü") + 2
    stream.feed(text[head:middle])
    frags = stream.take()
    assert "".join(f.arguments for f in frags) == ARGS[:ARGS.index("Zü") + 2]
    assert all(f.name is None for f in frags)
    stream.feed(text[middle:])
    _, [call] = stream.finish()
    rest = "".join(f.arguments for f in stream.take())
    assert call.id == first.id and ARGS[:ARGS.index("Zü") + 2] + rest == call.arguments == ARGS


# run under python -O too, where aiollm.api's and aiollm.engine's own __init__ (the server,
# torch: ~4 s of CPU) are left out: the stream, its parsers and what they import load as ever
_BARE_PACKAGES = """
import os, sys, types
import aiollm
for name in ("api", "engine"):
    bare = types.ModuleType("aiollm." + name)
    bare.__path__ = [os.path.join(aiollm.__path__[0], name)]
    sys.modules[bare.__name__] = bare
"""
_TAKES_BACK = """
from aiollm.api.tool_calls import ToolCall
from aiollm.api.tool_parsers import HermesParser
from aiollm.api.tool_stream import StreamingToolParser

class Other(HermesParser):  # a parser whose whole reading disagrees with what it streamed
    def calls(self, text, names, **kw):
        return "", [ToolCall("tag", "{}")]

stream = StreamingToolParser(Other(), {"get_weather", "tag"})
stream.feed('<tool_call>\\n{"name": "get_weather", "arguments": {"city"')
assert stream.take()[0].name == "get_weather"
stream.finish()
"""


def test_a_call_taken_back_fails_loudly():
    """What a stream has sent of a call is never taken back: where a parser would (a bug),
    the stream raises an internal error that names the calls (a 500 error event, logged),
    also under python -O, where an assert vanished and the stream sent fragments that
    joined to no answer."""
    want = "the hermes tool-call stream read call 0 as 'tag'"
    with pytest.raises(TakenBack, match=want + ".* after sending 'get_weather'"):
        exec(_TAKES_BACK, {})
    run = subprocess.run([sys.executable, "-O", "-c", _BARE_PACKAGES + _TAKES_BACK],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and f"TakenBack: {want}" in run.stderr, run.stderr


# pieces of outputs: text, look-alikes, markers whole and in part, separators
PIECES = ["Hi", " ", "{", "}", "[", "; ", "\n", '{"a": 1}', '{"name": "foo"}', '{"name": 5}',
          "<|python_tag|>", "<|pyth", "<tool_call>", "<tool", "[TOOL_CALLS]", '{"name": "get_w',
          "[ARGS]", "get_weather[ARGS]", "get_w"]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_any_mix_of_text_and_calls_joins_to_the_whole_answer(parser):
    """Random mixes of text, markup and calls, ended anywhere, as "auto" and "required"
    outputs: the stream, split anywhere, joins to the whole answer (the faults above were
    found this way: a '{' or '[' before a call, <|python_tag|>, markup no call follows)."""
    check_random_mixes(parser, PIECES, CALL[parser.name] % '{"city": "P", "unit": "c"}',
                       random.Random(len(parser.name)), 400, 5, 0.7)


def check_random_mixes(parser, pieces: list[str], call: str, rng: random.Random, n: int,
                       most: int, cut: float) -> None:
    """_check n random joins of 1 to `most` of `pieces` and `call` (three times as likely
    as a piece), half of them ended anywhere, cut (max_tokens) with chance `cut` and
    "required" with chance 0.2."""
    for _ in range(n):
        text = "".join(rng.choice(pieces + [call] * 3) for _ in range(rng.randint(1, most)))
        text = text[:rng.choice([len(text), rng.randint(0, len(text))])]
        _check(parser, text, rng, cut=rng.random() < cut, required=rng.random() < 0.2)


def _shape(calls) -> list[tuple]:
    return [(c.name, c.arguments, c.complete) for c in calls]


# (text, content, arguments of its calls): every call a Llama 3 output writes is a call,
# wherever it stands, as the "auto" grammar (which triggers on each head when calls are
# parallel) holds each to its tool's schema and vLLM's llama3_json reads every one;
# <|python_tag|> (skip_special_tokens false) is markup wherever calls are, as it is absent
# from the text that skips special tokens; text between calls is content
LLAMA3_ROWS = [
    (TAG + CALL["llama3"] % P + TAG + CALL["llama3"] % Q, "", [P, Q]),  # Llama 3.2's parallel
    (CALL["llama3"] % P + TAG + CALL["llama3"] % Q, "", [P, Q]),
    (TAG + CALL["llama3"] % P + "\n" + TAG + CALL["llama3"] % Q + "\n", "", [P, Q]),
    (CALL["llama3"] % P + " some words " + CALL["llama3"] % Q, " some words", [P, Q]),
    # ',' joins calls outside a list too: vLLM's llama3_json reads every object, whatever
    # stands between them (its stream steps over any two characters after one)
    (CALL["llama3"] % P + ", " + CALL["llama3"] % Q, "", [P, Q]),
    ("Hi " + CALL["llama3"] % P + ",\n" + CALL["llama3"] % Q + " Done.", "Hi  Done.", [P, Q]),
    ("Hi " + CALL["llama3"] % P + " then " + CALL["llama3"] % Q + " Done.",
     "Hi  then  Done.", [P, Q]),
    (CALL["llama3"] % P + " x " + TAG + CALL["llama3"] % Q, " x", [P, Q]),
    (CALL["llama3"] % P + " x " + TAG + "print(1)", " x print(1)", [P]),
    ('{"name": 5} ' + CALL["llama3"] % P, '{"name": 5}', [P]),
    ('{"name": "get_w' + CALL["llama3"] % P + " x", '{"name": "get_w x', [P]),
    # JSON naming no tool is the model's text (test_a_call_to_no_tool_is_content), wherever
    # it stands: it neither takes the calls' text away nor leaves the calls incomplete
    (CALL["llama3"] % P + ' Also {"name": "Bob", "age": 3}',
     ' Also {"name": "Bob", "age": 3}', [P]),
    ('Hi {"name": "Bob", "age": 3} ' + CALL["llama3"] % P + " x",
     'Hi {"name": "Bob", "age": 3}  x', [P]),
    (CALL["llama3"] % P + "; " + CALL["llama3"].replace("get_weather", "nope") % Q,
     ' {"name": "nope", "parameters": %s}' % Q, [P]),
    # such an object is text as a whole: a call's JSON inside it (a value) is its text
    ('{"name": "Bob", "pet": ' + CALL["llama3"] % P + "} x",
     '{"name": "Bob", "pet": ' + CALL["llama3"] % P + "} x", []),
    (CALL["llama3"] % Q + ' {"name": 5, "pet": ' + CALL["llama3"] % P + "}",
     ' {"name": 5, "pet": ' + CALL["llama3"] % P + "}", [Q]),
]


@pytest.mark.parametrize("text,content,args", LLAMA3_ROWS)
def test_every_llama3_call_is_read_whole_cut_and_streamed_alike(text, content, args):
    """The whole answer, an output that max_tokens or a stop ended there (cut), and the
    stream (however split) read the same calls and content: a second <|python_tag|> left
    the second call content, and calls after text were read only when the output was cut."""
    rng = random.Random(19)
    for cut in (False, True):
        got, calls = _check(Llama3Parser(), text, rng, cut=cut)
        assert (got, [c.arguments for c in calls]) == (content, args), (text, cut)
        assert all(c.complete for c in calls), (text, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_an_output_ended_in_text_reads_alike_cut_or_whole(parser):
    """Random mixes of text, markup and calls that end in text: an output that max_tokens
    or a stop ended there holds no cut call, so it reads as the whole answer does."""
    rng = random.Random(20 + len(parser.name))
    call = CALL[parser.name] % P
    for _ in range(300):
        text = "".join(rng.choice(PIECES + [call] * 3) for _ in range(rng.randint(1, 5)))
        text += " Done."
        whole = _check(parser, text, rng)
        content, calls = _check(parser, text, rng, cut=True)
        assert (content, _shape(calls)) == (whole[0], _shape(whole[1])), text


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_arguments_nested_deeper_than_the_json_decoder_goes_are_read_without_error(parser):
    """A tool whose parameters allow any JSON lets a looping model write '[' after '[' in
    a call's arguments: the decoder's recursion limit made every reading (whole, cut and
    streamed) raise RecursionError, a failed request. Too deep to decode is as unparsable:
    the call the stream sent stays a call, incomplete, streamed or not."""
    deep = '{"a": ' + "[" * 3000 + "]" * 3000 + "}"
    text = "Ok. " + CALL[parser.name] % deep
    for t, cut in ((text, False), (text[:3000], True)):
        content, calls = parser.calls(t, NAMES, cut=cut)
        assert content == "Ok." and [c.name for c in calls] == ["get_weather"], t[:80]
        assert not calls[-1].complete and deep.startswith(calls[-1].arguments[:3000])
        for cuts in ([], list(range(1, len(t), 700))):
            got, joined, _ = _stream(parser, t, cuts, cut=cut)
            assert (got, [(n, a) for _, n, a in joined]) == (
                content, [(c.name, c.arguments) for c in calls]), cuts


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("number", ["-2.5e3", "7E+2", "0.25"])
def test_a_number_as_arguments_split_inside_is_read_whole(parser, number):
    """Arguments written as a bare number, a delta ending inside it ('-2.', '-2.5e'): the
    decoder reads '-2' there and stops at the '.', which the stream took for the number's
    end, sent '-2' complete, and read no call after it (the fraction was not a joint), so
    the calls after it went out only at the end and the answer lost a cut call's space."""
    rng = random.Random(21)
    text = "".join(CALL[parser.name] % a for a in (number, P, "[ "))
    for n in range(len(text) + 1):
        _check(parser, text[:n], rng, cut=True)
    content, calls = _check(parser, text, rng)
    assert [c.arguments for c in calls][:1] == [number], text
