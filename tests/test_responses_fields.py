"""/v1/responses fields a client may get wrong, each a 400 with OpenAI's error body naming
it: an input item's required field left out is told as missing ("is required", as the
body's own missing fields are: api/validation_errors.py), not as a value of the wrong
type; and metadata past OpenAI's bounds (16 pairs, keys of 64 characters, string values
of 512), on /v1/responses and /v1/chat/completions."""

from __future__ import annotations

import json

import pytest
from live_server import http

from aiollm.api.responses_request import input_messages
from aiollm.errors import InvalidRequest

USER = {"role": "user", "content": "Weather?"}
CALL = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "c", "output": "Sunny"}


def _without(item: dict, key: str) -> dict:
    return {k: v for k, v in item.items() if k != key}


@pytest.mark.parametrize("items, param", [
    ([USER, CALL, _without(OUTPUT, "call_id")], "input[2].call_id"),
    ([USER, CALL, _without(OUTPUT, "output")], "input[2].output"),
    ([USER, _without(CALL, "call_id")], "input[1].call_id"),
    ([USER, _without(CALL, "name")], "input[1].name"),
    ([USER, _without(CALL, "arguments")], "input[1].arguments"),
    ([_without(USER, "role")], "input[0].role"),
    ([_without(USER, "content")], "input[0].content"),
])
def test_a_missing_item_field_is_told_missing(items, param):
    """A required field of an input item left out says it is required (a function_call_
    output without call_id said "must be a string"; a message without content "got
    null"), naming the field by its place, as a missing field of the body is."""
    with pytest.raises(InvalidRequest) as e:
        input_messages(items)
    assert e.value.param == param
    assert str(e.value).startswith(f"{param} is required"), str(e.value)


@pytest.mark.parametrize("value, got", [(None, "null"), (7, "an integer"),
                                        ({"a": 1}, "an object")])
def test_a_field_of_the_wrong_type_names_what_was_sent(value, got):
    """A call_id sent of another type (null among them) is told as the body's own type
    errors are, naming what was sent."""
    with pytest.raises(InvalidRequest) as e:
        input_messages([USER, CALL, {**OUTPUT, "call_id": value}])
    assert e.value.param == "input[2].call_id"
    assert str(e.value) == f"input[2].call_id: expected a string, got {got}"


@pytest.mark.parametrize("body", [{"input": ""}, {"input": "", "instructions": "Be brief."}],
                         ids=["alone", "with-instructions"])
def test_an_empty_input_is_an_openai_400(server, body):
    """input "" was read as a user message of no text and ran to max_output_tokens (to the
    context without one), status incomplete; OpenAI refuses an empty string with a 400
    naming input (code empty_string), as this server refuses input [] and a completion's
    prompt of no tokens."""
    status, _, raw = http(server, "POST", "/v1/responses", json={**body, "max_output_tokens": 2})
    assert status == 400, raw
    assert json.loads(raw)["error"] == {
        "message": "input must not be empty: give a user message's text or a list of input "
                   "items", "type": "invalid_request_error", "param": "input",
        "code": "empty_string"}


def test_a_missing_call_id_is_an_openai_400(server):
    status, _, raw = http(server, "POST", "/v1/responses", json={
        "input": [USER, CALL, _without(OUTPUT, "call_id")], "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error == {"message": "input[2].call_id is required",
                                       "type": "invalid_request_error",
                                       "param": "input[2].call_id",
                                       "code": "missing_required_parameter"}, error


LONG = "v" * 100_000
PAIRS = {f"k{i}": "v" for i in range(16)}
ROUTES = [("/v1/responses", {"input": "x", "max_output_tokens": 1}),
          ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                    "max_tokens": 1})]


@pytest.mark.parametrize("path, body", ROUTES, ids=["responses", "chat"])
@pytest.mark.parametrize("metadata, param, says", [
    ({**PAIRS, "k16": "v"}, "metadata", "metadata has 17 key-value pairs"),
    ({"k" * 65: "v"}, "metadata", f'metadata key "{"k" * 65}" has 65 characters'),
    ({LONG: "v"}, "metadata", f'metadata key "{"v" * 100}"... has 100000 characters'),
    ({"a": "v" * 513}, "metadata.a", f'metadata.a: the value "{"v" * 100}"... has 513 '),
    ({"a": LONG}, "metadata.a", f'metadata.a: the value "{"v" * 100}"... has 100000 '),
    ({"a": 5}, "metadata.a", "metadata.a: expected a string, got an integer"),
    ({"a": None}, "metadata.a", "metadata.a: expected a string, got null"),
    ({"": "v"}, "metadata", 'metadata has an empty key ""'),
    ([], "metadata", "metadata: expected an object, got an array"),
])
def test_metadata_past_openais_bounds_is_a_400(server, path, body, metadata, param, says):
    """metadata is OpenAI's: at most 16 pairs, keys of at most 64 characters, values
    strings of at most 512. Past that it was taken whole (kept with the response and
    echoed in every event); now a 400 naming the field and the value, cut to 100
    characters."""
    status, _, raw = http(server, "POST", path, json={**body, "metadata": metadata})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, str(error)[:300]
    assert error["message"].startswith(says) and len(error["message"]) < 400, \
        error["message"][:300]


