"""The reasoning parsers (aiollm/api/reasoning.py): the split of whole outputs, the same split
of the same text streamed in deltas cut at every position, and the server's
/v1/chat/completions with --reasoning-parser (a regex forces a <think> output from the default
model, so the greedy output is known)."""

from __future__ import annotations

import itertools
import json

import pytest

from aiollm.api.reasoning import ReasoningSplitter, partial_tail, prompt_state, split, \
    splitter_for

DS = ("deepseek_r1", "")  # (parser, prompt tail)
QWEN = ("qwen3", "")

# (parser, prompt tail, shaped, output, reasoning, content)
CASES = [
    # deepseek_r1: everything up to </think> is reasoning, a leading <think> is dropped
    (*DS, False, "abc</think>\n\nxyz", "abc", "\n\nxyz"),
    (*DS, False, "<think>\nabc\n</think>\n\nxyz", "\nabc\n", "\n\nxyz"),
    (*DS, False, "no end tag at all", "no end tag at all", ""),
    (*DS, False, "<think>cut by max_tokens", "cut by max_tokens", ""),
    (*DS, False, "abc</think>", "abc", ""),
    (*DS, False, "a < b </thin and </think>x</think>y", "a < b </thin and ", "x</think>y"),
    (*DS, False, "", "", ""),
    (*DS, False, "<thi", "<thi", ""),
    (*DS, False, "abc</thi", "abc</thi", ""),
    # qwen3: reasoning only where the output opens with <think>
    (*QWEN, False, "<think>\nabc\n</think>\n\nxyz", "\nabc\n", "\n\nxyz"),
    (*QWEN, False, "plain answer", None, "plain answer"),
    (*QWEN, False, "answer with </think> inside", None, "answer with </think> inside"),
    (*QWEN, False, " <think>late</think>", None, " <think>late</think>"),
    (*QWEN, False, "<think>truncated", "truncated", ""),
    (*QWEN, False, "<thi", None, "<thi"),
    (*QWEN, False, "<thinking>", None, "<thinking>"),
    (*QWEN, False, "", None, ""),
    # a prompt that opens the block (Qwen3-2507 Thinking, DeepSeek-R1's template)
    ("qwen3", "<|im_start|>assistant\n<think>\n", False, "abc\n</think>\n\nxyz", "abc\n",
     "\n\nxyz"),
    ("deepseek_r1", "<｜Assistant｜><think>\n", False, "abc</think>xyz", "abc", "xyz"),
    # a prompt that closes it (Qwen3, enable_thinking false): all content
    ("qwen3", "assistant\n<think>\n\n</think>\n\n", False, "<think>x</think>y", None,
     "<think>x</think>y"),
    ("deepseek_r1", "<think>\n\n</think>\n\n", False, "abc</think>xyz", None, "abc</think>xyz"),
    # a grammar shapes the output from its first token: content unless it opens <think>
    ("deepseek_r1", "<think>\n", True, '{"a": 1}', None, '{"a": 1}'),
    ("deepseek_r1", "", True, "<think>r</think>c", "r", "c"),
]


@pytest.mark.parametrize("parser,tail,shaped,text,reasoning,content", CASES)
def test_whole_output(parser, tail, shaped, text, reasoning, content):
    assert split(splitter_for(parser, tail, shaped=shaped), text) == (reasoning, content)


def _stream(splitter: ReasoningSplitter, pieces: list[str]) -> tuple[str, str, list]:
    r_all = c_all = ""
    sent = []
    for p in pieces:
        r, c = splitter.feed(p)
        sent.append((r, c))
        r_all, c_all = r_all + r, c_all + c
    r, c = splitter.finish()
    return r_all + r, c_all + c, sent


@pytest.mark.parametrize("parser,tail,shaped,text,reasoning,content", CASES)
def test_streamed_at_every_split_equals_whole(parser, tail, shaped, text, reasoning, content):
    """Every cut into two and three deltas, and one character per delta: the reasoning and
    content deltas join to the whole output's fields, and no tag text leaks into a delta."""
    n = len(text)
    cuts = [(i,) for i in range(n + 1)] + list(itertools.combinations(range(1, n), 2))
    splits = [[text[a:b] for a, b in zip((0, *c), (*c, n))] for c in cuts] + [list(text)]
    for pieces in splits:
        s = splitter_for(parser, tail, shaped=shaped)
        r, c, _ = _stream(s, pieces)
        assert (r if s.entered else None, c) == (reasoning, content), pieces


def test_reasoning_streams_before_the_end_tag():
    """Reasoning is sent as it comes (only a possible partial tag is held back)."""
    s = splitter_for("deepseek_r1", "", shaped=False)
    assert s.feed("Let me think") == ("Let me think", "")
    assert s.feed(" a <") == (" a ", "")
    assert s.feed("/thi") == ("", "")
    assert s.feed("nk>\n\nAns") == ("", "\n\nAns")
    assert s.feed("wer") == ("", "wer")
    assert s.finish() == ("", "")
    q = splitter_for("qwen3", "", shaped=False)
    assert q.feed("Hel") == ("", "Hel")  # not a possible <think>: content at once
    assert q.feed("lo") == ("", "lo")


def test_helpers():
    assert partial_tail("abc</th", "</think>") == 4
    assert partial_tail("abc", "</think>") == 0
    assert partial_tail("a<", "</think>") == 1
    assert partial_tail("</think>", "</think>") == 0  # a whole tag is found, not held
    assert prompt_state("x<think>\n") == "reasoning"
    assert prompt_state("<think></think>\n\n") == "content"
    assert prompt_state("assistant\n") is None
    with pytest.raises(ValueError, match="unknown reasoning parser 'r1'"):
        splitter_for("r1", "", shaped=False)
