"""/v1/responses streams of tool calls, without a model: the events of a model's text fed
in pieces (one character at a time too) are the openai SDK's types, in order, and the
Response the SDK's stream state builds from them is the whole answer's: the same items
(message, function_call items, their arguments byte for byte, their statuses), for every
parser, whole or cut by max_output_tokens. A call's item is added once its name is written,
before its arguments are."""

from __future__ import annotations

import json
import random

import pydantic
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from aiollm.api.cut_calls import may_cut_a_call
from aiollm.api.responses_output import ResponseHead, answer_items, status_of, usage_of
from aiollm.api.responses_request import ResponsesRequest
from aiollm.api.responses_stream import ResponseEvents
from aiollm.api.tool_parsers import HermesParser, Llama3Parser, MistralParser, MistralV11Parser
from aiollm.api.tool_stream import StreamingToolParser
from aiollm.sampling_params import SamplingParams
from test_tool_call_stream import ARGS, CALL, LLAMA3_ROWS, NAMES

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
PARSERS = [HermesParser(), Llama3Parser(), MistralParser(), MistralV11Parser()]


def _events(parser, text: str, cuts: list[int], finish: str, **kw) -> list[dict]:
    """The events of a stream of `text` in pieces ending at `cuts`, ended by `finish`; `kw`
    the streaming parser's (required)."""
    events = ResponseEvents(ResponseHead(ResponsesRequest(input="x"), "m", SamplingParams()))
    calls = StreamingToolParser(parser, NAMES, **kw)
    out, prev, bounds = events.begin(), 0, cuts + [len(text)]
    for k, end in enumerate(bounds):
        last = k == len(bounds) - 1
        out += events.output_delta("", text[prev:end], calls, finish if last else None)
        prev = end
    status, incomplete = status_of(finish)
    out += events.finish(status, incomplete, usage_of(3, 4, 0))
    return [json.loads(line[len("data: "):]) for line in out.decode().splitlines()
            if line.startswith("data: ")]


def _whole(parser, text: str, finish: str) -> list[dict]:
    """The whole answer's output items, as /v1/responses builds them."""
    content, calls = parser.calls(text, NAMES, cut=may_cut_a_call(finish),
                                  length=finish == "length")
    before = StreamingToolParser(parser, NAMES).feed(text) if calls else content
    return answer_items(None, content, calls, before, status_of(finish)[0])


def _shape(items: list) -> list[tuple]:
    """The items without their random ids."""
    return [(i["type"], i["status"], i.get("name"), i.get("arguments"),
             [c["text"] for c in i.get("content", [])]) for i in items]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_streamed_calls_build_the_whole_response(parser):
    rng = random.Random(5)
    text = "Sure. " + CALL[parser.name] % ARGS
    texts = [(text, "stop"), (text + " Done.", "stop")]
    texts += [(text[:n], "length") for n in range(0, len(text), 7)]
    for t, finish in texts:
        _check(parser, t, finish, rng)


@pytest.mark.parametrize("text,content,args", LLAMA3_ROWS)
def test_llama3_calls_anywhere_build_the_whole_response(text, content, args):
    """Llama 3's calls after text or after a second <|python_tag|> are function_call items,
    streamed or not, whether the eos or max_output_tokens ended the output: the answer was
    one call and a message of the rest unless the output was cut there."""
    for finish in ("stop", "length"):
        whole = _check(Llama3Parser(), text, finish, random.Random(6))
        assert [i["arguments"] for i in whole if i["type"] == "function_call"] == args
        assert "".join(c["text"] for i in whole if i["type"] == "message"
                       for c in i["content"]) == content, (text, finish)


