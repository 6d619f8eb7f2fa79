"""Tool calls streamed as they are written: for every parser and tool_choice mode, the
content and call fragments of a stream, split anywhere (one character at a time too), join
to the whole answer: the same content, the same calls, the same arguments byte for byte;
also for outputs cut by max_tokens and for markup that turns out not to be a call. A
call's name fragment goes out while its arguments are still being written."""

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


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_call_sent_then_invalid_stays_a_call(parser):
    """Markup that turns out not to be a call after its name went out: the stream cannot
    take the call back, so the whole answer keeps it too (the last call incomplete, the
    text before the marker its content), streamed or not, however split. (Llama 3's JSON
    naming no tool is text, not markup: LLAMA3_ROWS.)"""
    rng = random.Random(3)
    good = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    nope = [] if parser.name == "llama3" else [  # no such tool
        "Ok. " + good + " " + good.replace("get_weather", "nope")]
    for text in ["Ok. " + good[:-1] + " trailing junk",  # its end mis-written
                 "Ok. " + good.replace('"P"', '"P" oops')] + nope:  # JSON that does not parse
        content, calls = _check(parser, text, rng)
        assert content == "Ok." and [c.name for c in calls] == ["get_weather"], text
        assert not calls[-1].complete, text
    if not parser.heads.lead:  # NAME[ARGS]: no head that could go on otherwise
        return
    # a head that goes on otherwise is the call, its arguments read whole at the end
    text = CALL[parser.name].replace('"arguments": %s', '"id": 1, "arguments": {}').replace(
        '"parameters": %s', '"id": 1, "parameters": {}')
    _, [call] = _check(parser, text, rng)
    assert call.arguments == "{}" and call.complete


@pytest.mark.parametrize("parser", [HermesParser(), MistralParser(), MistralV11Parser()],
                         ids=lambda p: p.name)
def test_call_shaped_text_after_the_calls_stays_content(parser):
    """Text after the calls that quotes a call's JSON, without the markup that joins calls
    in the parser's format, is no call: it stays content, streamed or not (the stream must
    not send it as a call, which the whole answer would then have to keep). A Llama 3
    call's JSON is its markup: a call wherever it stands (LLAMA3_ROWS)."""
    rng = random.Random(4)
    good = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    quoted = '{"name": "get_weather", "%s": {"city": "Q"}}' % parser.args_key
    if not parser.heads.lead:
        quoted = 'get_weather[ARGS]{"city": "Q"}'
    for text in (good + "\nI called " + quoted + " for you.",
                 good + " so " + quoted):
        content, calls = _check(parser, text, rng)
        assert [(c.name, c.arguments, c.complete) for c in calls] == [
            ("get_weather", '{"city": "P", "unit": "c"}', True)], text
        assert quoted in content, text


def test_text_before_a_cut_call_keeps_its_last_character():
    """The text before the calls goes out as it comes, so an output that max_tokens cuts in
    a call keeps it whole, also where it ends with the format's separator (Llama 3's ';')."""
    parser = Llama3Parser()
    call = '{"name": "get_weather", "parameters": {"city": "P"}}'
    for text in ["Sure; " + call[:-10], "Sure;" + call + "; " + call[:-5]]:
        content, calls = _check(parser, text, random.Random(5), cut=True)
        assert content == "Sure;" and calls[0].name == "get_weather", text
        assert not calls[-1].complete


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_text_before_the_calls_ending_like_a_marker_is_kept(parser):
    """Text before the calls that ends with the start of a marker (Llama 3's '{', Mistral's
    '[') goes out as content once the call's marker follows; the whole answer kept it
    only while no call was cut (a finish of "stop" or "length" dropped it as a marker cut
    part way), so stream and whole answer differed by that character. (A '[' just before
    a Llama 3 call opens a JSON list of calls: markup, test_tool_call_wrappers.)"""
    rng = random.Random(6)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    for before in ("Sure {", "x[", "<tool", "Ok "):
        want = before[:-1] if parser.brackets and before.endswith("[") else before.rstrip()
        for text in (before + call, before + call + "\n" + call[:-4]):
            for cut in (False, True):
                content, calls = _check(parser, text, rng, cut=cut)
                assert content == want and calls, (text, cut)


