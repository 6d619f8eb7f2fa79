"""Wrapped tool calls (a JSON list of Llama 3 calls, a code fence around calls:
aiollm/api/call_wrap.py) through both routes that read calls: /v1/chat/completions over
HTTP, streamed and whole, for outputs a regex makes a random-weight model write exactly
(test_tool_call_stream_live), and /v1/responses' events and items for the same texts,
split one character at a time too (test_responses_tool_stream: its stream and whole
answer built from the text as the route builds them)."""

from __future__ import annotations

import random

import pytest
from test_api_token_ids_echo import tiny  # noqa: F401 (the fixture)
from test_responses_tool_stream import _check as responses_check
from test_tool_call_stream_live import CALL, _answers

from aiollm.api.tool_parsers import Llama3Parser

ARGS = '{"city": "P"}'
OTHER = CALL.replace('"P"', '"Q"')
# output text: (the content, the calls' arguments), streamed and whole
WANT = {f"[{CALL}, {OTHER}]": ("", [ARGS, '{"city": "Q"}']),
        f"```json\n{CALL}\n```": ("", [ARGS]),
        f"Here:\n```\n[{CALL}]\n```\nDone.": ("Here:\n\nDone.", [ARGS]),
        "See [1, 2] and ```x```.": ("See [1, 2] and ```x```.", []),
        f"Run:\n```sh\nls\n```\n{CALL}": ("Run:\n```sh\nls\n```", [ARGS])}
IDS = ["list", "fence", "fenced-list-between-text", "no-call", "code-block-then-call"]


@pytest.fixture(scope="module")
def answers(tiny) -> dict[str, tuple[dict, dict]]:  # noqa: F811 (the fixture)
    return dict(zip(WANT, _answers(tiny, list(WANT))))


@pytest.mark.parametrize("text", WANT, ids=IDS)
def test_chat_answers_wrapped_calls_without_the_wrapper(answers, text):
    """The message of an output of wrapped calls only has content null and every call;
    the stream's deltas join to it (no '[' nor fence sent as content)."""
    whole, stream = answers[text]
    assert whole == stream, (whole, stream)
    content, args = WANT[text]
    assert (whole["content"], [a for _, a in whole["calls"]]) == (content, args), whole
    assert whole["finish_reason"] == ("tool_calls" if args else "stop"), whole


@pytest.mark.parametrize("text", WANT, ids=IDS)
def test_responses_answer_wrapped_calls_without_the_wrapper(text):
    """/v1/responses: function_call items only (no message item of the wrapper), the
    events' Response the whole answer's, stopped or cut by max_output_tokens."""
    content, args = WANT[text]
    for finish in ("stop", "length"):
        items = responses_check(Llama3Parser(), text, finish, random.Random(1))
        assert [i["arguments"] for i in items if i["type"] == "function_call"] == args
        assert "".join(c["text"] for i in items if i["type"] == "message"
                       for c in i["content"]) == content, (text, finish)
        assert any(i["type"] == "message" for i in items) == bool(content), items
