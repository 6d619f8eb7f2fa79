"""What reading tool calls costs on the event loop: a stream's per-delta work does not
grow with the calls sent, the arguments or the text before it, nor a whole answer's
reading with the square of its length. Counted where the work is in Python (a timing on
a shared host is noise), timed with a wide margin where it is in one C call."""

from __future__ import annotations

import json.decoder
import random
import sys
import time

import pytest

from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.api.tool_stream import StreamingToolParser
from test_tool_call_stream import CALL as ONE_CALL
from test_tool_call_stream import _check

# the last: Mistral-Small-3.2's form, a call's id after [CALL_ID] (its template's)
PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser(),
           MistralV11Parser(call_ids=True)]
LLAMA3 = PARSERS[1]
NAMES = {"get_weather", "search"}
ARGS = '{"city": "P", "unit": "c"}'
CALL = {"hermes": '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>\n',
        "llama3": '{"name": "get_weather", "parameters": %s}; ',
        "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": %s}]\n',
        "mistral_v11": "[TOOL_CALLS]get_weather[ARGS]%s\n",
        "mistral_v11_ids": "[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]%s\n"}
ONE_CALL = {**ONE_CALL,
            "mistral_v11_ids": "[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]%s"}


def _form(parser) -> str:
    """The parser's key in CALL: its name, and "_ids" where its heads write an id."""
    return parser.name + ("_ids" if parser.heads.call_id else "")


class _Count:
    """Counts, while active, the Python and built-in functions called (`calls`) and the
    characters a JSONDecodeError counts the lines of (`scanned`: all the text before the
    place a value failed to decode)."""

    def __init__(self):
        self.calls = self.scanned = 0

    def __enter__(self):
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)

    def _event(self, frame, event, arg):
        if event in ("call", "c_call"):
            self.calls += 1
            if event == "call" and frame.f_code is json.decoder.JSONDecodeError.__init__.__code__:
                self.scanned += frame.f_locals["pos"]


def _feed_calls(parser, calls: int) -> int:
    """The functions called to feed, in 4-character deltas, 20 calls after `calls` calls
    were sent."""
    call = CALL[_form(parser)] % ARGS
    stream = StreamingToolParser(parser, NAMES)
    stream.feed(call * calls)
    stream.take()
    more = call * 20
    with _Count() as count:
        for i in range(0, len(more), 4):
            stream.feed(more[i:i + 4])
            stream.take()
    return count.calls


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_a_delta_costs_the_same_after_many_calls(parser):
    """Each delta compared every call sent so far with its reading again: 2,000 parallel
    calls (100 KB) took ~10 s of event loop, streamed; a delta's work is the call it adds
    to. 20 calls after 1,000 cost what they cost after 10 (it was ~50 times more)."""
    few, many = _feed_calls(parser, 10), _feed_calls(parser, 1000)
    assert many < 1.2 * few, (few, many)


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
@pytest.mark.parametrize("piece", ["x %s ", "%s", '{"name": 5, "v": [1]} %s'])
def test_reading_grows_with_the_output_not_its_square(parser, piece):
    """Every place a run of calls ends (text after it, Mistral's next marker) was decoded
    as JSON that failed there, a JSONDecodeError that counts the lines of all the text
    before it: an output of many calls read in time quadratic in its length (Llama 3, which
    reads every head, and Mistral: ~1 s for 6,000 calls). What the readers scan so is
    now at most the output's length, whole or cut."""
    text = piece.replace("%s", CALL[_form(parser)] % ARGS) * 2000
    for cut in (False, True):
        with _Count() as count:
            parser.calls(text, NAMES, cut=cut)
        assert count.scanned <= len(text), (cut, count.scanned, len(text))


@pytest.mark.parametrize("piece", ["[%s x ", "[<|python_tag|>%s x ", "[%s, t ", "[%s, -x ",
                                   "[%s, 1, nul "])
