"""What the response store counts against --max-stored-response-bytes
(api/response_store.py) next to the memory its responses really hold (tracemalloc): within
a small factor above it, for a long chain of continued responses (which share their earlier
turns) and for one response of many tiny items (whose Python objects outweigh their JSON).
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import msgspec
import pytest
from test_responses_store import _with_store

from aiollm.api.response_items import input_items
from aiollm.api.response_store import ResponseStore, stored_size
from aiollm.api.responses_output import item_id


def _response(rid: str, text: str, previous: str | None) -> dict:
    """A Response as the server answers one message (the fields that matter to its size)."""
    output = [{"id": item_id("msg"), "type": "message", "role": "assistant",
               "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {"id": rid, "object": "response", "status": "completed", "output": output,
            "previous_response_id": previous, "model": "m", "store": True}


def _held(build) -> tuple[ResponseStore, int]:
    """The store `build()` returns, and the bytes allocated while it was built that it
    still holds."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = build()
        gc.collect()
        return store, tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def _chain(turns: int, text: int) -> ResponseStore:
    """`turns` responses, each continuing the one before (previous_response_id), as
    responses.py keeps them: the earlier conversation, then the input's items."""
    store, previous = ResponseStore(10**6, 2**40), None
    for k in range(turns):
        earlier = [] if previous is None else store.get(previous).conversation()
        sent = msgspec.json.decode(msgspec.json.encode(
            [{"role": "user", "content": f"{k}" + "u" * text}]))
        store.put(_response(f"resp_{k}", "a" * text, previous),
                  [*earlier, *input_items(sent, earlier)])
        previous = f"resp_{k}"
    return store


@pytest.mark.parametrize("text", [10, 5000])
def test_a_long_chain_counts_each_turn_once(text):
    """50 turns, each kept with the whole conversation before it: the earlier turns are the
    same objects, so counting each response's conversation whole counted the first turn 50
    times (21 times what was held at 5000 characters a turn), and the store kept a few
    long conversations where it had room for many."""
    store, held = _held(lambda: _chain(50, text))
    assert held <= store.bytes <= 3 * held, (store.bytes, held)


def _referencing_chain(turns: int, asked: int, said: int) -> ResponseStore:
    """`turns` responses as the Vercel AI SDK makes them with store on: no
    previous_response_id, each input the whole conversation, its user turns (`asked`
    characters) sent whole and its assistant turns (`said` characters) as item_reference
    items (the kept items named, as stored_responses.referenced finds them)."""
    store, sent, ids = ResponseStore(10**6, 2**40), [], []
    for k in range(turns):
        sent.append({"role": "user", "content": f"{k}" + "u" * asked})
        fresh = msgspec.json.decode(msgspec.json.encode(sent))  # each request's own
        named = [store.item(iid) for iid in ids]
        value = [x for pair in zip(fresh, [*named, None]) for x in pair if x is not None]
        response = _response(f"resp_{k}", "a" * said, None)
        store.put(response, input_items(value, (), named))
        ids.append(response["output"][0]["id"])
    return store


def test_a_chain_of_references_counts_each_named_turn_once():
    """An assistant turn named by reference in each later request is the kept item itself,
    held once: kept as a copy in each later response (its text shared), it was counted
    again in each (20 turns, short questions and answers of 5000 characters: 3.1 times
    what was held, 9 times at 50 turns of 20,000, and the store dropped responses that
    much early)."""
    store, held = _held(lambda: _referencing_chain(20, 20, 5000))
    assert held <= store.bytes <= 1.5 * held, (store.bytes, held)


def test_many_tiny_items_count_their_objects():
    """An input of many empty messages: some 140 bytes of JSON each, 600 of Python objects;
    counting the JSON alone let the bound hold 4 times its bytes."""
    sent = msgspec.json.encode([{"role": "user", "content": ""}] * 20_000)

    def build():
        store = ResponseStore(10, 2**40)
        store.put(_response("r", "", None), input_items(msgspec.json.decode(sent)))
        return store

    store, held = _held(build)
    assert held <= store.bytes <= 3 * held, (store.bytes, held)


def test_shared_turns_are_counted_while_any_response_holds_them():
    """A parent dropped while its continuation holds its turns: those still count, until
    the last response holding them goes; the store of none counts 0 again."""
    store = _chain(3, 100)
    alone = [stored_size(store.get(f"resp_{k}").response, list(store.get(f"resp_{k}")
                                                                .input_items))
             for k in range(3)]
    assert store.bytes < sum(alone)  # the turns each later response repeats count once
    assert store.delete("resp_0") and store.bytes >= alone[2]  # resp_2 holds turn 0
    assert store.delete("resp_2") and store.bytes == alone[1]  # resp_1 alone
    assert store.delete("resp_1") and store.bytes == 0