@pytest.mark.parametrize("path, body", ROUTES, ids=["responses", "chat"])
def test_metadata_at_openais_bounds_is_served(server, path, body):
    metadata = {**{f"k{i}": "v" for i in range(15)}, "k" * 64: "v" * 512}
    status, _, raw = http(server, "POST", path, json={**body, "metadata": metadata})
    assert status == 200, raw[:300]
    if path == "/v1/responses":
        assert json.loads(raw)["metadata"] == metadata


@pytest.mark.parametrize("items, param, says", [
    ([{**USER, "content": 7}], "input[0].content",
     "input[0].content must be a string or a list of content parts, got an integer"),
    ([{**USER, "content": {"a": 1}}], "input[0].content",
     "input[0].content must be a string or a list of content parts, got an object"),
    ([{**USER, "content": [True]}], "input[0].content[0]",
     'input[0].content[0] must be a content part: an object with a "type", got a boolean'),
    ([USER, CALL, {**OUTPUT, "output": False}], "input[2].output",
     "input[2].output must be a string or a list of content parts, got a boolean"),
    ([{**USER, "type": None}], "input[0].type", "input[0].type: expected a string, got null"),
    ([{**USER, "type": True}], "input[0].type",
     "input[0].type: expected a string, got a boolean"),
    ([{**USER, "type": {"a": 1}}], "input[0].type",
     "input[0].type: expected a string, got an object"),
])
def test_an_item_field_of_the_wrong_type_is_named_in_jsons_words(server, items, param, says):
    """A content, an output or an item's type of the wrong type names what was sent as the
    body's type errors do, in JSON's words ("got an integer", "got null"), not Python's
    ("got int", "got dict", "input[0].type None is not served")."""
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": items, "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["message"] == says, error["message"]


REASONING = {"type": "reasoning", "id": "rs_1", "summary": []}


@pytest.mark.parametrize("item, param, says", [
    ({**REASONING, "summary": [{"type": "summary_text"}]}, "input[1].summary[0].text",
     "input[1].summary[0].text is required"),
    ({**REASONING, "content": [{"type": "reasoning_text"}]}, "input[1].content[0].text",
     "input[1].content[0].text is required"),
    ({**REASONING, "summary": [{"type": "summary_text", "text": 5}]},
     "input[1].summary[0].text", "input[1].summary[0].text: expected a string, got an integer"),
    ({**REASONING, "summary": [{"type": "summary_text", "text": None}]},
     "input[1].summary[0].text", "input[1].summary[0].text: expected a string, got null"),
    ({**REASONING, "summary": "t"}, "input[1].summary",
     "input[1].summary must be a list of parts, got a string"),
    ({**REASONING, "content": [7]}, "input[1].content[0]",
     'input[1].content[0] must be a part: an object of type "reasoning_text", got an integer'),
    ({**REASONING, "encrypted_content": 5}, "input[1].encrypted_content",
     "input[1].encrypted_content: expected a string, got an integer"),
])
def test_a_reasoning_items_field_is_told_missing_or_named(item, param, says):
    """A reasoning item's part without its text says the text is required (it said "must
    be a string"), one of the wrong type names what was sent, as the other items' fields
    are told."""
    with pytest.raises(InvalidRequest) as e:
        input_messages([USER, item])
    assert e.value.param == param
    assert str(e.value) == says


