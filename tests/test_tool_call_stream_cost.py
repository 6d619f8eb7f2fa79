"""What reading tool calls costs on the event loop: a stream's per-delta work does not
grow with the calls already sent, nor a whole answer's reading with the heads it holds.
Each case times the same kind of work at two sizes in one process and checks the ratio
(a rescan of everything sent grows with the size; the bound leaves room for a busy host)."""

from __future__ import annotations

import time

import pytest

from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser
from aiollm.api.tool_stream import StreamingToolParser

PARSERS = [HermesParser(), Llama3Parser(), MistralParser()]
NAMES = {"get_weather", "search"}
ARGS = '{"city": "P", "unit": "c"}'
CALL = {"hermes": '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>\n',
        "llama3": '{"name": "get_weather", "parameters": %s}; ',
        "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": %s}]\n'}


def _feed_cost(parser, calls: int) -> float:
    """Seconds to feed 4-character deltas of 20 calls after `calls` calls were sent (the
    best of 3)."""
    call = CALL[parser.name] % ARGS
    best = float("inf")
    for _ in range(3):
        stream = StreamingToolParser(parser, NAMES)
        stream.feed(call * calls)
        stream.take()
        more = call * 20
        t = time.perf_counter()
        for i in range(0, len(more), 4):
            stream.feed(more[i:i + 4])
            stream.take()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_delta_costs_the_same_after_many_calls(parser):
    """Each delta compared every call sent so far with its reading again: 2,000 parallel
    calls (100 KB) took seconds of event loop, streamed; a delta's work is the call it adds
    to. 20 calls after 1,000 cost about what they cost after 10 (it was ~50 times more)."""
    few, many = _feed_cost(parser, 10), _feed_cost(parser, 1000)
    assert many < 8 * few, (few, many)
