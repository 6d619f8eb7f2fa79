"""Stored responses of /v1/responses, as OpenAI serves them (and vLLM with
VLLM_ENABLE_RESPONSES_API_STORE), through the official openai SDK and plain HTTP:
previous_response_id continues a kept response's conversation (not its instructions); a
kept response is retrieved, deleted, its input items listed page by page; store false keeps
nothing; the store keeps the --max-stored-responses most recent, 0 none (an app around a
tiny random-weight model, in-process); a stream the client leaves is not kept."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import tiny_llama
from live_server import MAX_MODEL_LEN, LiveServer, at_once, http
from test_responses_api import WEATHER

from aiollm.api import create_app
from aiollm.engine import Engine

ASK = "Name a colour."
MORE = "And another one?"
KW = dict(max_output_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> LiveServer:
    """The live server of this module's HTTP tests: the shared server's limits (MAX_MODEL_LEN,
    KV_TOKENS) on conftest's tiny random Llama (one layer, dummy weights) with the default
    model's tokenizer and chat template. What they check is what the store keeps and how a
    continuation's prompt is built (checked against the same conversation sent whole), which
    holds for any model's words; the default model's 30 layers cost ~0.1 s of a 2-core CPU a
    token. conftest's `client` is the openai client on it."""
    model = tiny_llama(tmp_path_factory.mktemp("store"), max_position_embeddings=MAX_MODEL_LEN)
    srv = LiveServer(model=model, load_format="dummy").start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def _error(server, method: str, path: str, **kw) -> tuple[int, dict]:
    status, _, raw = http(server, method, path, **kw)
    return status, json.loads(raw)["error"]