def test_reading_llama3_lists_grows_with_the_output_not_its_square(piece):
    """A '[' before a call opens a list that is read whole where it parses (json_calls):
    each list that text ends before its ']' was decoded as JSON that failed there (twice
    with the mixed list's reading, once more with <|python_tag|> after its '['), so that
    such an output read in time quadratic in its length. A list is read element by
    element, and no further where one is followed by neither ',' nor ']', nor where a
    number or literal (true, false, null) is not written whole ('t ', '-x')."""
    text = piece.replace("%s", CALL["llama3"].removesuffix("; ") % ARGS) * 2000
    for cut in (False, True):
        with _Count() as count:
            LLAMA3.calls(text, NAMES, cut=cut)
        assert count.scanned <= len(text), (cut, count.scanned, len(text))


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_a_delta_in_long_arguments_costs_what_it_adds(parser):
    """A delta that held a closing bracket read the call's arguments again from their
    start, to know whether they were complete: arguments of many small objects (rows of a
    table, 40 KB) took 3 to 7 s of event loop, streamed, each delta re-reading (and failing
    to decode) all of them. A delta's work no longer grows with the arguments before it."""
    def cost(rows: int) -> int:
        args = '{"rows": [' + '{"a": 1, "b": [2]}, ' * rows
        stream = StreamingToolParser(parser, NAMES)
        stream.feed(CALL[_form(parser)].split("%s")[0] + args)
        more = '{"a": 1, "b": [2]}, ' * 20
        with _Count() as count:
            for i in range(0, len(more), 4):
                stream.feed(more[i:i + 4])
        assert [len(f.arguments) for f in stream.take()][-1] > 0
        return count.scanned + count.calls

    few, many = cost(10), cost(1000)
    assert many < 1.2 * few, (few, many)


# JSON values whose strings hold brackets, quotes and backslashes, escaped
_ATOMS = ['"x\\"y"', '"a\\"}]"', '"\\\\"', '"[{"', '{"k": [1, {"x": "}"}]}', "[]", "{}",
          '"\\\\\\"]"', "1", "null"]


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_arguments_read_bracket_by_bracket_join_to_the_whole_answer(parser):
    """The stream follows open arguments bracket by bracket (the shortcut above), reading
    strings and escapes as JSON does: a quote escaped in a string, then a closing bracket
    after the string, ends the arguments where the whole answer ends them, split anywhere,
    whole or cut. (Escapes read wrongly kept such arguments open past their end.)"""
    rng = random.Random(5)
    for _ in range(60):
        args = "{" + ", ".join(f'"k{i}": {rng.choice(_ATOMS)}'
                               for i in range(rng.randint(0, 4))) + "}"
        call = ONE_CALL[_form(parser)] % args
        text = rng.choice(["", "Hi "]) + call + rng.choice(["", " Done.", "\n" + call])
        _check(parser, text, rng)
        _check(parser, text[:rng.randint(1, len(text))], rng, cut=True)


def _delta_seconds(parser, before: str, delta: str) -> float:
    """Seconds to feed 200 deltas `delta` after `before` (the best of 5): timed, as the work
    is inside regular-expression searches."""
    best = float("inf")
    for _ in range(5):
        stream = StreamingToolParser(parser, NAMES)
        stream.feed(before)
        t = time.perf_counter()
        for _ in range(200):
            stream.feed(delta)
        best = min(best, time.perf_counter() - t)
    return best


def _prose_delta_seconds(parser, prose: int) -> float:
    """Seconds for 4-character deltas of text after a call and `prose` characters of text."""
    return _delta_seconds(
        parser, CALL[_form(parser)] % ARGS + ("Then some {x} words. " * prose)[:prose], "abc ")


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_a_delta_of_text_after_the_calls_costs_the_same_after_much_text(parser):
    """Each delta after a call searched all the text since that call for the next call's
    head (~1 s of event loop for 100 KB after a call; 2.5 s for Llama 3 text full of heads
    that lead to no call): a delta is searched once, with the few characters before it a
    head may start in. 100 KB of text before them no longer makes deltas ~25 times dearer."""
    few, many = _prose_delta_seconds(parser, 1000), _prose_delta_seconds(parser, 100_000)
    assert many < 5 * few, (few, many)


