"""Odd input items sent to /v1/responses with store true (the tiny app, in-process): each
is answered (200) or refused with a 400 naming it, never a 500; what is kept is listed back
by GET /v1/responses/{id}/input_items in the shapes of the openai SDK's ResponseItem."""

from __future__ import annotations

import os

import pydantic
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import run
from openai.types.responses import ResponseItem

from aiollm.api import create_app
from aiollm.engine import Engine

THOUGHT = [{"type": "reasoning_text", "text": "hm"}]
ODD = [  # (an item sent before a user message, the param of its 400 or None: answered)
    ({"type": "reasoning", "content": THOUGHT, "summary": [{"foo": 1}]},
     "input[0].summary[0].type"),
    ({"type": "reasoning", "content": THOUGHT, "summary": [1]}, "input[0].summary[0]"),
    ({"type": "reasoning", "content": THOUGHT, "summary": "hm"}, "input[0].summary"),
    ({"type": "reasoning", "summary": [], "status": {"k" * 100: 1}}, "input[0].status"),
    ({"type": "reasoning", "summary": [], "status": "done"}, "input[0].status"),
    ({"type": "reasoning", "summary": [], "content": ""}, "input[0].content"),
    ({"type": "reasoning", "summary": [], "encrypted_content": 0},
     "input[0].encrypted_content"),
    ({"type": "reasoning", "summary": [], "content": None, "encrypted_content": None}, None),
    ({"type": "reasoning", "summary": None, "content": THOUGHT, "status": None}, None),
    ({"type": "reasoning", "summary": [{"type": "summary_text", "text": "s", "x": 1}],
      "content": THOUGHT, "status": "incomplete", "extra": {"k": 1}}, None),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}",
      "status": "incomplete", "x": [1]}, None),
    ({"type": "function_call_output", "call_id": "c", "output": [], "extra": 1}, None),
    ({"type": "function_call_output", "call_id": "c",
      "output": [{"type": "input_text", "text": "t", "x": 1}]}, None),
    ({"role": "assistant", "content": [{"type": "output_text", "text": "a", "x": 1}]}, None),
    ({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, None),
    ({"role": "developer", "content": [{"type": "input_text", "text": "d"}], "id": 5},
     "input[0].id"),  # the SDK's ids are strings
    ({"role": "developer", "content": [{"type": "input_text", "text": "d"}], "id": None},
     None),
]


@pytest.fixture(scope="module")
def store_client(tiny, loop):
    """A client of one app keeping 10 responses around the tiny model, for the module: each
    case posts its own response and lists its items at once, so the ones kept before it
    (or dropped as the store turns over) are not what it reads."""
    async def start():
        app = create_app(Engine(tiny, load_format="dummy", kv_tokens=512),
                         max_stored_responses=10)
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    client = run(loop, start())
    yield client
    run(loop, client.close())


@pytest.mark.parametrize("item, param", ODD)
def test_an_odd_item_is_kept_in_the_sdk_shape_or_refused(tiny, loop, store_client, item,
                                                          param):
    # an output answers a call of its conversation (else a 400 naming its call_id)
    call = [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}] \
        if item.get("type") == "function_call_output" else []
    body = {"model": os.path.basename(tiny), "max_output_tokens": 2,
            "input": [*call, item, {"role": "user", "content": "Hi"}]}

    async def calls(client):
        r = await client.post("/v1/responses", json=body)
        got = await r.json()
        if r.status != 200:
            return r.status, got, None
        listed = await client.get(f"/v1/responses/{got['id']}/input_items?order=asc")
        return r.status, got, await listed.json()

    status, got, listed = run(loop, calls(store_client))
    if param is not None:
        assert (status, got["error"]["param"]) == (400, param), got
        return
    assert status == 200, got
    [kept, _] = listed["data"][len(call):]
    pydantic.TypeAdapter(ResponseItem).validate_python(kept, strict=False)
    for key in ("status", "summary", "content", "encrypted_content"):
        # as sent (parts: their fields); a message's content parts are retyped
        if item.get(key) and (key != "content" or item.get("type") == "reasoning"):
            assert kept[key] == _fields(item[key]), (key, kept)


def _fields(value):
    """`value` as an item keeps it: its parts their type and text (or refusal) only."""
    if isinstance(value, list):
        return [{k: p[k] for k in ("type", "text", "refusal") if k in p} for p in value]
    return value