def test_previous_response_id_continues_the_conversation(client, model):
    """The second turn is given the first's input and output, not its instructions: the
    same prompt and greedy text as the whole conversation sent as input items."""
    first = client.responses.create(model=model, input=ASK, instructions="Answer in French.",
                                    **KW)
    assert first.store is True and first.previous_response_id is None
    second, whole = at_once(  # at once (the server batches them), for time
        lambda: client.responses.create(model=model, input=MORE, previous_response_id=first.id,
                                        **KW),
        lambda: client.responses.create(model=model, store=False, input=[
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": MORE}], **KW))
    assert second.store is True and second.previous_response_id == first.id
    assert second.instructions is None
    assert second.usage.input_tokens == whole.usage.input_tokens
    assert second.output_text == whole.output_text
    # a third turn: the whole chain, each response's items in order
    third = client.responses.create(model=model, input="Thanks.",
                                    previous_response_id=second.id, **KW)
    items = client.responses.input_items.list(third.id, order="asc").data
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant"),
                                                 ("message", "user"), ("message", "assistant"),
                                                 ("message", "user")], items
    assert [i.id for i in items[1::2]] == [first.output[0].id, second.output[0].id]
    assert [i.content[0].text for i in items[::2]] == [ASK, MORE, "Thanks."]
    assert items[0].content[0].type == "input_text"


def test_a_call_is_answered_through_previous_response_id(client, model):
    """The kept call and the output sent for it now are one assistant turn and its tool
    result: the prompt of the whole conversation sent as input items."""
    tools = dict(tools=[WEATHER], **KW)
    first = client.responses.create(model=model, input="Weather in Paris?", max_output_tokens=40,
                                    temperature=0, tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"})
    [call] = [i for i in first.output if i.type == "function_call"]
    answer = [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}]
    continued, sent = at_once(  # at once (the server batches them), for time
        lambda: client.responses.create(model=model, previous_response_id=first.id,
                                        input=answer, tool_choice="none", **tools),
        lambda: client.responses.create(model=model, store=False, tool_choice="none", **tools,
                                        input=[{"role": "user", "content": "Weather in Paris?"},
                                               {"type": "function_call", "call_id": call.call_id,
                                                "name": call.name, "arguments": call.arguments},
                                               *answer]))
    assert continued.usage.input_tokens == sent.usage.input_tokens
    assert continued.output_text == sent.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_a_kept_response_is_retrieved_as_it_was_answered(server, stream):
    body = {"input": ASK, "stream": stream, **KW}
    status, _, raw = http(server, "POST", "/v1/responses", json=body)
    assert status == 200, raw
    # a stream's answer: response.completed's Response, in the last event's data line
    answer = (json.loads(raw.split(b"\ndata: ")[-1])["response"] if stream
              else json.loads(raw))
    assert answer["store"] is True and answer["output"][0]["content"][0]["text"]
    status, _, kept = http(server, "GET", f"/v1/responses/{answer['id']}")
    assert status == 200 and json.loads(kept) == answer


def test_a_streamed_response_is_continued_through_the_sdk(client, model):
    with client.responses.stream(model=model, input=ASK, **KW) as stream:
        final = stream.get_final_response()
    second = client.responses.create(model=model, input=MORE, previous_response_id=final.id,
                                     **KW)
    assert second.previous_response_id == final.id
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_delete_forgets_it(server, client, model):
    first = client.responses.create(model=model, input=ASK, **KW)
    assert client.responses.retrieve(first.id).id == first.id
    status, _, raw = http(server, "DELETE", f"/v1/responses/{first.id}")
    assert status == 200, raw
    assert json.loads(raw) == {"id": first.id, "object": "response.deleted", "deleted": True}
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        status, error = _error(server, method, f"/v1/responses/{first.id}{path}")
        assert status == 404 and error["param"] == "response_id", (method, path, error)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    second = client.responses.create(model=model, input=ASK, **KW)
    assert client.responses.delete(second.id) is None  # the SDK's answer to a deletion
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's 400, not a 404
        client.responses.create(model=model, input=MORE, previous_response_id=second.id, **KW)
    assert e.value.body["param"] == "previous_response_id", e.value.body
    assert e.value.body["code"] == "previous_response_not_found", e.value.body


def test_store_false_keeps_nothing(server, client, model):
    r = client.responses.create(model=model, input=ASK, store=False, **KW)
    assert r.store is False
    status, error = _error(server, "GET", f"/v1/responses/{r.id}")
    assert status == 404 and error["param"] == "response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=MORE, previous_response_id=r.id, **KW)
    assert e.value.body["param"] == "previous_response_id"
    assert "previous response" in e.value.message.lower() and r.id in e.value.message
    # store false continues a kept response all the same, and keeps only that one
    kept = client.responses.create(model=model, input=ASK, **KW)
    on = client.responses.create(model=model, input=MORE, previous_response_id=kept.id,
                                 store=False, **KW)
    assert on.store is False and on.previous_response_id == kept.id
    assert _error(server, "GET", f"/v1/responses/{on.id}")[0] == 404
    assert client.responses.retrieve(kept.id).id == kept.id


def test_input_items_are_listed_page_by_page(client, model):
    """OpenAI's list object: the newest item first by default; the SDK's pager follows
    `after` through has_more."""
    items = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": [{"type": "input_text", "text": ASK}]},
             {"role": "assistant", "content": "Red."},
             {"role": "user", "content": MORE}]
    r = client.responses.create(model=model, input=items, **KW)
    page = client.responses.input_items.list(r.id)
    assert [(i.role, i.content[0].text) for i in page.data] == [
        ("user", MORE), ("assistant", "Red."), ("user", ASK), ("developer", "Be brief.")]
    assert page.data[1].content[0].type == "output_text"
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    assert page.has_more is False and len({i.id for i in page.data}) == 4
    two = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.role for i in two.data] == ["developer", "user"] and two.has_more is True
    every = list(client.responses.input_items.list(r.id, order="asc", limit=1))  # 4 pages
    assert [i.id for i in every] == [i.id for i in reversed(page.data)]
    before = client.responses.input_items.list(r.id, order="asc",
                                               extra_query={"before": every[2].id})
    assert [i.id for i in before.data] == [i.id for i in every[:2]]
    # the page just before the cursor (the previous page), as OpenAI's `before` pages back:
    # not the list's first items
    back = client.responses.input_items.list(r.id, order="asc", limit=1,
                                             extra_query={"before": every[3].id})
    assert [i.id for i in back.data] == [every[2].id] and back.has_more is True
    back = client.responses.input_items.list(r.id, limit=2, extra_query={"before": every[0].id})
    assert [i.id for i in back.data] == [every[2].id, every[1].id] and back.has_more is True


@pytest.mark.parametrize("query, param", [
    ("order=up", "order"), ("limit=0", "limit"), ("limit=101", "limit"),
    ("limit=ten", "limit"), ("after=msg_nope", "after"), ("before=msg_nope", "before")])
def test_bad_input_items_queries_are_400s_naming_them(server, client, model, query, param):
    r = client.responses.create(model=model, input=ASK, **KW)
    status, error = _error(server, "GET", f"/v1/responses/{r.id}/input_items?{query}")
    assert status == 400 and error["param"] == param, error
    assert param in error["message"]
    # the value sent quoted as JSON spells a string, as the body's values are, not repr's 'up'
    assert f'"{query.partition("=")[2]}"' in error["message"], error


def test_cancel_and_stream_again_are_for_background_responses(server, client, model):
    """No response is made in the background: cancelling a kept one is a 400 (as vLLM
    answers for a synchronous one), an unknown one a 404; so is retrieving it as a stream."""
    r = client.responses.create(model=model, input=ASK, **KW)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.cancel(r.id)
    assert e.value.body["param"] == "response_id" and "background" in e.value.message
    status, error = _error(server, "GET", f"/v1/responses/{r.id}?stream=true")
    assert status == 400 and error["param"] == "stream"
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_never")
    assert client.responses.retrieve(r.id).output_text == r.output_text  # still kept


