"""An item_reference input item of /v1/responses (`{"type": "item_reference", "id": ...}`)
stands for the item of that id a kept response holds, as OpenAI reads it: the Vercel AI
SDK, with store on, sends a conversation's earlier assistant items and calls so, and each
such request was a 400 naming input[i].type (the tiny app, in-process). An id no kept
response holds, or of an item the conversation holds already, is a 400 naming input[i].id."""

from __future__ import annotations

import os

from test_responses_store import _with_store

from aiollm.api.response_store import ResponseStore
from aiollm.api.state import STATE

CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
        "arguments": "{}"}


def _body(tiny: str, items: list, **fields) -> dict:
    return {"model": os.path.basename(tiny), "input": items, "max_output_tokens": 3,
            "temperature": 0, **fields}


def test_a_reference_reads_as_the_item_it_names(tiny):
    """A kept output message and a kept input call, named by reference, give the prompt,
    the greedy answer and the kept items that sending them whole gives; a call named so is
    one a function_call_output after it answers."""
    user = {"role": "user", "content": "Hi"}
    done = {"type": "function_call_output", "call_id": "call_1", "output": "ok"}

    async def calls(client):
        first = await (await client.post("/v1/responses", json=_body(
            tiny, [user, CALL, done]))).json()
        said = first["output"][0]
        more = {"role": "user", "content": "More"}
        answers = []
        for shown_said, shown_call in ((said, CALL),
                                       ({"type": "item_reference", "id": said["id"]},
                                        {"type": "item_reference", "id": "fc_1"})):
            items = [user, shown_call, done, shown_said, more]
            got = await client.post("/v1/responses", json=_body(tiny, items))
            answer = await got.json()
            listed = await client.get(f"/v1/responses/{answer['id']}/input_items",
                                      params={"order": "asc"})
            answers.append((got.status, answer["usage"]["input_tokens"],
                            answer["output"][0]["content"][0]["text"],
                            [(i["type"], i.get("role"), i.get("call_id"), i.get("content"))
                             for i in (await listed.json())["data"]]))
        return said["type"], answers

    kind, (whole, referenced) = _with_store(tiny, 10, calls)
    assert kind == "message"
    assert whole[0] == 200
    assert referenced == whole


def test_an_unknown_or_missing_id_is_a_400_naming_it(tiny):
    """An id no kept response holds (one never kept, or of a response since deleted) is
    OpenAI's "Item with id ... not found" (a long id shown cut short); an item_reference
    without an id says it is required; each names input[i].id."""
    async def calls(client):
        kept = await (await client.post("/v1/responses", json=_body(
            tiny, [{"role": "user", "content": "Hi"}]))).json()
        said = kept["output"][0]["id"]
        await client.delete(f"/v1/responses/{kept['id']}")
        out = []
        for ref in ({"type": "item_reference", "id": "msg_nope"},
                    {"type": "item_reference", "id": said}, {"type": "item_reference"},
                    {"type": "item_reference", "id": "x" * 100_000}):
            got = await client.post("/v1/responses", json=_body(
                tiny, [{"role": "user", "content": "Hi"}, ref]))
            out.append((got.status, (await got.json())["error"]))
        return out

    (nope, gone, bare, long) = _with_store(tiny, 10, calls)
    for status, error in (nope, gone, long):
        assert (status, error["param"]) == (400, "input[1].id")
        assert error["message"].startswith("Item with id '")
        assert "not found" in error["message"]
    assert (bare[0], bare[1]["param"]) == (400, "input[1].id")
    assert bare[1]["message"].startswith("input[1].id is required")
    assert len(long[1]["message"]) < 2000  # the id shown cut short, not sent back whole