def test_python_tag_opens_the_calls():
    """Llama 3's <|python_tag|> (in the text with skip_special_tokens false) opens its
    calls, as vLLM's llama3_json reads it: held back like the call's JSON, never content
    before a call, streamed or not; without a call after it, it is the model's text."""
    parser, rng = Llama3Parser(), random.Random(7)
    call = CALL["llama3"] % '{"city": "P", "unit": "c"}'
    for text in ("<|python_tag|>" + call, "Hi <|python_tag|>" + call,
                 '{"a": 1}<|python_tag|>' + call + " ", "Hi\n<|python_tag|>; " + call):
        for cut in (False, True):
            content, calls = _check(parser, text, rng, cut=cut)
            assert "<|python_tag|>" not in content and calls, (text, cut)
    # max_tokens or a stop at the tag or in the head: the tag is markup too
    for text in ("Hi <|python_tag|>", 'Hi <|python_tag|>{"name": "get_w'):
        assert _check(parser, text, rng, cut=True) == ("Hi", []), text
    text = "Hi <|python_tag|>print(1)"  # Llama 3.1's code interpreter: no call
    assert _check(parser, text, rng) == (text, [])


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_markup_that_is_no_call_stays_content(parser):
    """A marker followed by what no call's head begins with (JSON with a name that is no
    string, free text) is the model's text: an output that ended there with "stop" or
    "length" dropped everything from the marker on, streamed and whole. Text before a real
    call stays content beside the call."""
    rng = random.Random(8)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    junk = {"hermes": "<tool_call> not a call", "llama3": '{"name": 5} is no call',
            "mistral": "[TOOL_CALLS] not a call", "mistral_v11": "[TOOL_CALLS] not a call"}[
        parser.name]
    for text in ("Hi " + junk, junk + ".", '{"a": 1} ' + junk):
        for cut in (False, True):
            assert _check(parser, text, rng, cut=cut) == (text, []), (text, cut)
    for before in ('{"a": 1}', "Hi " + junk):
        content, calls = _check(parser, before + "\n" + call, rng, cut=True)
        assert content == before and [c.name for c in calls] == ["get_weather"], before


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
    run = subprocess.run([sys.executable, "-O", "-c", _TAKES_BACK], capture_output=True,
                         text=True, timeout=60)
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


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_text_after_the_calls_keeps_its_leading_whitespace(parser):
    """Text after the last call keeps the whitespace the model wrote before it, streamed
    or not, as Hermes' text after a </tool_call> always did: Llama 3's and Mistral's
    readers skipped it with the calls' separators, so 'Checking.' + call + '\\n\\nDone.'
    came out as 'Checking.Done.' (a ';' between the calls and the text is their
    separator, and stays dropped for Llama 3)."""
    rng = random.Random(9)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    sep = ";" if parser.name == "llama3" else ""
    for after in (" Done.", "\n\nDone.", sep + " Done."):
        between = {"hermes": "", "llama3": "; ", "mistral": "\n", "mistral_v11": ""}[
            parser.name]
        for calls in (call, call + between + call):
            for cut in (False, True):
                content, found = _check(parser, "Checking." + calls + after, rng, cut=cut)
                assert found and content == "Checking." + after.removeprefix(sep), (
                    calls + after, cut)


