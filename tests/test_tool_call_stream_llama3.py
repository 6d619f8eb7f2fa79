"""Llama 3's tool-call streams: <|python_tag|> opens the calls (held back as markup,
never content, wherever a cut falls after it), a second tag's calls go out as written, and
the text before the calls keeps its ';' or ',' and goes out before the call's fragments."""

from __future__ import annotations

import random

import pytest

from aiollm.api.tool_parsers import Llama3Parser
from aiollm.api.tool_stream import StreamingToolParser
from test_tool_call_stream import CALL, NAMES, P, TAG, _check, _splits


def test_text_before_a_cut_call_keeps_its_last_character():
    """The text before the calls goes out as it comes, so an output that max_tokens cuts in
    a call keeps it whole, also where it ends with the format's separator (Llama 3's ';')."""
    parser = Llama3Parser()
    call = '{"name": "get_weather", "parameters": {"city": "P"}}'
    for text in ["Sure; " + call[:-10], "Sure;" + call + "; " + call[:-5]]:
        content, calls = _check(parser, text, random.Random(5), cut=True)
        assert content == "Sure;" and calls[0].name == "get_weather", text
        assert not calls[-1].complete


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


def test_llama3_calls_after_a_second_python_tag_stream_as_written():
    """Llama 3.2's parallel calls, each after its <|python_tag|>: the second call's name
    goes out once written, as one after ';' does, not at the output's end."""
    for sep in (TAG, "\n" + TAG, "; "):
        stream = StreamingToolParser(Llama3Parser(), NAMES)
        text = TAG + CALL["llama3"] % P + sep + '{"name": "get_weather"'
        assert stream.feed(text) == ""
        assert [(f.index, f.name) for f in stream.take() if f.name] == [
            (0, "get_weather"), (1, "get_weather")], sep


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
