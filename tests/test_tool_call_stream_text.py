"""Tool-call streams and the text around the calls: text before, between and after
calls, whitespace, markers and markup that turn out to be no call stay the model's content,
streamed (split anywhere) as the whole answer reads them, for every parser, cut by
max_tokens or not; under a content format, text before a call makes it all content."""

from __future__ import annotations

import random

import pytest

from aiollm.api.tool_parsers import HermesParser, MistralParser, MistralV11Parser
from test_tool_call_stream import CALL, NAMES, P, PARSERS, _check, _shape, _splits


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
