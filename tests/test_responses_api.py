"""/v1/responses (OpenAI's Responses API, as vLLM serves it) through the real server and the
official openai SDK: the same answer as /v1/chat/completions for the same conversation,
streamed or whole; the length limit, structured output and tool calls; and a 400 naming
the field for what the server does not serve. The tests that compare two answers of one
server (responses against chat, a stream against the whole answer) ask the session's tiny
random Llama server (conftest's random_client): that holds for any model's words."""

from __future__ import annotations

import json

import openai
import pytest
from live_server import at_once, http, openai_client
from test_api_review import CONTENT_FAULTS, assert_openai_400

ASK = "Name a colour."
WEATHER = {"type": "function", "name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items()
                                                 if k != "type"}}


# room for a forced call from the tiny random model, which fills the whitespace runs (of up to
# 16 tokens each) that the calls' grammar allows in a call's JSON
CALL_ROOM = 120


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tiny(server, tmp_path_factory):
    """A tiny random Llama (dummy weights) with the default model's tokenizer, for calls the
    grammar forces whole (a named tool whose one argument is an enum): the model's weights
    decide nothing that is checked there."""
    from live_server import tiny_server

    srv, _ = tiny_server(server, tmp_path_factory.mktemp("tiny"), lambda tok: None,
                         "<tool_call>")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def tiny_client(tiny):
    """The official `openai` client on the `tiny` server."""
    return openai_client(tiny)


def test_greedy_text_is_chat_completions_text(random_client, random_model):
    """instructions and a developer message, as the same chat's system messages: the same
    prompt (input_tokens) and the same greedy text."""
    items = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "input_text", "text": ASK}]}]
    client, model = random_client, random_model
    r, c = at_once(
        lambda: client.responses.create(model=model, input=items, instructions="Hi.",
                                        max_output_tokens=8, temperature=0),
        lambda: client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                               messages=[{"role": "system", "content": "Hi."},
                                                         {"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": ASK}]))
    assert r.id.startswith("resp_") and r.object == "response" and r.model == random_model
    assert r.output_text == c.choices[0].message.content
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.instructions == "Hi." and r.max_output_tokens == 8 and r.temperature == 0
    assert r.store is True and r.tools == [] and r.tool_choice == "auto"


def test_an_empty_list_of_parts_is_an_empty_turn(client, model):
    """An input message with content [] is the same prompt as content "" (chat's, and
    vLLM's, empty turn); it was a 400."""
    empty = [{"role": "developer", "content": []}, {"role": "user", "content": ASK}]
    blank = [{"role": "developer", "content": ""}, {"role": "user", "content": ASK}]
    r, b = at_once(*(lambda items=items: client.responses.create(
        model=model, input=items, max_output_tokens=1) for items in (empty, blank)))
    assert r.usage.input_tokens == b.usage.input_tokens


def test_stream_equals_whole_answer(random_client, random_model):
    """The SDK's stream helper accumulates what the whole answer says; events in OpenAI's
    order, numbered from 0."""
    kw = dict(model=random_model, input=ASK, max_output_tokens=12, temperature=0)
    whole = random_client.responses.create(**kw)
    with random_client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == final.output_text
    assert final.status == whole.status
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        whole.usage.input_tokens, whole.usage.output_tokens)
    assert final.usage.input_tokens_details.cached_tokens > 0  # the whole answer's prompt
    assert final.id.startswith("resp_")


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_leaves_it_incomplete(client, model, stream):
    """The length limit: status incomplete, and response.completed still ends the stream
    (as vLLM sends it; the SDK's helper takes no other end)."""
    kw = dict(model=model, input=ASK, max_output_tokens=2, temperature=0,
              extra_body={"ignore_eos": True})
    if stream:
        events = list(client.responses.create(stream=True, **kw))
        assert events[-1].type == "response.completed"
        r = events[-1].response
    else:
        r = client.responses.create(**kw)
    assert r.status == "incomplete", r
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2 and r.output[0].status == "incomplete"


def test_json_schema_format_gives_json(client, model):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 8}},
              "required": ["colour"], "additionalProperties": False}
    r = client.responses.create(model=model, input=ASK, max_output_tokens=40, temperature=0,
                                text={"format": {"type": "json_schema", "name": "colour",
                                                 "schema": schema, "strict": True}})
    assert r.status == "completed", r
    assert set(json.loads(r.output_text)) == {"colour"}
    assert r.text.format.type == "json_schema"


