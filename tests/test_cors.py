"""CORS against the real app (tests/live_server.py), as a browser uses it: off by default;
with allowed origins, the preflight OPTIONS of every route is answered without the API key,
the request itself still needs it, and every response to an allowed origin (errors and
streams too) carries Access-Control-Allow-Origin. A browser refuses what lacks it.

The servers with CORS on run a tiny random Llama (conftest.tiny_llama, dummy weights) with
the default model's tokenizer and chat template: what is checked is headers, statuses and
the framing of streams, which no model's words change."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import tiny_llama
from live_server import MAX_MODEL_LEN, LiveServer, http, sse_events

from aiollm.api import CorsOptions, lightllm, ops
from aiollm.api import openai as openai_api
from aiollm.api.cors import enable_cors

KEY = "cors-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://localhost:3000"
ELSEWHERE = "https://elsewhere.example"
# what a browser asks before a chat UI's POST with the key and a JSON body
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RESPONSE = {"input": "hi", "max_output_tokens": 2}  # /v1/responses
# every route the server has of a method cors_server allows (GET, POST: a preflight for
# DELETE /v1/responses/{id} is refused there, as test_preflight_outside_... checks), as
# (method, a path it serves)
ROUTES = [(r.method, re.sub(r"{[^}]*}", "some-model", r.path))
          for r in ops.ROUTES + openai_api.ROUTES + lightllm.ROUTES
          if r.method in ("GET", "POST")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """The tiny random Llama's directory (the shared server's MAX_MODEL_LEN positions):
    the default model's 30 layers cost 10-25 s of loading a server and ~0.1 s a token."""
    return tiny_llama(tmp_path_factory.mktemp("cors"), max_position_embeddings=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def cors_server(tiny_model) -> LiveServer:
    """An API key, one allowed origin, GET and POST with the Authorization header (and the
    safelisted ones, Content-Type among them)."""
    srv = LiveServer(model=tiny_model, load_format="dummy", api_key=KEY, cors=CorsOptions(
        (ORIGIN,), allowed_methods=("GET", "POST"), allowed_headers=("Authorization",))).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def get_only_server(tiny_model) -> LiveServer:
    """One allowed origin, allowed GET alone (--allowed-methods GET), no API key."""
    srv = LiveServer(model=tiny_model, load_format="dummy",
                     cors=CorsOptions((ORIGIN,), allowed_methods=("GET",))).start()
    yield srv
    srv.close()


def cors_headers(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


def test_off_by_default(server):
    status, headers, body = http(server, "OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
    assert status == 405 and json.loads(body)["error"]["message"], body
    assert cors_headers(headers) == {}
    status, headers, _ = http(server, "POST", "/v1/chat/completions", json=CHAT,
                              headers={"Origin": ORIGIN})
    assert status == 200 and cors_headers(headers) == {}


@pytest.mark.parametrize("origin", [ELSEWHERE, "null"])
@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", CHAT),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 1}})])
def test_a_page_s_post_without_content_type_is_refused(server, path, body, origin):
    """A page's fetch() of an ArrayBuffer or an untyped Blob sends no Content-Type, and a
    POST without one needs no CORS preflight: any site (or a sandboxed frame, whose Origin
    is "null") could drive the server with CORS off. It was served; a request without an
    Origin (curl, the SDKs) still is."""
    data = json.dumps(body).encode()
    status, _, raw = http(server, "POST", path, data=data, headers={"Origin": origin},
                          skip_auto_headers=["Content-Type"])
    err = json.loads(raw)["error"]
    assert status == 415 and "Content-Type" in err["message"], raw
    status, _, raw = http(server, "POST", path, data=data, skip_auto_headers=["Content-Type"])
    assert status == 200, raw


@pytest.mark.parametrize("ctype", ["text/plain;charset=UTF-8", None])
@pytest.mark.parametrize("path,body,served", [
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 1}}, True),
    ("/v1/chat/completions", CHAT, None)])  # None: as without an Origin