def test_a_reference_to_an_item_the_conversation_holds_is_a_400(tiny):
    """A reference to an item previous_response_id's conversation holds already, a second
    reference to one item, or one beside that item sent whole (before or after it) would
    render that turn twice: a 400 naming it, as OpenAI refuses a duplicate item; the first
    reference of an item the conversation lacks is read."""
    async def calls(client):
        first = await (await client.post("/v1/responses", json=_body(
            tiny, [{"role": "user", "content": "Hi"}]))).json()
        said = {"type": "item_reference", "id": first["output"][0]["id"]}
        out = []
        whole = first["output"][0]  # the item itself, sent with its id beside a reference
        for items, previous in (([said], first["id"]), ([said, said], None),
                                ([whole, said], None), ([said, whole], None),
                                ([{"role": "user", "content": "Hi"}, said], None)):
            got = await client.post("/v1/responses", json=_body(
                tiny, items, previous_response_id=previous))
            out.append((got.status, ((await got.json())["error"] or {}).get("param")))
        return out

    assert _with_store(tiny, 10, calls) == [(400, "input[0].id"), (400, "input[1].id"),
                                            (400, "input[1].id"), (400, "input[0].id"),
                                            (200, None)]


def test_the_store_finds_items_while_a_response_holds_them():
    """ResponseStore.item gives an input or output item by id while a kept response holds
    it, and forgets it once none does (the oldest dropped, or deleted)."""
    store = ResponseStore(capacity=1)
    said = {"id": "msg_a", "type": "message", "role": "assistant", "content": []}
    asked = {"id": "msg_q", "type": "message", "role": "user", "content": []}
    store.put({"id": "resp_1", "output": [said]}, [asked])
    assert (store.item("msg_a"), store.item("msg_q"), store.item("msg_x")) == (
        said, asked, None)
    store.put({"id": "resp_2", "output": []}, [asked])  # drops resp_1, keeps asked
    assert (store.item("msg_a"), store.item("msg_q")) == (None, asked)
    store.delete("resp_2")
    assert store.item("msg_q") is None


def test_an_item_is_found_while_any_response_holds_it():
    """Where kept responses hold several items of one id (a client reused it), a reference
    finds the one kept last, and the other once that one's response goes: the index forgot
    an id held still when the response kept last with it was deleted."""
    store = ResponseStore(capacity=3)
    first = {"id": "msg_a", "type": "message", "role": "user", "content": []}
    again = {**first, "content": [{"type": "input_text", "text": "again"}]}
    store.put({"id": "resp_1", "output": []}, [first])
    store.put({"id": "resp_2", "output": []}, [again])
    assert store.item("msg_a") is again
    store.delete("resp_2")
    assert store.item("msg_a") is first
    store.put({"id": "resp_3", "output": []}, [first])  # held twice: kept last now
    store.put({"id": "resp_4", "output": []}, [again])
    store.delete("resp_1")
    store.delete("resp_4")
    assert store.item("msg_a") is first
    store.delete("resp_3")
    assert store.item("msg_a") is None


def test_a_reference_outlives_the_response_that_referenced_it(tiny):
    """A referenced item is held by the response that references it too: once that
    response is deleted, a reference to the item (the first response still holds it) is
    read as before, not a 400 saying it was not found."""
    async def calls(client):
        first = await (await client.post("/v1/responses", json=_body(
            tiny, [{"role": "user", "content": "Hi"}]))).json()
        items = [{"type": "item_reference", "id": first["output"][0]["id"]},
                 {"role": "user", "content": "More"}]
        out = []
        for _ in range(2):
            got = await client.post("/v1/responses", json=_body(tiny, items))
            answer = await got.json()
            out.append((got.status, answer["usage"]["input_tokens"]))
            await client.delete(f"/v1/responses/{answer['id']}")
        return out

    [before, after] = _with_store(tiny, 10, calls)
    assert before[0] == 200
    assert after == before


def test_a_referenced_item_is_kept_as_it_is(tiny):
    """The response that references a kept item holds that item itself (its fields, its
    id), not a copy the store would count again."""
    async def calls(client):
        first = await (await client.post("/v1/responses", json=_body(
            tiny, [{"role": "user", "content": "Hi"}]))).json()
        items = [{"type": "item_reference", "id": first["output"][0]["id"]},
                 {"role": "user", "content": "More"}]
        second = await (await client.post("/v1/responses", json=_body(tiny, items))).json()
        store = client.server.app[STATE].responses
        return store.get(first["id"]).response["output"][0], store.get(second["id"])

    said, second = _with_store(tiny, 10, calls)
    assert second.input_items[0] is said