def test_json_object_format_gives_an_object(client, model):
    r = client.responses.create(model=model, input=ASK, max_output_tokens=30, temperature=0,
                                text={"format": {"type": "json_object"}},
                                extra_body={"stop": ["}"]})
    assert r.status == "completed" and r.output_text.lstrip().startswith("{"), r.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_is_a_function_call_item(tiny_client, stream):
    client = tiny_client
    kw = dict(model=None, input="Weather in Paris?", max_output_tokens=CALL_ROOM, temperature=0,
              tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    if stream:
        with client.responses.stream(**kw) as s:
            events = list(s)
            r = s.get_final_response()
        types = [e.type for e in events]
        assert "response.function_call_arguments.done" in types, types
        # the call's item once its name is written, then its arguments as they come
        deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        assert types.index("response.output_item.added") < types.index(
            "response.function_call_arguments.delta") and len(deltas) > 1, types
        assert "".join(deltas) == r.output[0].arguments
    else:
        r = client.responses.create(**kw)
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather", r.output
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome")
    assert call.call_id.startswith("call_")


def test_function_call_output_reaches_the_prompt(random_client, random_model):
    """A call and its result sent back as items render as the chat's assistant tool_calls
    and tool message: the same prompt and greedy answer as chat completions give."""
    args = '{"city": "Paris"}'
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": args},
             {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 31 C"}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": args}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 31 C"}]
    other = [*items[:2], {**items[2], "output": "Rain all week long in the whole region"}]
    client, model = random_client, random_model
    r, c, r2 = at_once(
        lambda: client.responses.create(model=model, input=items, tools=[WEATHER],
                                        tool_choice="none", max_output_tokens=8,
                                        temperature=0),
        lambda: client.chat.completions.create(model=model, messages=messages,
                                               tools=[CHAT_WEATHER], tool_choice="none",
                                               max_tokens=8, temperature=0),
        lambda: client.responses.create(model=model, input=other, tools=[WEATHER],
                                        tool_choice="none", max_output_tokens=1))
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.output_text == c.choices[0].message.content
    assert r2.usage.input_tokens > r.usage.input_tokens  # the longer output is in the prompt


@pytest.mark.parametrize("body, param", [
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].id"),  # none kept
    ({"input": [{"type": "computer_call", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"text": {"format": {"type": "json_schema", "name": "a b"}}}, "text.format.name"),
    ({"tools": [{"type": "function", "name": "a b"}]}, "tools[0].name"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x " * 600}, "input"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": -1}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"], "tools": [WEATHER]}, "include"),
    # a value none of OpenAI's (a 400 there and at vLLM) was ignored: a typo asked for nothing
    ({"include": ["message.output_text.logprobs", "output_text.logprobs"]}, "include[1]"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}]},
     "input[0].encrypted_content"),
    ({"input": [{"type": "reasoning", "summary": [], "content": [{"type": "text"}]}]},
     "input[0].content[0].type"),
])
def test_unserved_or_bad_fields_are_400s_naming_them(client, model, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**{"model": model, "input": ASK, **body})
    assert e.value.param == param, e.value.body
    assert param.split(".")[-1].split("[")[0] in e.value.message, e.value.body