def test_a_page_of_an_allowed_origin_is_served_as_a_client_without_one(
        cors_server, path, body, served, ctype):
    """A page the server allows by CORS may drive it anyway (with JSON, after a preflight):
    its fetch() of JSON.stringify(...) without a Content-Type (sent as text/plain) or of an
    untyped Blob is served as without an Origin: LightLLM's routes read any type as JSON, as
    LightLLM does; OpenAI's read an untyped body and refuse text/plain. Both were a 415."""
    data = json.dumps(body).encode()
    headers = {**AUTH, **({"Content-Type": ctype} if ctype else {})}
    skip = [] if ctype else ["Content-Type"]
    status, _, raw = http(cors_server, "POST", path, data=data,
                          headers={"Origin": ORIGIN, **headers}, skip_auto_headers=skip)
    plain, _, _ = http(cors_server, "POST", path, data=data, headers=headers,
                       skip_auto_headers=skip)
    assert status == plain, raw
    assert status == (200 if served or ctype is None else 415), raw
    # another origin, which CORS does not allow, is still refused
    status, _, raw = http(cors_server, "POST", path, data=data,
                          headers={"Origin": ELSEWHERE, **headers}, skip_auto_headers=skip)
    assert status == 415, raw


@pytest.mark.parametrize("method,path", ROUTES, ids=[p for _, p in ROUTES])
def test_preflight_is_answered_on_every_route_without_the_key(cors_server, method, path):
    status, headers, _ = http(cors_server, "OPTIONS", path, headers={
        **PREFLIGHT, "Access-Control-Request-Method": method})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == method
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type"}
    assert headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in headers


def test_the_request_itself_still_needs_the_key(cors_server):
    # the 401 carries the CORS headers: the page can read why it was refused
    status, headers, body = http(cors_server, "POST", "/v1/chat/completions", json=CHAT,
                                 headers={"Origin": ORIGIN})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, body = http(cors_server, "POST", "/v1/chat/completions", json=CHAT,
                                 headers={"Origin": ORIGIN, **AUTH})
    assert status == 200 and json.loads(body)["choices"], body
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    # an OPTIONS that is no preflight is refused by aiohttp-cors, not served
    status, headers, _ = http(cors_server, "OPTIONS", "/v1/chat/completions")
    assert status == 403 and cors_headers(headers) == {}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}),
], ids=["chat", "generate_stream"])
def test_streams_carry_the_cors_headers(cors_server, path, body):
    status, headers, raw = http(cors_server, "POST", path, json=body,
                                headers={"Origin": ORIGIN, **AUTH})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    events = sse_events(raw)
    assert events and not any("error" in json.loads(e) for e in events if e != "[DONE]")


@pytest.mark.parametrize("method,path,code", [("GET", "/v1/no-such-route", 404),
                                              ("DELETE", "/v1/models", 405)],
                         ids=["404", "405"])
def test_errors_of_the_router_carry_the_cors_headers(cors_server, method, path, code):
    """A path or method no route serves was answered by the router, outside every resource
    aiohttp-cors knows: the 404/405 carried no Access-Control-Allow-Origin, so the page saw a
    network error and not the server's JSON error. Other origins still get none."""
    status, headers, body = http(cors_server, method, path, headers={"Origin": ORIGIN, **AUTH})
    assert status == code and json.loads(body)["error"]["message"], body
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers, _ = http(cors_server, method, path, headers={"Origin": ELSEWHERE, **AUTH})
    assert status == code and cors_headers(headers) == {}


def test_other_origins_get_no_cors_headers(cors_server):
    status, headers, _ = http(cors_server, "OPTIONS", "/v1/chat/completions",
                              headers={**PREFLIGHT, "Origin": ELSEWHERE})
    assert status == 403 and cors_headers(headers) == {}
    # the server answers (CORS is not access control: the key is), the browser hides it
    status, headers, _ = http(cors_server, "GET", "/v1/models",
                              headers={"Origin": ELSEWHERE, **AUTH})
    assert status == 200 and cors_headers(headers) == {}


@pytest.mark.parametrize("asks", [
    {"Access-Control-Request-Method": "DELETE"},
    {"Access-Control-Request-Headers": "authorization,content-type,x-tracking"},
], ids=["method", "header"])
def test_preflight_outside_the_allowed_methods_and_headers_is_refused(cors_server, asks):
    status, headers, _ = http(cors_server, "OPTIONS", "/v1/chat/completions",
                              headers={**PREFLIGHT, **asks})
    assert status == 403 and cors_headers(headers) == {}


@pytest.mark.parametrize("origin", ["http://localhost:3000/", "localhost:3000", "",
                                    "http://user@localhost:3000", "http://localhost:99999",
                                    "http://localhost:30x0", "http://[::g]:3000"])
def test_an_origin_no_browser_sends_is_refused(origin):
    with pytest.raises(ValueError, match="not an origin"):
        CorsOptions((origin,))