def _blank_delta_seconds(parser, blank: int) -> float:
    """Seconds for one-character deltas of whitespace after `blank` characters of it and
    no call."""
    return _delta_seconds(parser, "Hi\n```json\n" + "\n" * blank, "\n")


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_a_delta_of_whitespace_costs_the_same_after_much_whitespace(parser):
    """Whitespace is held back (a call may follow it), and each delta read all of it again
    (a model writing newlines: 50 KB of them one at a time took ~12 s of event loop): the
    text held before any call is read from its first character that is not whitespace."""
    few, many = _blank_delta_seconds(parser, 1000), _blank_delta_seconds(parser, 100_000)
    assert many < 5 * few, (few, many)


def _whole_code_calls(parser, blocks: int) -> int:
    """The functions called to read a whole answer of `blocks` code blocks and no call."""
    text = "Here:\n```python\nprint(`x`)\n```\n" * blocks
    with _Count() as count:
        assert parser.calls(text, NAMES, cut=True) == (text, [])
    return count.calls


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_reading_the_code_blocks_of_a_whole_answer_is_one_pass_in_c(parser):
    """Whether a fence is a wrapper's depends on the code blocks before it (call_wrap.Fences),
    read for a whole answer from its start: run by run (or line by line) in Python, 100 KB
    of code blocks took 5 to 18 ms of event loop; the lines between the first and the last
    are read by one regular expression, so 3,000 blocks cost what 30 do."""
    few, many = _whole_code_calls(parser, 30), _whole_code_calls(parser, 3000)
    assert many < 1.2 * few, (few, many)


@pytest.mark.parametrize("parser", PARSERS, ids=_form)
def test_a_long_run_of_backticks_is_read_in_linear_time(parser):
    """A model stuck writing backticks within a line: the run that ends a line was looked
    for by a regular expression that tried every backtick as its start, to the run's end
    (20,000 of them: ~1.3 s of event loop, 100,000: ~30 s); it is read once."""
    for text in ("a" + "`" * 20_000 + "x", "a" + "`" * 20_000):
        best = float("inf")
        for _ in range(3):  # the best of 3: a loaded machine's pauses are not the reading's
            t = time.perf_counter()
            assert parser.calls(text, NAMES, cut=True) == (text, [])
            best = min(best, time.perf_counter() - t)
        assert best < 0.1, (len(text), best)