def test_logprobs_of_the_output_text_are_chats_whole_and_streamed(random_client, random_model):
    """include "message.output_text.logprobs" (and top_logprobs alternatives) was a 400
    where vLLM answers it: the output_text carries each token's logprob, bytes and top
    alternatives, as chat's logprobs; a stream's text deltas carry those of their tokens
    (an end token's in a last "" delta), all of them in output_text.done and the last
    Response. top_logprobs alone asks for none, as OpenAI and vLLM take it."""
    ask = {"model": random_model, "input": "Reply with only emoji: 🎉🔥", "max_output_tokens": 12,
           "include": ["message.output_text.logprobs"], "top_logprobs": 2, "temperature": 0}
    whole = random_client.responses.create(**ask)
    part = whole.output[0].content[0]
    assert len(part.logprobs) == whole.usage.output_tokens, part
    assert all(len(t.top_logprobs) == 2 for t in part.logprobs), part
    # the tokens' bytes join to the text (an emoji's bytes split among its tokens)
    joined = b"".join(bytes(t.bytes) for t in part.logprobs).decode(errors="replace")
    assert joined.startswith(part.text), (joined, part.text)
    events = list(random_client.responses.create(**ask, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    [done] = [e for e in events if e.type == "response.output_text.done"]
    sent = [t.token for e in deltas for t in e.logprobs]
    assert sent == [t.token for t in done.logprobs] == [t.token for t in part.logprobs], sent
    last = events[-1].response.output[0].content[0]
    assert [t.token for t in last.logprobs] == sent and last.text == part.text, last
    # kept with them; a response continuing it has its own (its tokens', none alternative)
    kept = random_client.responses.retrieve(whole.id)
    assert kept.output[0].content[0].logprobs == part.logprobs
    more = random_client.responses.create(**{**ask, "input": "Again.", "top_logprobs": 0},
                                   previous_response_id=whole.id)
    lps = more.output[0].content[0].logprobs
    assert len(lps) == more.usage.output_tokens and all(t.top_logprobs == [] for t in lps), lps
    # OpenAI's other values are taken (Codex asks for encrypted reasoning): they add nothing
    plain = random_client.responses.create(**{**ask, "include": ["reasoning.encrypted_content"]})
    assert plain.output[0].content[0].logprobs == [] and plain.top_logprobs == 2, plain


@pytest.mark.parametrize("call, says", [
    (lambda c, m: c.responses.input_tokens.count(model=m, input=ASK), "POST /tokenize"),
    (lambda c, m: c.responses.compact(model=m, input=ASK), "previous_response_id"),
], ids=["input_tokens", "compact"])
def test_openais_unserved_responses_routes_are_404s_that_say_so(client, model, call, says):
    """The openai client's responses.input_tokens.count and responses.compact POST to
    /v1/responses/input_tokens and /compact: the path matched /v1/responses/{response_id}
    and the client raised a bare APIStatusError, 405 "allowed: DELETE,GET,HEAD", as if a
    GET of a response named input_tokens were meant. A NotFoundError names the route and
    what serves the need instead."""
    with pytest.raises(openai.NotFoundError) as e:
        call(client, model)
    assert e.value.body["type"] == "not_found_error", e.value.body
    assert "is not served" in e.value.message and says in e.value.message, e.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_id_is_sent_back_but_is_not_the_responses_id(server, stream):
    """X-Request-Id, as on the other OpenAI routes: sent back. The response's id is the
    server's own (resp_ and 32 hex digits): a kept response's key, which a client's id
    reused would have made collide (test_responses_store_ids)."""
    status, headers, raw = http(server, "POST", "/v1/responses", headers={
        "X-Request-Id": "trace-42"}, json={"input": ASK, "max_output_tokens": 1,
                                           "stream": stream})
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and headers["x-request-id"] == "trace-42", raw
    if stream:  # each event: its type on an "event:" line, then its data (as OpenAI's)
        head, data = raw.split(b"\n\n")[0].split(b"\n")
        assert head == b"event: response.created", raw[:200]
        rid = json.loads(data.removeprefix(b"data: "))["response"]["id"]
    else:
        rid = json.loads(raw)["id"]
    assert rid.startswith("resp_") and len(rid) == 37 and "trace-42" not in rid, rid


def _finished(server) -> float:
    """vllm:request_success_total, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    _, _, raw = http(server, "GET", "/metrics")
    return sum(s.value for f in text_string_to_metric_families(raw.decode())
               for s in f.samples if s.name == "vllm:request_success_total")


def test_each_response_counts_as_one_request(server, client, model):
    before = _finished(server)
    client.responses.create(model=model, input=ASK, max_output_tokens=1)
    list(client.responses.create(model=model, input=ASK, max_output_tokens=1, stream=True))
    assert _finished(server) == before + 2


def _typed_events(server, body: dict) -> list[dict]:
    """The events of a streamed response, each checked against the openai SDK's event
    types (validated, not merely constructed as the SDK's parser does): its type on the
    event: line, numbered from 0, and its item_id the item opened at its output_index."""
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    status, _, raw = http(server, "POST", "/v1/responses", json={**body, "stream": True})
    assert status == 200, raw
    events, opened = [], {}
    for block in raw.decode().strip().split("\n\n"):
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}", block
        TypeAdapter(ResponseStreamEvent).validate_python(event)
        if event["type"] == "response.output_item.added":
            opened[event["output_index"]] = event["item"]["id"]
        if "item_id" in event:
            assert opened[event["output_index"]] == event["item_id"], event
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("body", [
    {"input": ASK, "max_output_tokens": 4},
    {"input": "Weather in Paris?", "max_output_tokens": CALL_ROOM, "tools": [WEATHER],
     "tool_choice": {"type": "function", "name": "get_weather"}},
], ids=["text", "call"])
def test_responses_and_events_are_the_sdks_types(tiny, body):
    """Every field the SDK's types require is there, with its type: the whole Response
    (usage's input_tokens_details.cache_write_tokens too) and each streamed event."""
    from openai.types.responses import Response

    server = tiny

    (status, _, raw), events = at_once(  # at once (the server batches them), for time
        lambda: http(server, "POST", "/v1/responses", json=body),
        lambda: _typed_events(server, body))
    assert status == 200, raw
    Response.model_validate(json.loads(raw))
    assert events[-1]["type"] == "response.completed"


def test_text_parts_of_an_item_join_by_newline_as_chats_do():
    """A message item's, or a call output's, parts are joined as chat joins a message's parts
    and as vLLM, which hands the parts to its chat parser: by "\n", an empty part left out,
    a refusal part's text among them in any item (chat: an assistant's alone), for a
    template that reads a string; one that reads parts is given them as text parts
    (tests/test_content_format.py). They were joined by "" ("Hello" and "there" read
    "Hellothere")."""
    from aiollm.api.responses_request import input_messages
    from aiollm.engine.content_format import as_parts, joined_text

    parts = [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": ""},
             {"type": "output_text", "text": "there"}, {"type": "refusal", "refusal": "no"}]
    got = input_messages([{"role": "user", "content": parts},
                          {"type": "function_call", "call_id": "c", "name": "f",
                           "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c", "output": parts}])
    contents = [m.as_dict(i)["content"] for i, m in enumerate(got)]
    assert [joined_text(c) for c in contents] == ["Hello\nthere\nno", "", "Hello\nthere\nno"]
    texts = [{"type": "text", "text": t} for t in ("Hello", "", "there", "no")]
    assert [as_parts(c) for c in contents] == [texts, [], texts]


def test_a_call_output_of_no_parts_is_an_empty_output():
    """A function_call_output whose output is an empty list of parts is the tool's empty
    answer, as an output of "" is (vLLM's chat parser joins no parts into ""). Once parts
    were kept as a list for the chat template, the tool message had no content and every
    such request was a 400 naming input[2].content, a field the item does not have."""
    from aiollm.api.responses_request import input_messages
    from aiollm.engine.content_format import joined_text

    def output(value):
        got = input_messages([{"role": "user", "content": "Weather?"},
                              {"type": "function_call", "call_id": "c", "name": "f",
                               "arguments": "{}"},
                              {"type": "function_call_output", "call_id": "c",
                               "output": value}])
        return got[2].as_dict(2)

    assert joined_text(output([])["content"]) == joined_text(output("")["content"]) == ""
    assert output([])["role"] == "tool" and output([])["tool_call_id"] == "c"


@pytest.mark.parametrize("role, content, chat, responses", CONTENT_FAULTS)
def test_a_content_fault_is_one_400_on_chat_and_responses(server, role, content, chat,
                                                          responses):
    """One walker reads the content parts of chat's messages and of the Responses API's
    message items and call outputs: a fault is a 400 with OpenAI's body naming the same
    field under each one's path, and what one API takes (chat: plain string parts;
    Responses: any item's refusal parts) is answered. A part of a type not served named
    the part on chat, its type on Responses (as OpenAI: messages[0].content[1].type); a
    refusal part without its text named .text on Responses; one that was no object,
    .type."""
    output = responses and responses.replace(".content", ".output", 1)
    asks = [("/v1/chat/completions", {"messages": [{"role": role, "content": content}],
                                      "max_tokens": 1}, f"messages[0]{chat}", chat),
            ("/v1/responses", {"input": [{"role": role, "content": content}],
                               "max_output_tokens": 1}, f"input[0]{responses}", responses),
            ("/v1/responses", {"input": [
                {"role": "user", "content": ASK},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": content}],
                "max_output_tokens": 1}, f"input[2]{output}", output)]
    for path, body, param, refused in asks:
        status, _, raw = http(server, "POST", path, json=body)
        if refused is None:
            assert status == 200, (path, raw[:300])
        else:
            assert_openai_400(status, raw, param)
    server.wait_idle()


@pytest.mark.parametrize("role, content, suffix", [
    (role, content, chat) for role, content, chat, responses in CONTENT_FAULTS
    if chat is not None and chat == responses])
def test_a_content_fault_reads_the_same_on_both_apis(role, content, suffix):
    """The Engine API's (and chat's) error and the Responses API's for the same content
    are one error, its path, the types each serves (a user's refusal part is text on
    Responses alone) and chat's hint of where an assistant's reasoning goes aside: they
    were worded apart ("is not served: the model reads text alone" and "only text content
    parts ... are supported")."""
    import re

    from aiollm.api.responses_request import input_messages
    from aiollm.engine.chat_messages import checked_messages
    from aiollm.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as chat:
        checked_messages([{"role": role, "content": content}])
    with pytest.raises(InvalidRequest) as responses:
        input_messages([{"role": role, "content": content}])
    assert chat.value.param == f"messages[0]{suffix}"
    assert responses.value.param == f"input[0]{suffix}"

    def words(e, at):
        said = re.sub(r"\(text, input_text, output_text[^)]*\)", "(...)", str(e.value))
        return said.replace(at, "<at>").split(": send an assistant's reasoning")[0]

    assert words(responses, "input[0]") == words(chat, "messages[0]")


def test_reasoning_items_sent_back_are_the_turns_reasoning():
    """A reasoning item in input (a past turn's output sent back, as OpenAI asks) is its
    assistant turn's reasoning_content, which reaches the chat template: the message or
    calls after it are that turn's, as vLLM joins them; alone, the turn's content is "".
    It was dropped."""
    import msgspec

    from aiollm.api.responses_request import input_messages
    from aiollm.engine.content_format import joined_text

    def thought(text: str) -> dict:
        return {"type": "reasoning", "id": "rs_1", "summary": [], "status": "completed",
                "content": [{"type": "reasoning_text", "text": text}]}

    user = {"role": "user", "content": "Hi"}
    said = {"type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Blue.", "annotations": []}]}
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    got = input_messages([user, thought("sky"), said, user, thought("hm"), call,
                          {"type": "function_call_output", "call_id": "c", "output": "ok"},
                          thought("done"), user])
    def text(content):  # text parts (a message item's) as a template reading a string sees them
        return content if content is None or isinstance(content, str) else joined_text(
            msgspec.to_builtins(content))

    assert [(m.role, text(m.content), m.reasoning_content) for m in got] == [
        ("user", "Hi", None), ("assistant", "Blue.", "sky"), ("user", "Hi", None),
        ("assistant", None, "hm"), ("tool", "ok", None), ("assistant", "", "done"),
        ("user", "Hi", None)]
    assert got[3].tool_calls[0]["function"]["name"] == "f"
    assert got[1].as_dict(1)["reasoning_content"] == "sky"  # what the template is given
    summary = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "a"},
                                                {"type": "summary_text", "text": "b"}]}
    assert input_messages([user, summary])[1].reasoning_content == "a\n\nb"


