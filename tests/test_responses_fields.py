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


def test_a_missing_call_id_is_an_openai_400(server):
    status, _, raw = http(server, "POST", "/v1/responses", json={
        "input": [USER, CALL, _without(OUTPUT, "call_id")], "max_output_tokens": 1})
    error = json.loads(raw)["error"]
    assert status == 400 and error == {"message": "input[2].call_id is required",
                                       "type": "invalid_request_error",
                                       "param": "input[2].call_id", "code": None}, error
