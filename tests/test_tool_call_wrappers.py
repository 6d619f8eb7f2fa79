"""Calls wrapped in markup the format does not define: a JSON list of Llama 3 calls
(`[{...}, {...}]`, as bare-JSON models write parallel calls) and a markdown code fence
around calls (```json ... ```, or ``` alone). The wrapper is markup, not content: an
output of wrapped calls only has no content (null on the wire), streamed or not, and the
stream holds the wrapper's opening back (a bounded amount) until it knows whether a call
follows it, then sends it as content where none does. Whole and streamed answers agree,
however the stream is split (one character at a time too)."""

from __future__ import annotations

import random

import pytest

from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.api.tool_stream import StreamingToolParser
from test_tool_call_stream import CALL, NAMES, P, Q, _check, check_random_mixes

PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser()]
LLAMA3 = Llama3Parser()
A, B = CALL["llama3"] % P, CALL["llama3"] % Q
WANT = [("get_weather", P, True), ("get_weather", Q, True)]


def _shape(calls) -> list[tuple]:
    return [(c.name, c.arguments, c.complete) for c in calls]


@pytest.mark.parametrize("text,content", [
    (f"[{A}, {B}]", ""),
    (f"[{A},{B}]", ""),
    (f"[\n  {A},\n  {B}\n]", ""),
    (f"[{A}, {B}]\n", ""),
    (f"Sure. [{A}, {B}]", "Sure."),
    (f"[{A}, {B}] Done.", " Done."),
    (f"[{A}]\n[{B}]", ""),
])
def test_a_json_list_of_llama3_calls_leaves_no_brackets(text, content):
    """'[' + call + ', ' + call + ']': both calls, and neither the brackets nor the comma
    as content ('[, ]' was), as vLLM's llama3_json answers it (content null)."""
    rng = random.Random(1)
    for cut in (False, True):
        got, calls = _check(LLAMA3, text, rng, cut=cut)
        assert (got, _shape(calls)) == (content, WANT[:len(calls)]) and len(calls) == 2, (
            text, cut)


def test_a_llama3_list_cut_anywhere_leaves_no_bracket():
    """max_tokens anywhere in a list of calls after the first name: the calls written
    so far, no '[' or ',' as content."""
    rng = random.Random(2)
    text = f"Hi [{A}, {B}]"
    for n in range(text.index('"get_weather"') + len('"get_weather"'), len(text)):
        got, calls = _check(LLAMA3, text[:n], rng, cut=True)
        assert got == "Hi" and calls and calls[0].name == "get_weather", text[:n]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("fence", ["```json\n", "```\n", "```JSON\n\n", "```tool_call\n"])
def test_a_call_in_a_code_fence_leaves_no_fence(parser, fence):
    """A call (or two) inside a markdown code fence: the fence is markup, the content
    empty (it was the fence: '```json\\n\\n```'); text around the fence stays."""
    rng = random.Random(3)
    one, two = CALL[parser.name] % P, CALL[parser.name] % Q
    sep = {"hermes": "\n", "llama3": "; ", "mistral": "\n", "mistral_v11": ""}[parser.name]
    for body, calls in ((one, WANT[:1]), (one + sep + two, WANT)):
        for before, after, content in (("", "\n```", ""), ("", "\n```\n", ""),
                                       ("Here:\n", "\n```", "Here:"),
                                       ("Here:\n", "\n```\nDone.", "Here:\n\nDone.")):
            text = before + fence + body + after
            for cut in (False, True):
                got, found = _check(parser, text, rng, cut=cut)
                assert (got, _shape(found)) == (content, calls), (text, cut)