@pytest.mark.parametrize("items, param, says", [
    ([{**USER, "content": [{"type": "input_text"}]}], "input[0].content[0].text",
     "input[0].content[0].text is required (an input_text content part's text)"),
    ([{**USER, "content": [{"type": "input_text", "text": None}]}], "input[0].content[0].text",
     "input[0].content[0].text: expected a string, got null"),
    ([{**USER, "content": [{"type": "input_text", "text": 5}]}], "input[0].content[0].text",
     "input[0].content[0].text: expected a string, got an integer"),
    ([{"role": "assistant", "content": [{"type": "refusal"}]}], "input[0].content[0].refusal",
     "input[0].content[0].refusal is required (a refusal content part's refusal)"),
    ([USER, CALL, {**OUTPUT, "output": [{"type": "input_text", "text": []}]}],
     "input[2].output[0].text", "input[2].output[0].text: expected a string, got an array"),
    ([{**USER, "content": [{"type": 5, "text": "x"}]}], "input[0].content[0].type",
     'input[0].content[0].type: expected a string, got an integer ("text" or "input_text" '
     "for a text part)"),
    ([{**USER, "content": [{"text": "x"}]}], "input[0].content[0].type",
     'input[0].content[0].type is required: "text" or "input_text" for a text part'),
    ([USER, {**REASONING, "summary": [{"text": "x"}]}], "input[1].summary[0].type",
     'input[1].summary[0].type is required: "summary_text"'),
    ([USER, {**REASONING, "summary": [{"type": 5, "text": "x"}]}], "input[1].summary[0].type",
     "input[1].summary[0].type: expected a string, got an integer"),
    ([USER, {**REASONING, "content": [{"type": "summary_text", "text": "x"}]}],
     "input[1].content[0].type",
     "input[1].content[0].type must be \"reasoning_text\", got \"summary_text\""),
])
def test_a_parts_field_is_told_missing_or_named(items, param, says):
    """A content part's text (a message's, a call output's) or a part's type left out says
    it is required, one of the wrong type names what was sent, as the items' own fields
    are told: a part's text said "an input_text content part needs a `text` field (a
    string)" whether it was missing, null or a number, and a reasoning part's type said
    'must be "summary_text"' of a missing type or a number alike."""
    with pytest.raises(InvalidRequest) as e:
        input_messages(items)
    assert e.value.param == param
    assert str(e.value) == says


ROLES = "must be one of user, system, developer, assistant, got"
STATUSES = "must be in_progress, completed or incomplete (or null), got"


@pytest.mark.parametrize("item, param, says", [
    ({**USER, "role": "foo"}, "input[0].role", f'input[0].role {ROLES} "foo"'),
    ({**USER, "role": None}, "input[0].role", f"input[0].role {ROLES} null"),
    ({**USER, "role": True}, "input[0].role", f"input[0].role {ROLES} true"),
    ({**USER, "role": {"a": "b"}}, "input[0].role", f'input[0].role {ROLES} {{"a":"b"}}'),
    ({**USER, "role": "x" * 101}, "input[0].role", f'input[0].role {ROLES} "{"x" * 100}"...'),
    ({**USER, "status": "done"}, "input[0].status", f'input[0].status {STATUSES} "done"'),
    ({**USER, "status": False}, "input[0].status", f"input[0].status {STATUSES} false"),
    ({**USER, "status": [None, 1.5]}, "input[0].status",
     f"input[0].status {STATUSES} [null,1.5]"),
])
def test_a_bad_role_or_status_is_spelled_in_json(server, item, param, says):
    """An item's role or status outside OpenAI's is quoted as JSON spells it ("foo",
    null, true), cut to 100 characters: it was Python's repr ('foo', None, True)."""
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": [item], "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["message"] == says, error["message"]
    assert error["code"] is None, error


@pytest.mark.parametrize("items, param, got", [
    ([{**USER, "id": 5}], "input[0].id", "an integer"),
    ([USER, {**CALL, "id": ["fc_1"]}], "input[1].id", "an array"),
    ([USER, CALL, {**OUTPUT, "id": {"a": 1}}], "input[2].id", "an object"),
    ([USER, {**REASONING, "id": True}], "input[1].id", "a boolean"),
])
def test_an_items_id_of_another_type_is_a_400(server, items, param, got):
    """An item's id is a string (the SDK's types): one of another type was taken and then
    dropped for a fresh id; now a 400 naming it. null is none, as the SDK's optional id."""
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": items, "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["message"] == f"{param}: expected a string, got {got}", error
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": [{**USER, "id": None}], "max_output_tokens": 1})
    assert status == 200, raw[:300]


def test_a_reasoning_item_without_summary_is_told_missing(server):
    """OpenAI requires a reasoning item's summary (a list, empty where there is none): one
    left out was taken; now a 400 as the other missing fields are. null is still read as
    no summary."""
    thought = {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "t"}]}
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": [USER, thought], "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error == {"message": "input[1].summary is required",
                                       "type": "invalid_request_error",
                                       "param": "input[1].summary",
                                       "code": "missing_required_parameter"}, error


MISSING = "missing_required_parameter"
FORMAT = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}