def test_only_the_fields_of_an_item_are_kept():
    """A reasoning item's or a refusal part's other keys were kept as sent: held, listed and
    uncounted (held_bytes counts no dict's keys, the field names being shared)."""
    junk = {"x" * 1000: 1}
    [reasoning, message] = input_items([
        {"type": "reasoning", "summary": [], **junk,
         "content": [{"type": "reasoning_text", "text": "t", **junk}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no", **junk}]}])
    assert set(reasoning) == {"id", "type", "summary", "content"}
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "t"}]
    assert message["content"] == [{"type": "refusal", "refusal": "no"}]


def test_a_call_outputs_parts_are_kept_as_their_fields():
    """A function_call_output's parts were kept as sent: another key nested 990 deep (as
    deep as the JSON decoder takes) made held_bytes overflow Python's stack as the
    response was kept (RecursionError)."""
    deep: list = []
    for _ in range(990):  # what the server's decoder takes from a body (its stack shallow)
        deep = [deep]
    [item] = input_items([{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_text", "text": "Sunny", "junk": deep}]}])
    assert item["output"] == [{"type": "input_text", "text": "Sunny"}]
    store = ResponseStore(10)
    store.put(_response("r", "", None), [item])
    assert store.get("r").input_items == (item,)


def test_a_deep_echoed_field_is_counted():
    """The Response echoes fields as sent (text, reasoning, tools, metadata): a value nested
    990 deep, which the server's decoder takes from a body, overflowed a recursive
    held_bytes as the response was kept."""
    deep: list = []
    for _ in range(990):
        deep = [deep]
    store = ResponseStore(10)
    store.put({**_response("r", "", None), "text": {"format": {"type": "text"}, "x": deep}},
              [])
    assert store.get("r") is not None and store.bytes > 990 * 56  # an empty list's bytes


def test_the_keys_a_client_sent_are_counted():
    """The Response echoes metadata, text, reasoning and tools as sent, their keys the
    client's (1 MB of metadata keys was held uncounted); the items' keys are field names."""
    metadata = {f"{k:06}" + "k" * 1000: "" for k in range(1000)}
    store = ResponseStore(10)
    store.put({**_response("r", "", None), "metadata": metadata}, [])
    assert store.bytes > 1000 * 1000


def test_a_deep_echoed_field_is_kept_through_http(tiny):
    """The same through the server: a text field nested 900 deep (the decoder takes some
    940 there) was a 500 (RecursionError) as the response was kept."""
    body = ('{"model": "%s", "input": "Hi", "max_output_tokens": 2, "text": {"x": %s}}'
            % (os.path.basename(tiny), "[" * 900 + "]" * 900))

    async def calls(client):
        r = await client.post("/v1/responses", data=body,
                              headers={"Content-Type": "application/json"})
        rid = (await r.json())["id"] if r.status == 200 else None
        kept = rid and (await client.get(f"/v1/responses/{rid}")).status
        return r.status, kept

    assert _with_store(tiny, 10, calls) == (200, 200)


def test_a_404_tells_of_every_way_a_response_is_not_kept(tiny):
    """A response whose store said true but that no store holds: one larger than the byte
    bound alone, or one of an earlier run (kept in memory only). The 404's message named
    only store false, a delete and the oldest dropped: a client whose stored response was
    lost to a restart, or to its size, was told it never asked for it."""
    body = {"model": os.path.basename(tiny), "input": "Hi " * 200, "max_output_tokens": 2}

    async def calls(client):
        r = await client.post("/v1/responses", json=body)
        rid = (await r.json())["id"]
        got = await client.get(f"/v1/responses/{rid}")
        return got.status, (await got.json())["error"]["message"]

    status, message = _with_store(tiny, 10, calls, max_bytes=1000)
    assert status == 404
    assert "larger than" in message and "restart" in message, message


def test_an_answer_too_large_to_keep_says_store_false(tiny):
    """A response larger than --max-stored-response-bytes alone is not kept: the answer
    said `store: true` all the same, and a client that then continued it got a 404 (a
    stream has said true in response.created before its size is known, and keeps it)."""
    # 6,000 characters in ~96 tokens (the tokenizer merges runs of "-"): fits the tiny context
    body = {"model": os.path.basename(tiny), "input": "x" + "-" * 6000, "max_output_tokens": 1}

    async def calls(client):
        big = await (await client.post("/v1/responses", json=body)).json()
        small = await (await client.post("/v1/responses", json={**body, "input": "Hi"})).json()
        return big["store"], small["store"]

    assert _with_store(tiny, 10, calls, max_bytes=10_000) == (False, True)