def test_a_fenced_llama3_list_leaves_neither_fence_nor_brackets():
    rng = random.Random(4)
    for text in (f"```json\n[{A}, {B}]\n```", f"```\n[\n{A},\n{B}\n]\n```\n"):
        for cut in (False, True):
            got, calls = _check(LLAMA3, text, rng, cut=cut)
            assert (got, _shape(calls)) == ("", WANT), (text, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_fenced_call_cut_anywhere_leaves_no_fence(parser):
    """max_tokens anywhere after the call's name: the fence is no content."""
    rng = random.Random(5)
    text = "Ok.\n```json\n" + CALL[parser.name] % P + "\n```"
    named = parser.heads.named("get_weather")  # '{"name": "get_weather"', 'get_weather[ARGS]'
    for n in range(text.index(named) + len(named), len(text)):
        got, calls = _check(parser, text[:n], rng, cut=True)
        assert got == "Ok." and [c.name for c in calls] == ["get_weather"], text[:n]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("text", [
    "Use [1, 2] here.", "a [ b", "x [] y", "```python\nprint(1)\n```", "```\n```",
    "```json\n{\"a\": 1}\n```", "Run ``` then [", "``", "```json", "```json\n", "[",
    "```" + "x" * 40 + "\n{", "[" + " " * 40 + "{",
])
def test_brackets_and_fences_without_calls_stay_content(parser, text):
    """A bracket or a fence that no call follows is the model's text, streamed or not,
    wherever the stream is split (it is held back only until that is known)."""
    rng = random.Random(6)
    for cut in (False, True):
        assert _check(parser, text, rng, cut=cut) == (text, []), (text, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_the_stream_holds_a_wrapper_back_a_bounded_amount(parser):
    """Text that might open wrapped calls is held back only while it might: a fence's
    first line and a bracket, not an unbounded run of text after them."""
    stream = StreamingToolParser(parser, NAMES)
    assert stream.feed("Look:\n```json\n") == "Look:"
    # no call: the fence and its block are content, its closing too (no wrapper's opening)
    assert stream.feed('{"a": 1}\n```') == '\n```json\n{"a": 1}\n```'
    stream = StreamingToolParser(parser, NAMES)
    sent = stream.feed("```" + "j" * 100)  # no fence's language is that long
    assert len(sent) >= 100, sent
    stream = StreamingToolParser(parser, NAMES)
    sent = stream.feed("[" + "x" * 100)
    assert sent == "[" + "x" * 100


def test_the_second_listed_call_streams_as_it_is_written():
    """Calls in a list go out as they are written, the second once its name is (not at
    the output's end), and the '[' never as content."""
    stream = StreamingToolParser(LLAMA3, NAMES)
    assert stream.feed(f'[{A}, {{"name": "get_weather"') == ""
    assert [(f.index, f.name) for f in stream.take() if f.name] == [
        (0, "get_weather"), (1, "get_weather")]


# pieces of outputs around the wrappers: text, brackets, fences, separators, calls
PIECES = ["Hi", " ", "\n", "[", "]", ", ", "```", "```json\n", "json", "`", "{", '{"a": 1}',
          '{"name": 5}', "; "]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_any_mix_of_wrappers_text_and_calls_joins_to_the_whole_answer(parser):
    check_random_mixes(parser, PIECES, CALL[parser.name] % P,
                       random.Random(7 + len(parser.name)), 300, 6, 0.6)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_code_blocks_closing_fence_before_a_call_stays_content(parser):
    """A fence that closes the model's code block is no wrapper's opening, even where a
    call follows it on the next line: the block stays whole (its closing ``` was eaten)."""
    rng = random.Random(8)
    call = CALL[parser.name] % P
    for before in ("Run this:\n```python\nprint(1)\n```", "```\nls\n```",
                   "```python\na = 1\n```\n```\nb = 2\n```"):
        for cut in (False, True):
            got, calls = _check(parser, before + "\n" + call, rng, cut=cut)
            assert (got, _shape(calls)) == (before, WANT[:1]), (before, cut)
        got, calls = _check(parser, before + "\n```json\n" + call + "\n```", rng)
        assert (got, _shape(calls)) == (before, WANT[:1]), before


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_code_block_on_the_line_after_a_call_keeps_its_fences(parser):
    """A code block that begins on the line after a call: its opening fence begins a line
    (Mistral's reader had passed the newline with the call's, so the fence read as one
    within a line, the block's closing as an opening, and the fence around the next call
    stayed content as that block's closing: '```json\\n\\n```')."""
    rng = random.Random(13)
    one, two = CALL[parser.name] % P, CALL[parser.name] % Q
    for gap in ("\n", "\n\n", " \n  ", "\r\n"):
        block = gap + "```python\nx\n```"
        for cut in (False, True):
            got, calls = _check(parser, one + block + "\n```json\n" + two + "\n```", rng,
                                cut=cut)
            assert (got, _shape(calls)) == (block, WANT), (gap, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_whitespace_between_fenced_blocks_of_calls_is_no_content(parser):
    """Whitespace alone between two blocks of calls separates them, a fence around either
    or both or not: the content is what follows the last, as without fences (Llama 3 and
    Mistral kept the blank lines after a wrapper's closing, Llama 3 those before an
    opening: '\\n\\n\\nDone.', where Hermes answered '\\nDone.')."""
    rng = random.Random(16)
    one, two = CALL[parser.name] % P, CALL[parser.name] % Q
    fenced = "```json\n%s\n```".__mod__
    for gap in ("\n", "\n\n", " \n ", "\r\n\r\n"):
        for a, b in ((one, two), (fenced(one), two), (one, fenced(two)),
                     (fenced(one), fenced(two))):
            for cut in (False, True):
                got, calls = _check(parser, a + gap + b + "\nDone.", rng, cut=cut)
                assert (got, _shape(calls)) == ("\nDone.", WANT), (a, gap, b, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_fence_closes_a_wrapper_only_as_a_line_of_backticks(parser):
    """A wrapper's closing is a run of three or more backticks that nothing but spaces or
    tabs follows on its line (CommonMark's closing fence): '```python' after the calls
    opens the model's next code block ('python' was left as content, its fence eaten), and
    a longer run closes the wrapper whole (one '`' was left)."""
    rng = random.Random(14)
    call = CALL[parser.name] % P
    for after, content in (("\n```python\nx = 1\n```", "\n```python\nx = 1\n```"),
                           ("\n````", ""), ("\n```` \nDone.", " \nDone."),
                           ("\n```\t\r\nDone.", "\t\r\nDone."),
                           ("\n```` more", "\n```` more")):
        for cut in (False, True):
            got, calls = _check(parser, "```json\n" + call + after, rng, cut=cut)
            assert (got, _shape(calls)) == (content, WANT[:1]), (after, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_wrappers_opening_may_have_spaces_around_its_language(parser):
    """Spaces or tabs before and after a fence's language, as CommonMark's opening fence
    has them and as a wrapper's closing took them after its backticks: the fence is
    markup (it was content, '```json \\n\\n``` ', the closing after it kept too); other
    words after the language make no wrapper's opening."""
    rng = random.Random(17)
    call = CALL[parser.name] % P
    for opening in ("```json \n", "``` json\n", "```\tjson\t\r\n", "```  \n"):
        for cut in (False, True):
            got, calls = _check(parser, "Hi\n" + opening + call + "\n``` \nDone.", rng,
                                cut=cut)
            assert (got, _shape(calls)) == ("Hi\n \nDone.", WANT[:1]), (opening, cut)
    got, calls = _check(parser, "```json x\n" + call + "\n```", rng)
    assert (got, _shape(calls)) == ("```json x\n\n```", WANT[:1])


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_backticks_that_begin_no_line_open_no_wrapper(parser):
    """A wrapper's opening is a fence, as a code block's is: at a line's start after at
    most three spaces. The closing ``` of an indented code block (four spaces), ``` after a
    tab or within a sentence, before a call, are the model's text (they were eaten as a
    wrapper's opening), and a fence indented three spaces still wraps."""
    rng = random.Random(15)
    call = CALL[parser.name] % P
    for before, after, content in (
            ("Code:\n    ```\n    x\n    ```\n", "", "Code:\n    ```\n    x\n    ```"),
            ("\t```\n", "", "\t```"),
            ("Sure! ```json\n", "\n```", "Sure! ```json\n\n```"),
            ("Hi\n   ```json\n", "\n   ```", "Hi")):
        for cut in (False, True):
            got, calls = _check(parser, before + call + after, rng, cut=cut)
            assert (got, _shape(calls)) == (content, WANT[:1]), (before, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_wrapper_goes_with_a_call_cut_before_its_name(parser):
    """max_tokens inside a call's head, its name not yet whole: the head is markup (no
    call), and so is the wrapper's opening before it ('```json' or '[' was content)."""
    rng = random.Random(9)
    call = CALL[parser.name] % P
    named = parser.heads.named("get_weather")
    name_end = call.index(named) + len(named) - 1
    leads = ["Ok.\n```json\n"] + (["Ok. [", "Ok.\n```\n[\n"] if parser.name == "llama3" else [])
    for lead in leads:
        for n in range(len(parser.start), name_end):  # its marker whole, its name not
            for required in (False, True):
                got, calls = _check(parser, lead + call[:n], rng, cut=True, required=required)
                assert (got, calls) == ("Ok.", []), (lead + call[:n], required)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_backticks_in_a_calls_arguments_are_no_code_block(parser):
    """A call's arguments are not the model's text: a run of backticks in them (a pattern
    to search for, a file's markdown) opens no code block, so a fence around the next
    call is still markup ('```json' and '```' were content)."""
    rng = random.Random(10)
    ticks = '{"city": "```", "unit": "c"}'
    for args in (ticks, '{"city": "```py\\n```\\n```", "unit": "c"}'):
        first, second = CALL[parser.name] % args, CALL[parser.name] % Q
        text = f"```json\n{first}\n```\nThen:\n```json\n{second}\n```"
        for cut in (False, True):
            got, calls = _check(parser, text, rng, cut=cut)
            assert (got, [c.arguments for c in calls]) == ("\nThen:", [args, Q]), (text, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_backticks_within_a_line_open_no_code_block(parser):
    """A fence begins a line (up to 3 spaces before it, as CommonMark has it): ``` within
    a sentence opens no code block, so the block after it keeps its closing fence before
    a call (it was eaten as a wrapper's opening), and a fence around a call is markup."""
    rng = random.Random(11)
    call = CALL[parser.name] % P
    for words in ("Write ``` to open a block.", "Type ```` or ```; then"):
        for block in ("\n```python\nx = 1\n```", "\n   ```\nx\n   ```", ""):
            for cut in (False, True):
                got, calls = _check(parser, words + block + "\n" + call, rng, cut=cut)
                assert (got, _shape(calls)) == (words + block, WANT[:1]), (words, block)
                text = words + block + "\n```json\n" + call + "\n```"
                got, calls = _check(parser, text, rng, cut=cut)
                assert (got, _shape(calls)) == (words + block, WANT[:1]), (words, block)


# pieces of markdown answers: code blocks (indented, inline ```, nested fences), non-ASCII
MARKDOWN = ["```python\nprint('é')\n```\n", "```\nls\n```", "Use ``` here. ", "   ```\n",
            "    ```\n", "````\n```\n````\n", "```json\n", "\n```", "\n```\n", "\r\n", "🙂",
            "日本", "`x`", "``", "[", "]", "\n", " ", "Done.", "\n" * 17]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_markdown_around_calls_joins_to_the_whole_answer(parser):
    """Code blocks before, between and after calls (also calls whose arguments hold
    backticks), cut anywhere, split anywhere: the stream joins to the whole answer, and an
    answer with no call is its text as written, byte for byte."""
    rng = random.Random(12 + len(parser.name))
    calls = [CALL[parser.name] % P, CALL[parser.name] % '{"city": "```", "unit": "c"}']
    for _ in range(150):
        text = "".join(rng.choice(MARKDOWN + calls * 3) for _ in range(rng.randint(1, 8)))
        cut = rng.random() < 0.5
        text = text[:rng.randint(0, len(text))] if cut else text
        content, found = _check(parser, text, rng, cut=cut)
        assert found or cut or content == text, text


@pytest.mark.parametrize("text,content,args", [
    (f'[{A}, {{"x": 1}}]', '[{"x": 1}]', [P]),
    (f'Hi [{A}, {{"x": 1}}] Done.', 'Hi [{"x": 1}] Done.', [P]),
    (f'[\n  {A},\n  {{"x": 1}},\n  {B}\n]', '[\n  {"x": 1}\n]', [P, Q]),
    (f'[{A}, {{"x": 1}}, "y", {B}, 2]', '[{"x": 1}, "y", 2]', [P, Q]),
    (f'[{A}, {{"name": "nope", "parameters": {{}}}}]', '[{"name": "nope", "parameters": {}}]',
     [P]),
    (f'```json\n[{A}, {{"x": 1}}]\n```\nDone.', '[{"x": 1}]\nDone.', [P]),
    # a list of calls among them is calls, as json_calls reads one after a call
    (f'[{A}, [{B}]]', '', [P, Q]),
    (f'[{A}, [{B}], {{"x": 1}}]', '[{"x": 1}]', [P, Q]),
    # <|python_tag|> before an element is markup, as it is without the other values
    (f'[<|python_tag|>{A}, {{"x": 1}}]', '[{"x": 1}]', [P]),
    (f'[{A}, <|python_tag|>{B}, {{"x": 1}}]', '[{"x": 1}]', [P, Q]),
])
def test_a_llama3_list_of_calls_and_other_values_keeps_the_others_as_a_list(
        text, content, args):
    """A JSON list whose elements are not all calls (to the request's tools): its calls
    are calls (a stream has sent the first before the others are written), the list
    without them is content as written, a well-formed list (' {"x": 1}]' was, the '['
    taken as the calls' markup and the ']' left)."""
    rng = random.Random(18)
    for cut in (False, True):
        got, calls = _check(LLAMA3, text, rng, cut=cut)
        assert (got, [c.arguments for c in calls]) == (content, args), (text, cut)
        assert all(c.complete for c in calls), (text, cut)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("indent", [" ", "  ", "   "])
def test_an_indented_wrappers_indent_is_markup_too(parser, indent):
    """A fence indented one to three spaces (CommonMark's fence) around calls: its indent
    goes with it, as the closing fence's does ('Hi\\n  \\nDone.' kept the opening's)."""
    rng = random.Random(19)
    call = CALL[parser.name] % P
    for before, after, content in (("Hi\n", "\nDone.", "Hi\n\nDone."), ("", "\nDone.", "\nDone."),
                                   ("Hi\n", " \nDone.", "Hi\n \nDone.")):
        text = before + indent + "```json\n" + call + "\n" + indent + "```" + after
        for cut in (False, True):
            got, calls = _check(parser, text, rng, cut=cut)
            assert (got, _shape(calls)) == (content, WANT[:1]), (text, cut)


TAG = "<|python_tag|>"


@pytest.mark.parametrize("text,content,calls", [
    (f"Hi\n```json\n{TAG}{A}\n```\nDone.", "Hi\n\nDone.", WANT[:1]),
    (f"Hi\n```json\n{TAG}\n{A}; {TAG}{B}\n```", "Hi", WANT),
    (f"Hi\n[{TAG}{A}, {B}]\nDone.", "Hi\n\nDone.", WANT),
    (f"{A}\nThen:\n```json\n{TAG}{B}\n```", "\nThen:", WANT),
    # a tag after the calls (read with them) follows no wrapper: the '[' before stays
    (f"[[{A}]{TAG}", "[", WANT[:1]), (f"Hi\n```json\n[\n[{A}] {TAG}", "Hi\n```json\n[", WANT[:1]),
])
def test_python_tag_inside_a_wrapper_leaves_no_wrapper(text, content, calls):
    """<|python_tag|> (skip_special_tokens false) between a wrapper's opening and the
    calls: the wrapper is markup as it is without the tag, the text decoding skips it from
    ('```json\\n\\n```' was content)."""
    rng = random.Random(20)
    for cut in (False, True):
        got, found = _check(LLAMA3, text, rng, cut=cut)
        assert (got, _shape(found)) == (content, calls), (text, cut)


def _check_cut_tag(lead: str, content: str, after: str, rng: random.Random,
                   hermes_lead: str | None = None) -> None:
    """Llama 3 output `lead` + <|python_tag|> + `after`, cut there (tool_choice auto and
    required), leaves `content` and the call `lead` holds (A) if any; Hermes, its marker
    after `hermes_lead` (default `lead`, its A spelt as a Hermes call), leaves `content`."""
    for required in (False, True):
        got, found = _check(LLAMA3, lead + TAG + after, rng, cut=True, required=required)
        want = WANT[:1] if lead.startswith(A) else []
        assert (got, _shape(found)) == (content, want), (lead, after, required)
    hermes = HermesParser()
    marker_lead = (lead if hermes_lead is None else hermes_lead).replace(A, CALL["hermes"] % P)
    got, _ = _check(hermes, marker_lead + hermes.start + after, rng, cut=True)
    assert got == content, (marker_lead, after)


@pytest.mark.parametrize("lead,content", [("Hi\n```json\n", "Hi"), ("Hi\n   ```\n", "Hi"),
                                          ("Hi\n[", "Hi"), (A + "\n```json\n", "")])
@pytest.mark.parametrize("after", ["", "\n", " ", '{"na', '{"name": '])
def test_python_tag_cut_in_a_wrapper_leaves_no_wrapper(lead, content, after):
    """max_tokens or a stop right after <|python_tag|> (or in the head after it) inside a
    wrapper: the tag opens calls, so the wrapper before it is markup too, as Hermes' is
    before a <tool_call> cut there (Llama 3 left '```json' as content)."""
    _check_cut_tag(lead, content, after, random.Random(21), hermes_lead=lead.replace("[", ""))


@pytest.mark.parametrize("lead,content", [("Hi\n```", "Hi\n```"), ("```", "```"),
                                          ("```json", "```json"), ("\n```", "\n```"),
                                          ("Hi\n```json ", "Hi\n```json"),
                                          ("x\n```-2.5", "x\n```-2.5"),
                                          ("Hi\n```json\n" + " " * 20, "Hi\n```json"),
                                          ("Hi\n```\u00a0", "Hi\n```"),
                                          (A + " x\n```", " x\n```")])
@pytest.mark.parametrize("after", ["", "\n", '{"na'])
def test_backticks_right_before_a_cut_python_tag_open_no_wrapper(lead, content, after):
    """A fence opens a wrapper only where a line break ends its line, and holds no more
    whitespace than a wrapper's opening: backticks that the tag follows on their line (or
    past that whitespace) are the model's text, cut there as they are before a call (and
    as Hermes' are before a <tool_call> cut there), as a stream sends them. The whole
    answer dropped them (any fence-like end of the text before the tag) as a wrapper's
    opening while a stream had sent them as content."""
    _check_cut_tag(lead, content, after, random.Random(22))