def test_a_call_cut_anywhere_after_python_tag_leaves_the_text_before_it():
    """max_tokens or a stop anywhere after <|python_tag|> (skip_special_tokens false):
    what follows the tag can only be calls, so the tag and a call head cut part way are
    markup, wherever the cut falls. The answer was "Hi" at the tag and from '{"name": ' on,
    but 'Hi <|python_tag|>{"na' between them (and after the tag and a newline)."""
    parser, rng = Llama3Parser(), random.Random(10)
    for tag in ("<|python_tag|>", "<|python_tag|>\n"):
        text = "Hi " + tag + CALL["llama3"] % '{"city": "P", "unit": "c"}'
        for n in range(len("Hi " + tag), len(text)):
            content, calls = _check(parser, text[:n], rng, cut=True)
            assert content == "Hi", text[:n]
            assert all(c.name == "get_weather" for c in calls), text[:n]
    # text after the tag that no call's head begins stays the model's text
    assert _check(parser, "Hi <|python_tag|>print(1)", rng, cut=True)[0] == (
        "Hi <|python_tag|>print(1)")


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_text_after_call_shaped_text_is_kept_when_the_output_stops(parser):
    """An output that ends with "stop" (its eos: read as one that may end inside a call)
    and has text after call-shaped text: the text stays content as it does where the
    output is read as whole. Llama 3's reader took the last quoted call for a call cut at
    the output's end and dropped the text after it ('{call}\\nI called {call} for you.'
    gave '\\nI called', the quote a second call); a call whose markup goes on as no call's
    does is the call the stream sent, incomplete, cut or not."""
    rng = random.Random(11)
    good = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    quoted = '{"name": "get_weather", "%s": {"city": "Q"}}' % parser.args_key
    for text in (good + "\nI called " + quoted + " for you.", good + " A " + good + " B"):
        plain, calls = _check(parser, text, rng)
        assert plain.endswith(" for you." if "called" in text else " B"), text
        content, cut_calls = _check(parser, text, rng, cut=True)
        assert content == plain and _shape(cut_calls) == _shape(calls), text
    text = "Ok. " + good[:-1] + " trailing junk"  # its end mis-written
    _, plain = _check(parser, text, rng)
    content, calls = _check(parser, text, rng, cut=True)
    assert content == "Ok." and _shape(calls) == _shape(plain), text
    assert [(c.name, c.complete) for c in calls] == [("get_weather", False)], text


def _shape(calls) -> list[tuple]:
    return [(c.name, c.arguments, c.complete) for c in calls]


def test_text_between_mistral_call_blocks_keeps_its_leading_whitespace():
    """Mistral under "auto" may write one [TOOL_CALLS] block per call with text between
    them: that text keeps the whitespace the model wrote before it, as the text after the
    last block does (and Hermes' text between blocks does). The reader skipped it with
    the block's separators: call + '\\n\\nNow the other:\\n' + call gave 'Now the other:'
    where the paragraph break was the model's. Whitespace alone between blocks is still
    their separator, no content."""
    parser, rng = MistralParser(), random.Random(12)
    call = CALL["mistral"] % '{"city": "P", "unit": "c"}'
    for cut in (False, True):
        content, calls = _check(parser, "A " + call + "\n\nB " + call + " C", rng, cut=cut)
        assert content == "A \n\nB  C" and len(calls) == 2, cut
        content, calls = _check(parser, call + "\n" + call + "\n\nDone.", rng, cut=cut)
        assert content == "\n\nDone." and len(calls) == 2, cut


