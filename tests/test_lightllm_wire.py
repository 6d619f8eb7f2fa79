"""What LightLLM's clients read on the wire, as LightLLM's own server (lightllm/server/
api_http.py, api_lightllm.py, detokenization/decode.py) sends it: /generate_stream's events
leave generated_text null; an output never ends in the U+FFFD of an unfinished UTF-8
character; a refused request is a 417 whose body says why in a top-level "message"; GET
/tokens reads a JSON body as POST does."""

from __future__ import annotations

import json
import re

import pytest
from live_server import http, sse_events

PARIS = "The capital of France is"


def stream_events(server, body: dict) -> list[dict]:
    status, _, raw = http(server, "POST", "/generate_stream", json=body)
    assert status == 200, raw
    return [json.loads(e) for e in sse_events(raw)]


def test_stream_events_leave_generated_text_null(server):
    """LightLLM sends generated_text null in every event, the last (finished) one too: the
    text is the join of the events' token texts. The last event carried the whole text."""
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
    events = stream_events(server, body)
    assert [e["finished"] for e in events] == [False] * 3 + [True], events
    assert all(e["generated_text"] is None for e in events), events[-1]
    _, _, raw = http(server, "POST", "/generate", json=body)
    assert "".join(e["token"]["text"] for e in events) == json.loads(raw)["generated_text"][0]


@pytest.mark.parametrize("max_new_tokens", [1, 2])
def test_an_output_cut_inside_a_character_drops_its_replacement_character(server,
                                                                          max_new_tokens):
    """An output that stops inside a character (here: made only of the first token of the
    three that 🚀 is) decodes to U+FFFD at its end. LightLLM's detokenizer never sends text
    ending in U+FFFD, so it drops it; it was kept, in generated_text, the last token's text
    (return_details) and the last event's."""
    first = server.engine.tokenizer.encode("🚀", add_special_tokens=False)[0]
    assert server.engine.tokenizer.decode([first]) == "\ufffd"  # the case at hand
    body = {"inputs": PARIS, "parameters": {
        "max_new_tokens": max_new_tokens, "ignore_eos": True, "allowed_token_ids": [first],
        "return_details": True}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    out = json.loads(raw)
    assert status == 200, raw
    assert out["generated_text"] == [""] and out["count_output_tokens"] == max_new_tokens, out
    assert [t["text"] for t in out["tokens"]] == [""] * max_new_tokens, out
    assert [t["id"] for t in out["tokens"]] == [first] * max_new_tokens, out
    events = stream_events(server, body)
    assert [(e["token"]["id"], e["token"]["text"]) for e in events] == \
        [(first, "")] * max_new_tokens, events
    assert events[-1]["finished"] and events[-1]["finish_reason"] == "length"


REFUSED = [
    ("/generate", {"inputs": PARIS, "parameters": {"max_new_tokens": 0}},
     "parameters.max_new_tokens"),
    ("/generate_stream", {"inputs": PARIS, "parameters": {"do_sample": True, "top_k": 0}},
     "parameters.top_k"),
    ("/generate", {"inputs": PARIS, "parameters": {"temperature": "hot"}},
     "parameters.temperature"),
    ("/generate_stream", {"inputs": "hello " * 600}, "inputs"),  # past the context
    ("/", {"inputs": [], "stream": True}, "inputs"),
    ("/tokens", {"text": 3}, "text"),
]


@pytest.mark.parametrize("path,body,param", REFUSED, ids=[f"{p}:{q}" for p, _, q in REFUSED])
def test_a_refused_request_is_417_with_a_top_level_message(server, path, body, param):
    """LightLLM answers a request it refuses (a bad parameter, a prompt past the context,
    a body of the wrong shape) with 417 and {"message": why}; its clients read that
    message. Here the OpenAI-style error object stays beside it, naming the field. It was a
    400 with the error object alone."""
    status, _, raw = http(server, "POST", path, json=body)
    out = json.loads(raw)
    assert status == 417, raw
    assert out["message"] and out["message"] == out["error"]["message"], out
    assert out["error"]["param"] == param, out


def test_a_request_body_that_is_no_json_is_417(server):
    status, _, raw = http(server, "POST", "/generate", data=b'{"inputs": "x",',
                          headers={"Content-Type": "application/json"})
    assert status == 417 and "not valid JSON" in json.loads(raw)["message"], raw


def test_the_other_routes_keep_400(server):
    """The OpenAI routes answer a bad request 400, their error object alone."""
    status, _, raw = http(server, "POST", "/v1/completions", json={"prompt": "x",
                                                                   "max_tokens": -1})
    assert status == 400 and set(json.loads(raw)) == {"error"}, raw


def test_get_tokens_reads_a_json_body_as_post_does(server):
    """LightLLM's GET /tokens reads the request's JSON body, as its POST does."""
    body = {"text": PARIS}
    _, _, want = http(server, "POST", "/tokens", json=body)
    status, _, raw = http(server, "GET", "/tokens", json=body)
    assert status == 200 and json.loads(raw) == json.loads(want), raw


def test_get_tokens_with_a_query_and_no_body_says_where_the_text_goes(server):
    """/tokens?text=... (LightLLM reads no query either): the refusal says the text goes
    in the JSON body, naming the field; it said only that the body was empty."""
    status, _, raw = http(server, "GET", "/tokens?text=hello")
    out = json.loads(raw)
    assert status == 417 and out["error"]["param"] == "text", raw
    assert "JSON body" in out["message"] and "query" in out["message"], raw


def test_an_aborted_streams_end_reaches_no_client_as_an_event(server):
    """The one delta that may bring no token is the end of an aborted request (closed
    while its reader waits, or at a shutdown), with the U+FFFD the end releases of a
    character its output stopped inside. /generate_stream reads its deltas through merge,
    which raises such an end as the stream's error (Overloaded) before any event is made of
    it: no event has a token id null (an event of id null was written for it)."""
    import asyncio

    from aiollm.api.choices import merge
    from aiollm.errors import Overloaded
    from aiollm.sampling_params import SamplingParams

    first = server.engine.tokenizer.encode("🚀", add_special_tokens=False)[0]
    params = SamplingParams(max_tokens=200, ignore_eos=True, allowed_token_ids=[first])

    async def scenario() -> tuple[list, BaseException | None]:
        stream = server.engine.stream([1, 2, 3], params)
        seen = []
        try:
            async for _, delta in merge([lambda: stream]):
                seen.append(delta)
                if len(seen) == 2:  # closed by another task while this one reads on
                    asyncio.get_running_loop().create_task(stream.aclose())
        except Overloaded as e:
            return seen, e
        return seen, None

    seen, err = asyncio.run_coroutine_threadsafe(scenario(), server.loop).result(60)
    assert isinstance(err, Overloaded), (seen, err)
    assert all(d.token_ids and d.finish_reason is None for d in seen), seen
    server.wait_idle()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_tokens_without_a_body_names_text(server, method):
    """`curl host/tokens` (GET, no body, no query): the refusal names the field and says
    where it goes, as with a query string. It said only "request body is empty", param
    null, to a client that sent no body because it did not know /tokens reads one."""
    status, _, raw = http(server, method, "/tokens")
    out = json.loads(raw)
    assert status == 417 and out["error"]["param"] == "text", raw
    assert "JSON body" in out["message"] and '"text"' in out["message"], raw


def test_a_stream_refused_after_its_first_event_ends_with_a_top_level_message(server):
    """An error found mid-stream (min_new_tokens past where the grammar ends the output)
    is the stream's last event: on /generate_stream its data carries the top-level
    "message" LightLLM's clients read, as the 417 of the same request on /generate does.
    It was the OpenAI-style error object alone."""
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 50, "min_new_tokens": 40,
                                           "regular_constraint": "ab"}}
    status, _, raw = http(server, "POST", "/generate_stream", json=body)
    last = json.loads(sse_events(raw)[-1])
    assert status == 200, raw
    assert last["error"]["param"] == "parameters.min_new_tokens", last
    assert last.get("message") == last["error"]["message"], last
    _, _, whole = http(server, "POST", "/generate", json=body)
    assert json.loads(whole)["message"] == last["message"], whole
    server.wait_idle()