def _check(parser, t: str, finish: str, rng: random.Random) -> list[dict]:
    """The events of `t` split anywhere are SDK types and build the whole answer (its
    output items, returned)."""
    whole = _whole(parser, t, finish)
    for cuts in ([], list(range(1, len(t))),
                 sorted(rng.sample(range(1, max(len(t), 2)), min(len(t) // 3, 30)))):
        events = _events(parser, t, cuts, finish)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        sdk = ResponseStreamState(input_tools=omit, text_format=omit)
        for e in events:
            sdk.handle_event(EVENTS.validate_python(e))  # each an SDK type
        final = events[-1]["response"]
        assert events[-1]["type"] == "response.completed"
        assert _shape(final["output"]) == _shape(whole), (t, cuts)
        built = sdk._completed_response  # what client.responses.stream returns
        assert [(i.type, getattr(i, "arguments", None)) for i in built.output] == [
            (i["type"], i.get("arguments")) for i in whole]
        for item in final["output"]:  # each call's deltas join to its arguments
            if item["type"] == "function_call":
                deltas = [e["delta"] for e in events if e.get("item_id") == item["id"]
                          and e["type"] == "response.function_call_arguments.delta"]
                assert "".join(deltas) == item["arguments"] and all(deltas)
    return whole


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_call_item_is_added_when_its_name_is_written(parser):
    text = "Sure. " + CALL[parser.name] % ARGS
    events = _events(parser, text, list(range(1, len(text))), "stop")
    types = [e["type"] for e in events]
    added = next(i for i, e in enumerate(events) if e["type"] == "response.output_item.added"
                 and e["item"]["type"] == "function_call")
    assert events[added]["item"]["name"] == "get_weather"
    assert events[added]["item"]["arguments"] == ""
    deltas = [i for i, t in enumerate(types) if t == "response.function_call_arguments.delta"]
    assert len(deltas) > len(ARGS) // 2 and deltas[0] > added  # arguments piece by piece
    # the message before the call is done before the call's item is added
    assert types.index("response.output_text.done") < added
    assert types[-3:] == ["response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"], types[-6:]


def test_a_failure_while_a_call_is_written_leaves_it_incomplete():
    """A request that fails while a call streams: response.failed holds the call as far as
    it was sent, incomplete, an SDK type like every event."""
    from aiollm.api.http_errors import ApiError

    events = ResponseEvents(ResponseHead(ResponsesRequest(input="x"), "m", SamplingParams()))
    calls = StreamingToolParser(HermesParser(), NAMES)
    text = CALL["hermes"] % ARGS
    out = events.begin() + events.output_delta("", text[:-20], calls, None)
    events.commit()
    out += events.failed(ApiError(500, "boom"))
    sent = [json.loads(line[len("data: "):]) for line in out.decode().splitlines()
            if line.startswith("data: ")]
    for e in sent:
        EVENTS.validate_python(e)
    [item] = sent[-1]["response"]["output"]
    assert (item["type"], item["status"], item["name"]) == (
        "function_call", "incomplete", "get_weather")
    # the text cut 20 characters before its end: inside the arguments, after "}\n</tool_call>"
    assert item["arguments"] == ARGS[:len(ARGS) - (20 - len("}\n</tool_call>"))]


# a call of each family whose arguments are whole but whose markup is not closed: the
# output was cut in the call's own closing, and the model was still writing it
OPEN_CALLS = {"hermes": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}',
                         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}}',
                         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}}\n'
                         '</tool_c'],
              "llama3": ['{"name": "get_weather", "parameters": {"city": "P"}'],
              "mistral": ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "P"}'],
              "mistral_v11": []}  # nothing closes a call but its arguments' end
CLOSED_CALLS = {"hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}}\n'
                          '</tool_call>\n<tool_c',
                "llama3": '{"name": "get_weather", "parameters": {"city": "P"}}; {"na',
                "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "P"}}',
                "mistral_v11": '[TOOL_CALLS]get_weather[ARGS]{"city": "P"}[TOOL_CALLS]get_w'}


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_call_cut_in_its_closing_is_incomplete(parser, required):
    """max_output_tokens that cut a call after its arguments but before its markup closed
    (the "}" of the call, Hermes' </tool_call>) leave it incomplete, whole and streamed, as
    OpenAI marks an item a cut fell in; it said "completed" in an incomplete Response (with
    tool_choice "required" or a named function the grammar writes nothing but calls, so the
    cut falls there). A call whose markup closed before the cut stays completed."""
    kw = {"required": required}
    for text, status in [*((t, "incomplete") for t in OPEN_CALLS[parser.name]),
                         (CLOSED_CALLS[parser.name], "completed")]:
        content, calls = parser.calls(text, NAMES, cut=True, length=True, **kw)
        before = StreamingToolParser(parser, NAMES, **kw).feed(text)
        whole = answer_items(None, content, calls, before, "incomplete")
        assert _shape(whole) == [("function_call", status, "get_weather", '{"city": "P"}',
                                  [])], text
        for cuts in ([], list(range(1, len(text)))):
            events = _events(parser, text, cuts, "length", **kw)
            done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
            assert _shape(done) == _shape(events[-1]["response"]["output"]) == _shape(whole)


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize("end", ["", "\n", "\n</tool_c"])
def test_a_stop_after_a_whole_hermes_call_leaves_it_completed(required, end):
    """A stop (the model's end token, a stop string such as "</tool_call>") after a call's
    whole JSON, its end tag not (or part) written, ended a whole call: completed, whole and
    streamed, in a completed Response, as vLLM's Hermes parser reads a last call without
    its end tag. Only max_output_tokens there leaves it incomplete (the test above)."""
    parser, kw = HermesParser(), {"required": required}
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}}' + end
    whole = _whole(parser, text, "stop")
    assert _shape(whole) == [("function_call", "completed", "get_weather", '{"city": "P"}',
                              [])], whole
    for cuts in ([], list(range(1, len(text)))):
        events = _events(parser, text, cuts, "stop", **kw)
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        assert _shape(done) == _shape(events[-1]["response"]["output"]) == _shape(whole)
        assert events[-1]["response"]["status"] == "completed"