def test_a_stream_the_client_leaves_is_not_kept(server):
    """Nothing is kept of a response whose client left before it ended, and nothing of it
    is held by the engine."""
    async def leave() -> str:
        rid = None
        async with aiohttp.ClientSession() as s:
            async with s.post(server.base + "/v1/responses", json={
                    "input": ASK, "stream": True, "max_output_tokens": 400,
                    "ignore_eos": True}) as r:
                assert r.status == 200
                async for line in r.content:  # until the text begins, then away
                    if line.startswith(b"data: ") and rid is None:  # response.created
                        rid = json.loads(line[len(b"data: "):])["response"]["id"]
                    if b"output_text.delta" in line:
                        return rid

    rid = asyncio.run(leave())
    assert rid and rid.startswith("resp_"), rid
    server.wait_idle()
    status, error = _error(server, "GET", f"/v1/responses/{rid}")
    assert status == 404, error


def _with_store(tiny: str, capacity: int, calls, max_bytes: int = 2**30) -> list:
    """What `calls` (an async function of the client) gives, on an app keeping `capacity`
    responses (of `max_bytes` in all) around the tiny model."""
    async def main():
        engine = Engine(tiny, load_format="dummy", kv_tokens=512)
        app = create_app(engine, max_stored_responses=capacity,
                         max_stored_response_bytes=max_bytes)
        async with TestClient(TestServer(app)) as client:
            return await calls(client)
    return asyncio.run(main())


def test_the_store_keeps_the_most_recent(tiny):
    body = {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 2}

    async def calls(client):
        ids = []
        for stream in (False, False, True):
            r = await client.post("/v1/responses", json={**body, "stream": stream})
            raw = await r.read()
            ids.append(json.loads(raw.split(b"\ndata: ")[-1])["response"]["id"] if stream
                       else json.loads(raw)["id"])
        return [(await client.get(f"/v1/responses/{rid}")).status for rid in ids]

    assert _with_store(tiny, 2, calls) == [404, 200, 200]  # the oldest dropped


def test_a_store_of_none_answers_store_false(tiny):
    body = {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 2}

    async def calls(client):
        r = await (await client.post("/v1/responses", json=body)).json()
        got = await client.get(f"/v1/responses/{r['id']}")
        again = await client.post("/v1/responses", json={**body,
                                                         "previous_response_id": r["id"]})
        return r["store"], got.status, again.status, (await again.json())["error"]

    store, got, again, error = _with_store(tiny, 0, calls)
    assert store is False and got == 404 and again == 400
    assert "--max-stored-responses 0" in error["message"], error
    with pytest.raises(ValueError, match="capacity"):
        create_app(Engine(tiny, load_format="dummy"), max_stored_responses=-1)


def test_a_response_kept_again_is_the_newest():
    """A response put under an id already kept (the server makes each id afresh, so only
    the store's own callers can) replaces the old one and is the newest, the oldest other
    one dropped to make room."""
    from aiollm.api.response_store import ResponseStore

    store = ResponseStore(2)
    for rid in ("a", "b", "a", "c"):
        store.put({"id": rid, "output": [{"id": f"msg_{rid}"}]}, [{"id": f"in_{rid}"}])
    assert (store.get("a") is not None, store.get("b"), store.get("c") is not None) == (
        True, None, True) and len(store) == 2
    assert store.get("a").conversation() == [{"id": "in_a"}, {"id": "msg_a"}]
    assert store.delete("a") and not store.delete("a") and len(store) == 1


def test_the_flag_sets_the_bound_and_refuses_a_negative_one(capsys):
    from aiollm.cli import build_parser, main

    serve = build_parser().parse_args(["serve", "--max-stored-responses", "7"])
    assert serve.max_stored_responses == 7
    assert build_parser().parse_args(["serve"]).max_stored_responses == 1000
    with pytest.raises(SystemExit) as e:
        main(["serve", "--max-stored-responses", "-1"])
    assert e.value.code == 2
    assert "argument --max-stored-responses: must be >= 0" in capsys.readouterr().err


