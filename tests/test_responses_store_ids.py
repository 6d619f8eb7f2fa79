"""What a stored response's id and `store` promise (the tiny app, in-process): a streamed
response too large to keep ends saying store false, as GET (a 404) says; a response's id is
the server's own, so a client reusing an X-Request-Id replaces no other client's response;
a function_call_output answers a call before it in its conversation or is a 400 naming
its call_id; an unknown id is told as OpenAI tells it (type invalid_request_error; an unknown
previous_response_id a 400 of code previous_response_not_found)."""

from __future__ import annotations

import json
import os

from test_responses_store import _with_store

CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "ok"}


def _body(tiny: str, **fields) -> dict:
    return {"model": os.path.basename(tiny), "input": "Hi", "max_output_tokens": 1, **fields}


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[len(b"data: "):]) for line in raw.splitlines()
            if line.startswith(b"data: ")]


def test_a_stream_too_large_to_keep_ends_saying_store_false(tiny):
    """A stream says store true in response.created, before its size is known; one found
    larger than --max-stored-response-bytes alone at its end is not kept, and its last
    event (response.completed) said store true all the same: a client continuing it got a
    404. Now the last event says what was kept, as GET does; a small stream's still says
    true and GET gives that Response."""
    # 6,000 characters in ~96 tokens (the tokenizer merges runs of "-"): fits the tiny context
    big = _body(tiny, input="x" + "-" * 6000, stream=True)

    async def calls(client):
        out = []
        for body in (big, {**big, "input": "Hi"}):
            events = _events(await (await client.post("/v1/responses", json=body)).read())
            final = events[-1]["response"]
            got = await client.get(f"/v1/responses/{final['id']}")
            out.append((events[0]["response"]["store"], events[-1]["type"], final,
                        got.status, await got.json()))
        return out

    (said, last, final, status, _), (s_said, s_last, s_final, s_status, kept) = _with_store(
        tiny, 10, calls, max_bytes=10_000)
    assert (said, last, final["store"], status) == (True, "response.completed", False, 404)
    assert (s_said, s_last, s_final["store"], s_status) == (
        True, "response.completed", True, 200)
    assert kept == s_final


def test_a_reused_request_id_replaces_no_kept_response(tiny):
    """The response id was resp_ and the request's X-Request-Id (or body request_id): a
    second request sent with the same one, by another client or a retry, replaced the
    first's kept response (its GET gave the other's answer, a continuation of it continued
    the other's conversation). Each response's id is the server's own now; the request id
    is still sent back in the X-Request-Id header."""
    async def calls(client):
        answers, headers = [], []
        for text, stream in (("Hi", False), ("Bye", False), ("Yo", True)):
            r = await client.post("/v1/responses", headers={"X-Request-Id": "same"},
                                  json=_body(tiny, input=text, stream=stream))
            headers.append(r.headers["X-Request-Id"])
            raw = await r.read()
            answers.append(_events(raw)[-1]["response"] if stream else json.loads(raw))
        by_body = await (await client.post("/v1/responses", json=_body(
            tiny, request_id="same"))).json()
        answers.append(by_body)
        kept = [await (await client.get(f"/v1/responses/{a['id']}")).json()
                for a in answers]
        items = [await (await client.get(f"/v1/responses/{a['id']}/input_items")).json()
                 for a in answers]
        return answers, headers, kept, items

    answers, headers, kept, items = _with_store(tiny, 10, calls)
    assert headers == ["same"] * 3
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 4 and all(i.startswith("resp_") for i in ids), ids
    assert kept == answers
    assert [page["data"][0]["content"][0]["text"] for page in items] == [
        "Hi", "Bye", "Yo", "Hi"]


def test_an_output_of_no_call_is_a_400_naming_its_call_id(tiny):
    """A function_call_output whose call_id no function_call of the conversation (the
    kept response's items, then this input) has was answered; OpenAI refuses it (400, "No
    tool call found for function call output with call_id ..."). Answered: a call and its
    output in one input, and an output of a call kept with the previous response."""
    async def calls(client):
        async def post(**fields):
            r = await client.post("/v1/responses", json=_body(tiny, **fields))
            return r.status, await r.json()

        out = [await post(input=[{"role": "user", "content": "Hi"}, OUTPUT]),
               await post(input=[{"role": "user", "content": "Hi"}, CALL,
                                 {**OUTPUT, "call_id": "call_2"}])]
        status, first = await post(input=[{"role": "user", "content": "Hi"}, CALL])
        out.append((status, first))
        out.append(await post(input=[OUTPUT], previous_response_id=first["id"]))
        plain = (await post())[1]
        out.append(await post(input=[{"role": "user", "content": "Hi"}, OUTPUT],
                              previous_response_id=plain["id"]))
        out.append(await post(input=[{"role": "user", "content": "Hi"}, CALL, OUTPUT]))
        return out

    no_call, other_call, first, continued, no_kept_call, both = _with_store(tiny, 10, calls)
    for (status, body), param in ((no_call, "input[1].call_id"),
                                  (other_call, "input[2].call_id"),
                                  (no_kept_call, "input[1].call_id")):
        assert status == 400, body
        error = body["error"]
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), body
        # quoted as JSON spells a string ("call_1"), not as Python's repr ('call_1')
        assert '"call_1"' in error["message"] or '"call_2"' in error["message"], error
    assert first[0] == continued[0] == both[0] == 200, (first, continued, both)


def test_an_unknown_id_is_told_as_openai_tells_it(tiny):
    """A 404 of an unknown response id had type not_found_error; OpenAI's is an
    invalid_request_error. An unknown previous_response_id is OpenAI's 400 of code
    previous_response_not_found (clients that recover a lost conversation look for it)."""
    async def calls(client):
        out = []
        for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items"),
                             ("POST", "/cancel")):
            r = await client.request(method, f"/v1/responses/resp_nope{path}")
            out.append((r.status, (await r.json())["error"]))
        r = await client.post("/v1/responses", json=_body(tiny,
                                                          previous_response_id="resp_nope"))
        out.append((r.status, (await r.json())["error"]))
        return out

    *by_id, previous = _with_store(tiny, 10, calls)
    for status, error in by_id:
        assert (status, error["type"], error["param"]) == (
            404, "invalid_request_error", "response_id"), error
    status, error = previous
    assert (status, error["type"], error["param"], error["code"]) == (
        400, "invalid_request_error", "previous_response_id",
        "previous_response_not_found"), error


def test_an_output_before_its_call_is_a_400(tiny):
    """An output sent before the function_call it answers was taken (the check looked at
    the whole input): the chat template then rendered a tool result ahead of the call it
    answers. OpenAI's API reads the input in order, an output binding to a call made
    before it; one ahead of its call is its 400 of an output of no call. An output after
    its call, or after one kept with the previous response, is answered."""
    async def calls(client):
        async def post(**fields):
            r = await client.post("/v1/responses", json=_body(tiny, **fields))
            return r.status, await r.json()

        ahead = await post(input=[{"role": "user", "content": "Hi"}, OUTPUT, CALL])
        after = await post(input=[{"role": "user", "content": "Hi"}, CALL, OUTPUT])
        return ahead, after

    (status, body), (after, _) = _with_store(tiny, 10, calls)
    assert status == 400, body
    assert body["error"]["param"] == "input[1].call_id", body
    assert "call_1" in body["error"]["message"], body
    assert after == 200