@pytest.mark.parametrize("origin,sent", [
    ("http://localhost:80", "http://localhost"), ("https://app.example:443", "https://app.example"),
    ("HTTP://App.Example:8080", "http://app.example:8080"),
    ("http://localhost:03000", "http://localhost:3000"),
    ("http://café.example:3000", "http://xn--caf-dma.example:3000"),
    ("http://[0:0:0:0:0:0:0:1]:3000", "http://[::1]:3000"),
    ("http://[::ABCD]", "http://[::abcd]")])
def test_an_origin_written_unlike_a_browser_names_the_form_it_sends(origin, sent):
    """A browser sends its origin with the scheme and host in lower case and without the
    scheme's default port; aiohttp-cors compares the header as sent, so these entries were
    accepted and never matched: the page was refused with no word why. The same holds of a
    port with leading zeros, a host not in ASCII (browsers send its IDNA form, punycode)
    and an IPv6 address not in its shortest form (browsers send RFC 5952's)."""
    with pytest.raises(ValueError, match=re.escape(repr(sent))):
        CorsOptions((origin,))
    CorsOptions((sent, "http://[::1]:8000", "null"))


def test_allowed_methods_hold_for_routes_that_serve_the_method():
    """aiohttp-cors lets a route's own method through whatever allow_methods says, when CORS
    is added route by route: a POST route took POST preflights with only GET allowed."""
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def preflight(method: str) -> int:
        app = web.Application()
        app.add_routes([web.get("/get", ok), web.post("/post", ok)])
        enable_cors(app, CorsOptions(("*",), allowed_methods=("GET",)))
        async with TestClient(TestServer(app)) as client:
            path = "/get" if method == "GET" else "/post"
            resp = await client.options(path, headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": method})
            return resp.status

    assert asyncio.run(preflight("GET")) == 200
    assert asyncio.run(preflight("POST")) == 403


@pytest.mark.parametrize("method,path,body,headers", [
    ("POST", "/v1/chat/completions", CHAT, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/chat/completions", CHAT, {"Origin": ORIGIN}),  # the 401
    ("POST", "/v1/responses", RESPONSE, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/responses", {**RESPONSE, "stream": True}, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/responses", RESPONSE, {"Origin": ORIGIN}),  # the 401
    ("GET", "/v1/no-such-route", None, {"Origin": ORIGIN, **AUTH}),
    ("GET", "/v1/models", None, {"Origin": ELSEWHERE, **AUTH}),
    ("GET", "/v1/models", None, AUTH),
    ("OPTIONS", "/v1/chat/completions", None, PREFLIGHT),
], ids=["ok", "stream", "401", "responses", "responses-stream", "responses-401", "404",
        "other-origin", "no-origin", "preflight"])
def test_responses_vary_on_origin(cors_server, method, path, body, headers):
    """Access-Control-Allow-Origin echoes the request's Origin and is absent for other
    origins and for requests without one, so each response must say it varies on Origin
    (Fetch standard): without Vary a shared cache served one page's answer to another
    origin, or an Origin-less one to a page, and the browser refused it."""
    status, got, _ = http(cors_server, method, path, json=body, headers=headers)
    assert status in (200, 401, 404), status
    assert "origin" in {v.strip().lower() for v in got.get("Vary", "").split(",")}, got


def test_vary_keeps_what_the_handler_set_and_is_off_without_cors(server):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Vary": request.query.get("vary", "")})

    async def vary(query: str) -> str:
        app = web.Application()
        app.add_routes([web.get("/", ok)])
        enable_cors(app, CorsOptions(("*",)))
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/", params={"vary": query}, headers={"Origin": ORIGIN})
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # echoed even for *
            return resp.headers["Vary"]

    assert asyncio.run(vary("Accept-Encoding")) == "Accept-Encoding, Origin"
    assert asyncio.run(vary("origin")) == "origin"
    _, headers, _ = http(server, "GET", "/v1/models", headers={"Origin": ORIGIN})
    assert "Vary" not in headers


def test_vary_keeps_every_vary_header_and_adds_no_empty_member():
    """A handler's Vary given as two headers lost the second (the first was overwritten
    with itself plus Origin: a cache then served one cookie's answer for another), and an
    empty Vary became ', Origin'."""
    async def ok(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        for value in request.query.getall("vary", []):
            resp.headers.add("Vary", value)
        return resp

    async def vary(*values: str) -> list[str]:
        app = web.Application()
        app.add_routes([web.get("/", ok)])
        enable_cors(app, CorsOptions(("*",)))
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/", params=[("vary", v) for v in values],
                                    headers={"Origin": ORIGIN})
            return resp.headers.getall("Vary")

    assert asyncio.run(vary("Accept-Encoding", "Cookie")) == ["Accept-Encoding, Cookie, Origin"]
    assert asyncio.run(vary("Cookie", "origin")) == ["Cookie", "origin"]
    assert asyncio.run(vary("")) == ["Origin"]
    assert asyncio.run(vary(" , ")) == ["Origin"]


@pytest.mark.parametrize("method,path,body,headers", [
    ("POST", "/v1/chat/completions", CHAT, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/chat/completions", CHAT, {"Origin": ORIGIN}),  # the 401
    ("POST", "/v1/responses", RESPONSE, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/responses", {**RESPONSE, "stream": True}, {"Origin": ORIGIN, **AUTH}),
    ("POST", "/v1/responses", RESPONSE, {"Origin": ORIGIN}),  # the 401
    ("GET", "/v1/no-such-route", None, {"Origin": ORIGIN, **AUTH}),
], ids=["ok", "stream", "401", "responses", "responses-stream", "responses-401", "404"])
def test_the_request_id_header_is_readable_by_the_page(cors_server, method, path, body,
                                                        headers):
    """A page reads a cross-origin response's headers only where the server lists them in
    Access-Control-Expose-Headers (beyond the safelisted few): X-Request-Id, which the
    openai SDK reads as the response's request id and which names the request in the
    server's log, was listed nowhere, so a browser client could not read it."""
    status, got, _ = http(cors_server, method, path, json=body, headers=headers)
    assert status in (200, 401, 404), status
    got = {k.lower(): v for k, v in got.items()}
    assert got["x-request-id"]
    exposed = {h.strip().lower() for h in got.get("access-control-expose-headers",
                                                   "").split(",")}
    assert "x-request-id" in exposed, got
    # the same list on every response: the 503's Retry-After, which the SDK waits by
    assert "retry-after" in exposed, got


def test_responses_need_the_key(cors_server):
    """/v1/responses is guarded by the API key as the other /v1 routes are."""
    assert http(cors_server, "POST", "/v1/responses", json=RESPONSE)[0] == 401
    assert http(cors_server, "POST", "/v1/responses", json=RESPONSE, headers=AUTH)[0] == 200


@pytest.mark.parametrize("ctype", ["text/plain;charset=UTF-8", None])
def test_a_page_of_an_origin_allowed_only_other_methods_still_needs_json(get_only_server,
                                                                        ctype):
    """An origin allowed only GET (--allowed-methods) has its POST preflight refused, so
    its pages may not POST JSON: a preflight-free POST (text/plain, or no Content-Type) of
    theirs is refused as another origin's is. It was served, read as JSON."""
    body = json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 1}}).encode()
    headers = {"Origin": ORIGIN, **({"Content-Type": ctype} if ctype else {})}
    status, _, raw = http(get_only_server, "POST", "/generate", data=body, headers=headers,
                          skip_auto_headers=[] if ctype else ["Content-Type"])
    assert status == 415, raw


@pytest.mark.parametrize("ctype", ["text/plain", None])
def test_a_foreign_page_cannot_flush_the_cache(server, ctype):
    """POST /flush_cache reads no body, so its form-typed or untyped POST, which a page of any
    site may send without a CORS preflight, emptied the prefix cache with CORS off. It now
    needs a JSON Content-Type from such a page, as every route that reads a body does; curl
    and the SDKs (no Origin) still flush without one."""
    headers = {"Content-Type": ctype} if ctype else {}
    skip = [] if ctype else ["Content-Type"]
    status, _, raw = http(server, "POST", "/flush_cache", data=b"",
                          headers={"Origin": ELSEWHERE, **headers}, skip_auto_headers=skip)
    assert status == 415 and "Content-Type" in json.loads(raw)["error"]["message"], raw
    status, _, raw = http(server, "POST", "/flush_cache", data=b"", headers=headers,
                          skip_auto_headers=skip)
    assert status == 200 and "flushed_tokens" in json.loads(raw), raw
    status, _, raw = http(server, "POST", "/flush_cache", data=b"",
                          headers={"Origin": ELSEWHERE, "Content-Type": "application/json"})
    assert status == 200, raw


def test_an_allowed_page_flushes_the_cache_without_json(cors_server):
    status, _, raw = http(cors_server, "POST", "/flush_cache", data=b"",
                          headers={"Origin": ORIGIN, **AUTH}, skip_auto_headers=["Content-Type"])
    assert status == 200, raw