@pytest.mark.parametrize("path, body, param", [
    ("/v1/responses", {"max_output_tokens": 1}, "input"),
    ("/v1/responses", {"input": [{"content": "x"}]}, "input[0].role"),
    ("/v1/responses", {"input": [{**USER, "content": [{"type": "input_text"}]}]},
     "input[0].content[0].text"),
    ("/v1/responses", {"input": [USER, {**REASONING, "summary": [{"text": "x"}]}]},
     "input[1].summary[0].type"),
    ("/v1/chat/completions", {"max_tokens": 1}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0].type"),
    ("/v1/chat/completions", {"messages": [USER], "response_format": FORMAT},
     "response_format.json_schema.name"),
    ("/v1/completions", {"max_tokens": 1}, "prompt"),
])
def test_a_missing_field_carries_openais_code(server, path, body, param):
    """Every "... is required" 400 carries OpenAI's code for it, "missing_required_
    parameter" (it was null), which clients read as OpenAI's own 400s; other 400s keep
    theirs (null: test_a_bad_role_or_status_is_spelled_in_json)."""
    status, _, raw = http(server, "POST", path, json=body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["message"].startswith(f"{param} is required"), error
    assert error["code"] == MISSING, error


def test_a_history_calls_error_names_its_input_item(server):
    """A function_call item whose arguments are nested too deeply to render is named by
    its item (input[i].arguments), not by the chat message it became
    (messages[k].tool_calls[0].function.arguments, k shifted by the instructions and by
    the items joined into one turn)."""
    args = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    items = [USER, {**CALL, "call_id": "d", "arguments": args}, CALL,
             {**OUTPUT, "call_id": "d"}, OUTPUT]
    status, _, raw = http(server, "POST", "/v1/responses", json={
        "input": items, "instructions": "Be brief.", "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == "input[1].arguments", error
    assert error["message"] == "input[1].arguments is nested too deeply to render", error
    server.wait_idle()


def test_a_calls_arguments_are_checked_without_decoding_them():
    """The depth check of a function_call item's arguments (input_messages) builds no
    objects of them: decoding them there, besides the chat template's own decode, doubled
    the cost of a call's arguments of megabytes (250 ms more for 6 MB of small arrays)."""
    import tracemalloc

    args = json.dumps({"a": [[i, i + 0.5, "x"] for i in range(50_000)]})
    items = [USER, {**CALL, "arguments": args}, OUTPUT]
    tracemalloc.start()
    try:
        input_messages(items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(args), (peak, len(args))


def test_history_arguments_of_any_depth_are_never_a_500(server):
    """A history call's arguments nested just shallower than the decoder's limit decoded,
    then failed in json.dumps as the default template's tool-call text was written
    (chat_tools.template_messages): a 500 "internal error: RecursionError" on chat and
    Responses alike. Where that limit falls depends on the stack, so every depth near it
    is sent."""
    for depth in range(940, 1000):
        args = "[" * depth + "]" * depth
        chat = [USER, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}]
        items = [USER, {**CALL, "arguments": args}, OUTPUT]
        for path, body in (("/v1/chat/completions", {"messages": chat, "max_tokens": 1}),
                           ("/v1/responses", {"input": items, "max_output_tokens": 1})):
            status, _, raw = http(server, "POST", path, json=body)
            assert status == 400, (depth, path, raw[:300])
    server.wait_idle()


TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


@pytest.mark.parametrize("body, param, says", [
    ({"input": [{"type": "bogus"}]}, "input[0].type",
     'input[0].type "bogus" is not served: send "message", "reasoning", "function_call", '
     '"function_call_output" or "item_reference" items'),
    ({"tools": [{"type": None}]}, "tools[0].type",
     "tools[0].type null is not served: the server runs no built-in tools; send tools of "
     'type "function"'),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type",
     'tools[0].type "web_search" is not served: the server runs no built-in tools; send '
     'tools of type "function"'),
    ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type",
     'tools[0].type "custom" is not served: the server reads no calls of free-form text '
     "input, as a custom tool's; send tools of type \"function\""),
    ({"tools": [{"name": "f"}]}, "tools[0].type", "tools[0].type is required"),
    ({"tools": [5]}, "tools[0]", "tools[0]: expected an object, got an integer"),
    ({"truncation": "auto"}, "truncation",
     'truncation "auto" is not served: send "disabled" or leave it out (an input past the '
     "context is a 400)"),
    ({"tools": [TOOL], "tool_choice": {"type": "file_search"}}, "tool_choice",
     'tool_choice of type "file_search" is not served: send "none", "auto", "required" or '
     '{"type": "function", "name": ...}'),
    ({"tools": [TOOL], "tool_choice": {"type": None}}, "tool_choice",
     'tool_choice of type null is not served: send "none", "auto", "required" or '
     '{"type": "function", "name": ...}'),
])
def test_a_refused_tool_or_setting_is_spelled_in_json(server, body, param, says):
    """A Responses request's refused input item type, tool type, tool_choice type or
    truncation quotes the value as JSON spells it, as its items' role and status do: it
    was Python's repr ('bogus', and None for a null tool type); a tool that is no object
    or has no type is told so, not as a type None."""
    status, _, raw = http(server, "POST", "/v1/responses",
                          json={"input": "hi", "max_output_tokens": 1, **body})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["message"] == says, error["message"]