def test_a_llama3_comma_in_prose_stays_in_the_message_before_the_call():
    """A ',' before a Llama 3 call in prose is the message's before the call item, not a
    message of its own after it, streamed or not."""
    text = "Let me check, " + CALL["llama3"] % ARGS
    whole = _check(Llama3Parser(), text, "stop", random.Random(7))
    assert _shape(whole) == [("message", "completed", None, None, ["Let me check,"]),
                             ("function_call", "completed", "get_weather", ARGS, [])], text


# a whole call, then the next call's head cut before its name was written, per family
NEXT_HEAD_CUT = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P"}}\n'
              '</tool_call>\n<tool_call>\n{"na',
    "llama3": '{"name": "get_weather", "parameters": {"city": "P"}}; {"na',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "P"}}, {"na',
    "mistral_v11": '[TOOL_CALLS]get_weather[ARGS]{"city": "P"}[TOOL_CALLS]get_w'}


@pytest.mark.parametrize("mode", ["auto", "required"])
@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_a_stop_in_a_next_calls_head_is_a_stop_in_a_call(parser, mode):
    """A stop string that cuts a second call before its name is whole (the first call
    whole) ended the output inside a call: ChatPlan.stopped_in_call says so for every
    family, and the Response is incomplete. Mistral's array (`, {"na` after the first
    call) read as "completed", though Hermes, Llama 3 and Mistral v11 said incomplete: its
    plain reading drops the cut element too, so the contents compared were alike. A stop
    right after the first call, or in its markup after the call's JSON (Hermes' end tag,
    Mistral's "]"), stays a stop after a whole call; one before the JSON's own "}" (Llama
    3's last character: a stop string "}" kept by include_stop_str_in_output) ended the
    output inside the call, its arguments whole or not."""
    from aiollm.api.chat_plan import ChatPlan

    plan = ChatPlan([], [], [], "assistant", mode, False, None, parser, set(NAMES), False,
                    None, False, "", None, "", None)
    text = NEXT_HEAD_CUT[parser.name]
    whole = CALL[parser.name] % '{"city": "P"}'
    # its markup after the JSON unwritten
    closed = [whole[:-1]] if parser.name in ("hermes", "mistral") else []
    for t, inside in [(text, True), *((w, False) for w in [whole, whole + "\n", *closed])]:
        _, calls = plan.calls(t, cut=True)
        assert [c.name for c in calls][:1] == ["get_weather"] and calls[0].complete, t
        assert plan.stopped_in_call(t, "stop", calls) is inside, (t, mode)
    if parser.name == "llama3":  # the call's JSON unclosed
        _, [call] = plan.calls(whole[:-1], cut=True)
        assert not call.complete and call.arguments == '{"city": "P"}', call
        assert plan.stopped_in_call(whole[:-1], "stop", [call]), mode


@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("parser", PARSERS[:3], ids=lambda p: p.name)
def test_a_call_after_text_cut_in_its_closing_is_incomplete(parser, finish):
    """A call after the model's text that follows a first call (tool_choice "auto", calls
    in blocks with text between them), whose arguments are whole but whose JSON a stop or
    max_output_tokens ended before its "}": incomplete, whole and streamed, as a call so
    cut with no text before it is (the tests above). It said "completed": the check of the
    call's closing read the calls from the first one on, which the text between them
    ends, and took a reading that was not the parser's as closed. Mistral v11's call
    ends with its arguments: nothing is left open there."""
    opened = OPEN_CALLS[parser.name][0]
    text = "Sure. " + CALL[parser.name] % ARGS + " Then: " + opened
    content, calls = parser.calls(text, NAMES, cut=True, length=finish == "length")
    assert [(c.arguments, c.complete) for c in calls] == [
        (ARGS, True), ('{"city": "P"}', False)], text
    whole = _whole(parser, text, finish)
    assert [i["status"] for i in whole if i["type"] == "function_call"] == [
        "completed", "incomplete"], whole
    for cuts in ([], list(range(1, len(text)))):
        events = _events(parser, text, cuts, finish)
        assert _shape(events[-1]["response"]["output"]) == _shape(whole), cuts