def test_an_empty_encrypted_content_is_no_encrypted_reasoning():
    """A reasoning item whose encrypted_content is "" (or null) carries no encrypted
    reasoning: its text is taken, as vLLM takes it (it refuses a non-empty one alone). ""
    was a 400."""
    from aiollm.api.responses_request import input_messages

    for blob in ("", None):
        item = {"type": "reasoning", "summary": [], "encrypted_content": blob,
                "content": [{"type": "reasoning_text", "text": "sky"}]}
        got = input_messages([{"role": "user", "content": "Hi"}, item])
        assert got[1].reasoning_content == "sky"



LONG = "t" * 100_000


@pytest.mark.parametrize("body, param, says", [
    ({"input": [{"content": "x"}]}, "input[0].role", "input[0].role is required"),
    ({"input": [{"role": LONG, "content": "x"}]}, "input[0].role", "input[0].role must be"),
    ({"input": [{"type": LONG}]}, "input[0].type", 'input[0].type "ttt'),
    ({"truncation": LONG}, "truncation", 'truncation "ttt'),
    ({"tools": [{"type": LONG}]}, "tools[0].type", 'tools[0].type "ttt'),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": LONG}},
     "tool_choice", 'tool_choice of type "ttt'),
])
def test_a_bad_value_is_told_in_json_s_words_and_quoted_short(server, model, body, param, says):
    """A message item without a role is told so (it said "got None", Python's word for
    JSON's null), and a bad value is quoted at most 100 characters: one of 100,000
    characters came back whole in the error."""
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"model": model, "input": "x", "max_output_tokens": 1, **body})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, str(error)[:300]
    assert error["message"].startswith(says) and len(error["message"]) < 400, \
        error["message"][:300]
    assert "None" not in error["message"]