def test_the_store_is_bounded_by_bytes_too():
    """A count alone let clients drive the server out of memory (1000 responses of a 16 MiB
    body each): the store also keeps at most max_bytes of JSON, the oldest dropped first;
    one response larger than the whole bound is not kept and drops nothing."""
    from aiollm.api.response_store import ResponseStore, stored_size

    def response(rid: str, text: str) -> dict:
        return {"id": rid, "output": [{"id": f"msg_{rid}", "text": text}]}

    one = stored_size(response("a", "x" * 100), [{"id": "in_a"}])
    assert one > 100
    store = ResponseStore(10, max_bytes=2 * one)
    for rid in "abc":
        store.put(response(rid, "x" * 100), [{"id": f"in_{rid}"}])
    assert [store.get(r) is not None for r in "abc"] == [False, True, True]
    assert store.bytes == 2 * one and len(store) == 2
    store.put(response("d", "x" * 10_000), [{"id": "in_d"}])  # past the whole bound
    assert store.get("d") is None and len(store) == 2 and store.bytes == 2 * one
    assert store.delete("b") and store.bytes == one
    with pytest.raises(ValueError, match="max_bytes"):
        ResponseStore(10, max_bytes=-1)
    assert not ResponseStore(10, max_bytes=0).keeps and not ResponseStore(0).keeps


def test_a_store_of_no_bytes_answers_store_false(tiny):
    body = {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 2}

    async def calls(client):
        return (await (await client.post("/v1/responses", json=body)).json())["store"]

    assert _with_store(tiny, 10, calls, max_bytes=0) is False


def test_the_byte_flag_sets_the_bound_and_refuses_a_negative_one(capsys):
    from aiollm.cli import build_parser, main

    serve = build_parser().parse_args(["serve", "--max-stored-response-bytes", "4096"])
    assert serve.max_stored_response_bytes == 4096
    assert build_parser().parse_args(["serve"]).max_stored_response_bytes == 2**30
    with pytest.raises(SystemExit) as e:
        main(["serve", "--max-stored-response-bytes", "-1"])
    assert e.value.code == 2
    assert "argument --max-stored-response-bytes: must be >= 0" in capsys.readouterr().err


def test_a_long_unknown_id_is_not_echoed_whole(server, client, model):
    """A 404's message names the id, cut short: a client's 100 kB id was echoed whole."""
    long_id = "resp_" + "x" * 100_000
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=ASK, previous_response_id=long_id, **KW)
    assert e.value.body["param"] == "previous_response_id"
    assert len(e.value.message) < 1000 and "resp_xxx" in e.value.message
    status, error = _error(server, "GET", "/v1/responses/" + "y" * 6000)
    assert status == 404 and len(error["message"]) < 1000 and "yyy" in error["message"]


def test_continuations_at_once_branch_and_outlive_their_parent(tiny):
    """Two requests continuing one response at once each answer their own branch; deleting
    (or dropping) the parent while a continuation streams ends neither it nor its keeping."""
    body = {"model": os.path.basename(tiny), "max_output_tokens": 2}

    async def calls(client):
        first = await (await client.post("/v1/responses", json={**body, "input": "Hi"})).json()
        more = {**body, "previous_response_id": first["id"]}
        streamed = await client.post("/v1/responses", json={
            **more, "input": "go", "stream": True, "max_output_tokens": 20, "ignore_eos": True})
        await streamed.content.readline()  # begun: the parent's conversation taken
        branches = await asyncio.gather(*[client.post("/v1/responses", json={
            **more, "input": f"branch {i}"}) for i in range(2)])
        ids = [(await b.json())["id"] for b in branches]
        gone = (await client.delete(f"/v1/responses/{first['id']}")).status
        raw = await streamed.read()
        done = json.loads(raw.split(b"\ndata: ")[-1])["response"]
        texts = []
        for rid in [*ids, done["id"]]:
            page = await (await client.get(f"/v1/responses/{rid}/input_items?order=asc")).json()
            texts.append([i["content"][0]["text"] for i in page["data"] if i["role"] == "user"])
        return gone, done["status"], texts

    gone, status, texts = _with_store(tiny, 10, calls)
    assert gone == 200 and status == "incomplete"
    assert texts == [["Hi", "branch 0"], ["Hi", "branch 1"], ["Hi", "go"]]


def test_a_conversation_past_the_context_is_told_as_one(tiny):
    """A continued conversation that outgrew the context: the 400 says the conversation
    (the kept turns and the input) has that many tokens, not the input alone, which was
    short, and that a new conversation (no previous_response_id) starts afresh."""
    body = {"model": os.path.basename(tiny), "input": "word " * 20, "max_output_tokens": 5}

    async def calls(client):
        prev = None
        for _ in range(40):
            r = await client.post("/v1/responses", json={**body, "previous_response_id": prev}
                                  if prev else body)
            answer = await r.json()
            if r.status != 200:
                return r.status, answer["error"]
            prev = answer["id"]

    status, error = _with_store(tiny, 100, calls)
    assert status == 400 and error["code"] == "context_length_exceeded", error
    assert error["message"].startswith("the conversation (previous_response_id's"), error
    assert "without previous_response_id" in error["message"], error