def test_a_body_refused_on_its_expect_header_has_the_top_level_message(server):
    """curl asks `Expect: 100-continue` before a body past 1 MB; one past the limit is
    refused on its headers (413) before the handler runs. On LightLLM's routes that 413
    says why in the top-level "message" too, as the 413 of a body found too large as it is
    read does; it had the error object alone."""
    import asyncio
    from urllib.parse import urlsplit

    async def exchange() -> bytes:
        url = urlsplit(server.base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % 2**30)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        size = int(re.search(rb"Content-Length: (\d+)", head)[1])
        body = await asyncio.wait_for(reader.readexactly(size), 10)
        writer.close()
        return head, body

    head, raw = asyncio.run(exchange())
    assert head.startswith(b"HTTP/1.1 413"), head
    out = json.loads(raw)
    assert out.get("message") == out["error"]["message"], out


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/generate", "POST"), ("PUT", "/generate_stream", "POST"),
    ("DELETE", "/", "POST"), ("PUT", "/tokens", "GET,HEAD,POST"),
    ("GET", "/generate/", "POST")])
def test_a_wrong_method_on_a_lightllm_route_has_the_top_level_message(server, method, path,
                                                                      allow):
    """A wrong method on one of LightLLM's routes is a 405 with its Allow header, and its
    body says why in the top-level "message" LightLLM's clients read, as every other
    refusal on those routes does; it had the error object alone. The OpenAI routes' 405
    keeps their error object alone."""
    status, headers, raw = http(server, method, path)
    out = json.loads(raw)
    assert status == 405 and headers["Allow"] == allow, (status, headers)
    assert out.get("message") and out["message"] == out["error"]["message"], out
    assert allow in out["message"], out
    status, headers, raw = http(server, "GET", "/v1/completions")
    assert status == 405 and headers["Allow"] == "POST", (status, headers)
    assert set(json.loads(raw)) == {"error"}, raw