def _llama3_text_seconds(*sizes: int) -> list[float]:
    """Seconds to read a whole Llama 3 answer of each of `sizes` characters of JSON objects
    that name no tool (text, not calls) among code fences: this thread's CPU time (a
    loaded machine's preemptions, which a long reading meets more often than a short one,
    are not counted), the best of 5 rounds that time every size in turn."""
    unit = '{"name": "Bob", "v": "```"}\n```\n'
    texts = [unit * (size // len(unit)) for size in sizes]
    best = [float("inf")] * len(texts)
    for _ in range(5):
        for i, text in enumerate(texts):
            t = time.thread_time()
            assert LLAMA3.calls(text, NAMES) == (text, [])
            best[i] = min(best[i], time.thread_time() - t)
    return best


def test_llama3_objects_of_text_among_code_blocks_read_in_linear_time():
    """Llama 3 reads every head, and a fence before one may be a wrapper's, which depends
    on the code blocks before it: each object of text read them from the text's start again
    (100 KB of objects among fences took ~4 s of event loop); they are read on from the last
    object's. Ten times the text costs about ten times as much (it was ~40 to 80; the
    bound leaves room for a loaded machine)."""
    few, many = _llama3_text_seconds(10_000, 100_000)
    assert many < 25 * few, (few, many)


_LOOP = '{"name": "get_weather", "parameters": {}}'  # a call a looping model repeats


@pytest.mark.parametrize("piece", ["[%s, ", "[%s, [", '[%s, {"x" ', "[%s, [x "])
@pytest.mark.parametrize("head", [_LOOP, _LOOP.replace("get_weather", "nope")],
                         ids=["call", "no tool"])
def test_reading_llama3_lists_nested_in_themselves_grows_with_the_output(head, piece):
    """A model looping until max_tokens nests a list in itself, `[{...}, [{...}, [...`:
    each level was decoded to the text's end (or the decoder's recursion limit) twice,
    as a list that holds calls and then after the call before it, each failure counting
    the lines of all the text before it (an element that never parses, '{"x" ...' or
    '[x ...', once); the brackets are matched once, and a value that never closes is
    not decoded."""
    text = (piece % head) * 300
    for cut in (False, True):
        with _Count() as count:
            LLAMA3.calls(text, NAMES, cut=cut, length=cut)
        assert count.scanned <= len(text), (cut, count.scanned, len(text))


def _nested_seconds(sizes: tuple[int, ...], streamed: bool) -> list[float]:
    """Seconds to read a Llama 3 answer of `size` characters of a call's list nested in
    itself, cut by max_tokens, whole or streamed in 16-character deltas: the best of 5
    for each size, the sizes interleaved (a loaded machine's pauses fall on all)."""
    unit = f"[{_LOOP}, "
    best = [float("inf")] * len(sizes)
    for _ in range(5):
        for k, size in enumerate(sizes):
            text = (unit * (size // len(unit) + 1))[:size]
            t = time.perf_counter()
            if streamed:
                stream = StreamingToolParser(LLAMA3, NAMES)
                for i in range(0, len(text), 16):
                    stream.feed(text[i:i + 16])
                    stream.take()
                _, calls = stream.finish(cut=True, length=True)
            else:
                _, calls = LLAMA3.calls(text, NAMES, cut=True, length=True)
            best[k] = min(best[k], time.perf_counter() - t)
            assert len(calls) >= size // len(unit)  # each level's call
    return best


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_llama3_list_nested_in_itself_reads_in_linear_time(streamed):
    """The nested lists above took time quadratic in their length to read, on the event
    loop (10k characters: ~12 ms, 40k: ~260 ms, 100k: 1.6 s, 400k: 9.8 s); four times
    the text costs about four times as much (it was ~20 times; the bound leaves room for
    a loaded machine)."""
    few, many = _nested_seconds((10_000, 40_000), streamed)
    assert many < 10 * few, (few, many)


@pytest.mark.parametrize("unit", ['{"name": ,\\"```\n\\"', ':\\"{"name": \\", "parameters": ',
                                  '<|python_tag|>"\\""get_weather"}x{"name": '])
def test_llama3_heads_of_invalid_json_with_escaped_quotes_read_in_linear_time(unit):
    """Heads of invalid JSON, `\\"` between them: the decoder fails a few characters into
    each, but the bracket matcher read each to the text's end, every head standing in a
    string of the readings before it (a `\\"` escapes in a string and opens one outside
    it), so the readings shared nothing (20k characters: 270 ms, main 5 ms). A reading
    stops where the JSON stops being valid, as the decoder does: four times the text
    calls about four times the functions."""
    counts = []
    for size in (10_000, 40_000):
        text = (unit * (size // len(unit) + 1))[:size]
        with _Count() as count:
            LLAMA3.calls(text, NAMES, cut=True, length=True)
        counts.append(count.calls)
    assert counts[1] < 6 * counts[0], counts


@pytest.mark.parametrize("args", ['{"xs": [%s]}' % ", ".join(["1.5", '"a"', "null"] * 2000),
                                  "{%s}" % ", ".join(f'"k{i}": {i}' for i in range(6000))],
                         ids=["list", "object"])
def test_a_llama3_call_of_many_values_is_matched_in_c(args):
    """The brackets are matched as JSON reads them, each run of numbers, strings and
    literals (and an object's members that hold them) with one regular expression, not
    one Python step each: a call of 6,000 values took ~8 times main's time to read (the
    decoder's C alone), 0.86 s for 20 such calls of 60k characters."""
    text = '{"name": "get_weather", "parameters": %s}' % args
    with _Count() as count:
        _, calls = LLAMA3.calls(text, NAMES)
    assert [c.arguments for c in calls] == [args]
    assert count.calls < 1000, count.calls