def test_whitespace_alone_between_hermes_blocks_is_their_separator():
    """Hermes' calls one block after another, '\\n' between them (as Qwen's template writes
    them, and the "required" grammar's separator), then text: the newline between the
    blocks is markup, as Llama 3's and Mistral's separators are, not content before the
    text ('\\n\\nDone.' came out as '\\n\\n\\nDone.', 'A ' + calls + ' B' as 'A \\n B').
    Text between blocks keeps its own whitespace."""
    parser, rng = HermesParser(), random.Random(13)
    call = CALL["hermes"] % '{"city": "P", "unit": "c"}'
    for cut in (False, True):
        content, calls = _check(parser, call + "\n" + call + "\n\nDone.", rng, cut=cut)
        assert content == "\n\nDone." and len(calls) == 2, cut
        content, calls = _check(parser, "A " + call + "\n" + call + " B", rng, cut=cut)
        assert content == "A  B" and len(calls) == 2, cut
        content, calls = _check(parser, "A " + call + "\nor\n" + call + " B", rng, cut=cut)
        assert content == "A \nor\n B" and len(calls) == 2, cut


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_text_after_a_head_that_goes_on_as_no_call_is_kept_when_the_output_stops(parser):
    """After a call, text then a call's head that goes on as no call's does
    (`{"name": "get_weather"}`: no `, "parameters": ` after the name), then more text, in
    an output that ends with "stop" or "length" (read as one that may end inside a call):
    the head is no call cut at the end, as a complete call that text follows is none. The
    Llama 3 reader took it for a second call, cut, of no arguments, and dropped what
    followed (' B' was lost, and a call of arguments '' came that the model never wrote).
    For Llama 3 that head is a complete call of no arguments, read as the first is."""
    rng = random.Random(14)
    good = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    text = good + ' A {"name": "get_weather"} B'
    plain, calls = _check(parser, text, rng)
    content, cut_calls = _check(parser, text, rng, cut=True)
    assert content == plain and content.endswith(" B"), text
    assert _shape(cut_calls) == _shape(calls) == [
        ("get_weather", '{"city": "P", "unit": "c"}', True)] + (
        [("get_weather", "{}", True)] if parser.name == "llama3" else []), text
    # a head cut at the output's end is still the call the output was writing
    head = {"hermes": "\n<tool_call>\n", "llama3": "; ", "mistral": "[TOOL_CALLS][",
            "mistral_v11": "[TOOL_CALLS]"}[parser.name] + parser.heads.named("get_weather")
    content, calls = _check(parser, good + head, rng, cut=True)
    assert [(c.name, c.complete) for c in calls][-1] == ("get_weather", False), calls


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_calls_separated_by_crlf_read_as_by_newline(parser):
    """'\\r\\n' between calls (JSON whitespace, as '\\n' is) separates them as '\\n' does:
    Llama 3's reader stopped at the '\\r', so the calls the stream had sent were kept
    without the whole answer's reading, the last one marked incomplete and the text after
    them lost ('Done.'); Mistral's kept the '\\r\\n' between blocks as content."""
    rng = random.Random(15)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    for sep in ("\n", "\r\n"):
        for cut in (False, True):
            content, calls = _check(parser, call + sep + call + "\r\nDone.", rng, cut=cut)
            assert content == "\r\nDone." and _shape(calls) == [
                ("get_weather", '{"city": "P", "unit": "c"}', True)] * 2, (sep, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\t", "\r"])
def test_unicode_whitespace_between_calls_separates_them_as_a_space_does(parser, space):
    """Whitespace other than JSON's (U+00A0, U+3000) between calls or blocks is their
    separator, as the stream reads it (and Hermes' reader did): Llama 3's reader stopped at
    it, so the second call the stream had sent was kept incomplete and the text after the
    calls lost ('Done.'); Mistral's kept it as content."""
    rng = random.Random(16)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    for cut in (False, True):
        content, calls = _check(parser, call + space + call + " Done.", rng, cut=cut)
        assert content == " Done." and _shape(calls) == [
            ("get_weather", '{"city": "P", "unit": "c"}', True)] * 2, (space, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_marker_in_text_after_the_calls_stays_text(parser):
    """Text after a call that holds the format's marker followed by no call
    ('x [TOOL_CALLS] y') is the model's text, as Hermes kept ' x <tool_call> y': Mistral's
    reader gave up on the whole answer at such a marker, so the call the stream had sent
    was kept incomplete and the text after it lost."""
    rng = random.Random(17)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    marker = parser.start.strip()
    for after in (f" x {marker} y", f" x {marker} y " + call, f"\n{marker} y."):
        content, calls = _check(parser, "A " + call + after, rng)
        assert content.startswith("A " + after.removesuffix(" " + call)), (after, content)
        assert calls and all(c.complete for c in calls), after


@pytest.mark.parametrize("parser", [HermesParser(), MistralParser(), MistralV11Parser()],
                         ids=lambda p: p.name)
def test_a_marker_in_text_before_the_calls_stays_text(parser):
    """A marker that no call follows in the text before the calls ('x [TOOL_CALLS] y') is
    the model's text, and the call after it is read, as Hermes read ' <tool_call> y' (and
    vLLM's Mistral reader finds the call's array): Mistral's reader gave up the whole
    answer at such a marker, the call lost. (Llama 3's calls are read from its first head
    on: a head that goes on as no call leaves the rest text.)"""
    rng = random.Random(18)
    call = CALL[parser.name] % '{"city": "P", "unit": "c"}'
    marker = parser.start.strip()
    for text, want in ((f"x {marker} y " + call, f"x {marker} y"),
                       (f"{marker} y\n" + call + " z", f"{marker} y\n z"),
                       (f"x {marker} y " + call + f" {marker} w", f"x {marker} y  {marker} w")):
        for cut in (False, True):
            content, calls = _check(parser, text, rng, cut=cut)
            assert content == want and _shape(calls) == [
                ("get_weather", '{"city": "P", "unit": "c"}', True)], (text, cut)


TAG = "<|python_tag|>"
P, Q = '{"city": "P", "unit": "c"}', '{"city": "Q", "unit": "f"}'
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


def test_llama3_calls_after_a_second_python_tag_stream_as_written():
    """Llama 3.2's parallel calls, each after its <|python_tag|>: the second call's name
    goes out once written, as one after ';' does, not at the output's end."""
    for sep in (TAG, "\n" + TAG, "; "):
        stream = StreamingToolParser(Llama3Parser(), NAMES)
        text = TAG + CALL["llama3"] % P + sep + '{"name": "get_weather"'
        assert stream.feed(text) == ""
        assert [(f.index, f.name) for f in stream.take() if f.name] == [
            (0, "get_weather"), (1, "get_weather")], sep


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


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_under_a_format_text_before_a_call_makes_it_all_content(parser):
    """tool_choice "auto" beside a content format (ChatPlan.formatted): an output that
    opens with a call is read for calls as ever (the grammar's calls branch); one with text
    before its first call is the format's content, all of it, streamed (however split) as
    the whole answer reads it. A wrapper the parser reads elsewhere (a code fence, Llama 3's
    list, a ',' before the calls) is such text: the calls' branch opens with a call, so a
    JSON list answer whose item is spelt as a call is that answer (it was read as a call)."""
    from aiollm.api.chat_plan import ChatPlan

    plan = ChatPlan([], [], [], "assistant", "auto", False, None, parser, set(NAMES), True,
                    None, True, "", None, "", None)
    rng = random.Random(23)
    call = CALL[parser.name] % P
    for text, calls in [("Answer: " + call, 0), (" " + call, 1), (call + "\n" + call, 2),
                        ('{"a": ' + call + "}", 0), ("\n", 0), (call[:5], 0),
                        ("[" + call + "]", 0), ("```json\n" + call + "\n```", 0),
                        (", " + call, 0), ("\n```\n" + call, 0)]:
        for cut in (False, True):
            content, found = plan.calls(text, cut=cut)
            assert len(found) == calls and (calls or content == text), (text, cut)
            for cuts in _splits(text, rng):
                stream, got, prev = plan.stream_calls(), "", 0
                for end in cuts + [len(text)]:
                    got += stream.feed(text[prev:end])
                    prev = end
                rest, final = stream.finish(cut=cut)
                assert (got + rest, [(c.name, c.arguments) for c in final]) == (
                    content, [(c.name, c.arguments) for c in found]), (text, cuts, cut)


@pytest.mark.parametrize("text,before,after", [
    ("Let me check, " + CALL["llama3"] % P, "Let me check,", ""),
    ("Let me check,<|python_tag|>" + CALL["llama3"] % P, "Let me check,", ""),
    ("See [1], then, " + CALL["llama3"] % P + "]", "See [1], then,", " ]"),
    ('{"a": [1], ' + CALL["llama3"] % P + "}", '{"a": [1],', " }"),
])
def test_a_llama3_comma_before_a_call_is_sent_before_it(text, before, after):
    """A ',' before Llama 3's calls in prose ("Let me check, CALL") is the sentence's, sent
    before the call as any text before it is, never after the call's fragments (on
    /v1/responses that would be a message item of its own), however the stream is split."""
    rng = random.Random(24)
    content, calls = Llama3Parser().calls(text, NAMES)
    assert (content, len(calls)) == (before + after, 1), text
    for cuts in _splits(text, rng):
        stream, sent, calling, prev = StreamingToolParser(Llama3Parser(), NAMES), "", False, 0
        for end in cuts + [len(text)]:
            out = stream.feed(text[prev:end])
            assert not (calling and out), (text, cuts)  # nothing after a call's fragment
            sent, calling, prev = sent + out, calling or bool(stream.take()), end
        rest, final = stream.finish()
        assert (sent, rest, len(final)) == (before, after, 1), (text, cuts)
