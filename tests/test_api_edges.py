"""The HTTP API's edges as clients meet them, through the real server: integer fields sent
as whole floats (as Python's division and JavaScript compute them), vLLM's `priority`, the
advice a prompt that fills the context gets on each endpoint, and the server's log of
malformed HTTP requests."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web
from live_server import MAX_MODEL_LEN, http, refused_status

C, CHAT, G = "/v1/completions", "/v1/chat/completions", "/generate"
HI = [{"role": "user", "content": "hi"}]


def error_of(status: int, raw: bytes, param: str | None, path: str = C) -> str:
    """The message of a refusal naming `param` (a 400; at LightLLM's `path`, a 417)."""
    err = json.loads(raw)["error"]
    assert status == refused_status(path) and err["param"] == param, (status, err)
    return err["message"]


# -- integers sent as whole floats ------------------------------------------------------------

def test_whole_floats_are_taken_for_integer_fields(server):
    """256.0 is 256 where an integer is expected, as vLLM's (pydantic's lax) models take
    it: it was a 400, "expected an integer, got a decimal number"."""
    status, _, raw = http(server, "POST", C, json={
        "prompt": [1000.0, 1001.0], "max_tokens": 2.0, "n": 1.0, "seed": 7.0, "top_k": 5.0,
        "logprobs": 1.0, "min_tokens": 1.0, "stop_token_ids": [3.0], "priority": 0.0})
    body = json.loads(raw)
    assert status == 200, body
    assert body["usage"] == {**body["usage"], "prompt_tokens": 2, "completion_tokens": 2}
    assert len(body["choices"][0]["logprobs"]["tokens"]) == 2
    status, _, raw = http(server, "POST", CHAT, json={
        "messages": HI, "max_completion_tokens": 3.0, "logprobs": True, "top_logprobs": 2.0,
        "temperature": 0})
    body = json.loads(raw)
    assert status == 200 and body["usage"]["completion_tokens"] <= 3, body
    assert len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    status, _, raw = http(server, "POST", G, json={"inputs": "Hi", "parameters": {
        "max_new_tokens": 3.0, "top_k": 5.0, "seed": 1.0, "n": 1.0, "ignore_eos": True,
        "do_sample": True}})
    assert status == 200 and json.loads(raw)["count_output_tokens"] == 3, raw


@pytest.mark.parametrize("path, body, param", [
    (C, {"prompt": "Hi", "max_tokens": 2.5}, "max_tokens"),
    (C, {"prompt": "Hi", "max_tokens": True}, "max_tokens"),
    (C, {"prompt": "Hi", "max_tokens": "2"}, "max_tokens"),
    (C, b'{"prompt": "Hi", "max_tokens": 1e999}', "max_tokens"),  # inf, as parsers read it
    (C, {"prompt": "Hi", "max_tokens": 2.0, "n": 1.5}, "n"),
    (C, {"prompt": [1000.0, 1000.5], "max_tokens": 2}, "prompt[1]"),
    (CHAT, {"messages": HI, "seed": 1.25}, "seed"),
    (G, {"inputs": "Hi", "parameters": {"max_new_tokens": 2.5}}, "parameters.max_new_tokens"),
])
def test_what_is_no_whole_number_is_still_refused(server, path, body, param):
    sent = {"json": body} if isinstance(body, dict) else {
        "data": body, "headers": {"Content-Type": "application/json"}}
    msg = error_of(*http(server, "POST", path, **sent)[::2], param, path)
    assert msg.startswith(f"{param}: "), msg
    assert "integer" in msg or "out of range" in msg, msg


def test_whole_floats_past_64_bits_stay_refused():
    """A whole float past the 64-bit integers (1e300) is no integer any field takes: it was
    made one, 301 digits long, and the body encoded again to be decoded; a 6 MB body of them
    in prompt took 15 s and 950 MB of memory (a 16 MB one, the most allowed, some 40 s and
    2.5 GB). It is refused as any float is, naming its field; 64-bit ones are still taken."""
    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.completion_request import CompletionRequest

    def path_of_refusal(body: bytes) -> str:
        with pytest.raises(msgspec.ValidationError) as e:
            whole_floats.decode(body, CompletionRequest)
        return str(e.value).rsplit(" - at ", 1)[1]

    assert path_of_refusal(b'{"prompt": "Hi", "max_tokens": 1e300}') == "`$.max_tokens`"
    assert path_of_refusal(b'{"prompt": "Hi", "seed": -1e19}') == "`$.seed`"
    many = b'{"prompt": [' + b",".join([b"1e300"] * 20000) + b'], "max_tokens": 1}'
    assert path_of_refusal(many) == "`$.prompt[0]`"
    req = whole_floats.decode(b'{"prompt": [1.0, 2.0], "seed": 9.2e18, "max_tokens": 1e19}',
                              CompletionRequest)
    assert (req.prompt, req.seed, req.max_tokens) == ([1, 2], 9_200_000_000_000_000_000,
                                                       10**19)


def test_whole_float_retry_reads_large_exponents_fast():
    """The retry reads the body as plain JSON, where msgspec parses a float with a large
    exponent (1e300) in some 9 µs: a body whose first whole float comes before 2.7 million
    of them (16 MB, in a field the strict decode had not reached) held the GIL, and with it
    the event loop, for about 23 s. Python's float() reads them, some 20 times faster."""
    import time

    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.completion_request import CompletionRequest

    body = b'{"max_tokens": 1.0, "prompt": [' + b",".join([b"1e300"] * 300_000) + b"]}"
    start = time.perf_counter()
    msgspec.json.decode(body)  # the retry's plain read before: 2.6 s here on one core
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.raises(msgspec.ValidationError, match=r"\$\.prompt\[0\]"):
        whole_floats.decode(body, CompletionRequest)
    # the whole retry against that one read, in the same process (a ratio, not a bound in
    # seconds, so that a slow or busy machine reads alike): 0.06-0.1 of it now
    assert time.perf_counter() - start < plain_s / 3


def test_strict_decode_reads_large_exponents_in_untyped_fields_fast():
    """The first, strict decode of every body (api/body.py) read the floats of fields typed
    Any (`tools`) with msgspec's own parse: some 9 µs for 1e300, holding the GIL, so a 16 MB
    body of them held the event loop for about 23 s. Against msgspec's typed decode of the
    same body in the same process (a ratio, not seconds): some 0.06 of it now."""
    import time

    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.chat_request import ChatCompletionRequest

    body = (b'{"messages": [{"role": "user", "content": "a"}], "tools": ['
            + b",".join([b"1e300"] * 100_000) + b"]}")
    start = time.perf_counter()
    plain = msgspec.json.decode(body, type=ChatCompletionRequest)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    req = whole_floats.decode(body, ChatCompletionRequest)
    assert time.perf_counter() - start < plain_s / 3
    assert req.tools == plain.tools  # the same values, read by float()


@pytest.mark.parametrize("text", ["4.9e-324", "1e-320", "-0.0", "2.2250738585072014e-308",
                                  "1.7976931348623157e308", "1.7976931348623158e308",
                                  "0.1", "123456789012345678901234567890e-10"])
def test_untyped_floats_keep_msgspec_values(text):
    """float() of the text, as the strict decode reads an untyped float, is msgspec's own
    parse, sign of zero included (edges: subnormals, the greatest double, rounding)."""
    import math

    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.chat_request import ChatCompletionRequest

    body = (b'{"messages": [{"role": "user", "content": "a"}], "tools": ['
            + text.encode() + b"]}")
    got = whole_floats.decode(body, ChatCompletionRequest).tools[0]
    want = msgspec.json.decode(body, type=ChatCompletionRequest).tools[0]
    assert got == want and math.copysign(1, got) == math.copysign(1, want)


def test_an_untyped_number_out_of_range_is_named():
    """1e999 in a field typed Any: msgspec's "Number out of range" at its path, as the
    plain strict decode says, not a Raw or an infinity handed to the field."""
    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.chat_request import ChatCompletionRequest

    body = b'{"messages": [{"role": "user", "content": "a"}], "tools": [1.5, 1e999]}'
    with pytest.raises(msgspec.ValidationError,
                       match=r"^Number out of range - at `\$\.tools\[1\]`$"):
        whole_floats.decode(body, ChatCompletionRequest)


@pytest.mark.parametrize("field", ["n", "temperature", "seed"])
def test_a_number_out_of_range_after_a_whole_float_is_named(field):
    """1e999 (past a double) after a whole float: the retry read it as plain JSON, where
    msgspec refused it at `$[...]`, a path naming no field; it names the field, as the
    strict decode does without the whole float. (Read as infinity, it would be encoded
    again as null: the field's default, silently.)"""
    import msgspec

    from aiollm.api import whole_floats
    from aiollm.api.completion_request import CompletionRequest

    body = b'{"prompt": "Hi", "max_tokens": 2.0, "%s": -1e999}' % field.encode()
    with pytest.raises(msgspec.ValidationError) as e:
        whole_floats.decode(body, CompletionRequest)
    assert str(e.value) == f"Number out of range - at `$.{field}`"


# -- priority -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    (C, {"prompt": "Hi", "max_tokens": 1}), (CHAT, {"messages": HI, "max_tokens": 1})])
def test_priority_other_than_0_is_refused(server, path, body):
    """The server has no priority scheduling: a priority other than 0 is a 400 naming it,
    as vLLM answers unless it schedules by priority; it was ignored silently."""
    for value in (0, None, 0.0):
        status, _, raw = http(server, "POST", path, json={**body, "priority": value})
        assert status == 200, raw
    for value in (1, -5):
        msg = error_of(*http(server, "POST", path, json={**body, "priority": value})[::2],
                       "priority", path)
        assert "priority" in msg and "0" in msg, msg


# -- a prompt that fills the context -----------------------------------------------------------

def test_a_full_context_is_told_in_each_endpoints_fields(server):
    """A prompt of exactly max_model_len tokens leaves no room for output: the advice names
    what the endpoint takes. It told chat and /generate to send "max_tokens 0", which both
    refuse."""
    ids = list(range(1000, 1000 + MAX_MODEL_LEN))
    msg = error_of(*http(server, "POST", C, json={"prompt": ids, "max_tokens": 1})[::2],
                   "prompt")
    assert "max_tokens 0 with echo or prompt_logprobs" in msg, msg
    msg = error_of(*http(server, "POST", CHAT, json={
        "messages": [{"role": "user", "content": "hello " * 600}],
        "truncate_prompt_tokens": MAX_MODEL_LEN})[::2], "messages")
    assert "max_tokens" not in msg and "shorten the messages" in msg, msg
    msg = error_of(*http(server, "POST", G, json={"inputs": ids})[::2], "inputs", G)
    assert "max_new_tokens 0" not in msg and "max_tokens" not in msg, msg
    assert "shorten the inputs" in msg and "max_new_tokens" in msg, msg


def test_a_prompt_past_the_context_is_named_in_each_endpoints_fields(server):
    """A prompt past the context, or with max_tokens past what it leaves, is named as the
    endpoint takes it: chat's are its messages (the error's param "messages", as for every
    error about them), /generate's its inputs. Chat's messages were "the prompt" the client
    never sent. The param names the field to change there: the prompt's, or the length's."""
    long_chat = [{"role": "user", "content": "hello " * 600}]
    some_chat = [{"role": "user", "content": "hello " * 100}]
    for stream in (False, True):
        msg = error_of(*http(server, "POST", CHAT, json={
            "messages": long_chat, "max_tokens": 4, "stream": stream})[::2], "messages")
        assert msg.startswith("the messages (as the chat template renders them) have "), msg
        assert "prompt" not in msg, msg
        for field in ("max_tokens", "max_completion_tokens"):
            msg = error_of(*http(server, "POST", CHAT, json={
                "messages": some_chat, field: 500, "stream": stream})[::2], field)
            assert "in the messages, 500 for the output" in msg, msg
            assert "prompt" not in msg and f"lower {field} to" in msg, msg
    msg = error_of(*http(server, "POST", C, json={"prompt": "hello " * 600})[::2], "prompt")
    assert msg.startswith("the prompt has 601 tokens"), msg
    msg = error_of(*http(server, "POST", C, json={"prompt": "hello " * 100,
                                                  "max_tokens": 500})[::2], "max_tokens")
    assert "(101 in the prompt, 500 for the output)" in msg, msg
    msg = error_of(*http(server, "POST", G, json={"inputs": "hello " * 600})[::2], "inputs",
                   G)
    assert msg.startswith("the inputs have 601 tokens") and "prompt" not in msg, msg
    msg = error_of(*http(server, "POST", G, json={"inputs": "hello " * 100, "parameters": {
        "max_new_tokens": 500}})[::2], "parameters.max_new_tokens", G)
    assert "(101 in the inputs, 500 for the output)" in msg and "prompt" not in msg, msg


# -- malformed HTTP ----------------------------------------------------------------------------

async def raw_exchange(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return status_line


MALFORMED = [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\x01\x02 garbage\r\n\r\n",
]


def test_malformed_http_logs_one_short_line(server, caplog):
    """A request aiohttp cannot parse gets its 400, and the server's log one WARNING line
    without a traceback: it was an ERROR with a traceback, which any client could repeat to
    fill the log."""
    for data in MALFORMED:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            line = asyncio.run(raw_exchange(server.base, data))
            assert http(server, "GET", "/health")[0] == 200  # still serving, log written
        assert line.split()[1] == b"400", line
        logged = [r for r in caplog.records if r.name.startswith("aiohttp")]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert logged[0].levelno == logging.WARNING and not logged[0].exc_info, logged[0]
        assert len(logged[0].getMessage()) < 300, logged[0].getMessage()


def test_a_server_fault_still_logs_its_traceback(caplog):
    """The server log's change keeps a real fault (a handler's exception that reaches
    aiohttp: its 500) at ERROR with its traceback."""
    from aiollm.api.server import SERVER_LOG  # the logger serve() gives aiohttp

    async def fail(request: web.Request) -> web.Response:
        raise RuntimeError("a real fault")

    async def go() -> bytes:
        app = web.Application()
        app.router.add_get("/", fail)
        runner = web.AppRunner(app, logger=SERVER_LOG)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            return await raw_exchange(f"http://{host}:{port}",
                                      b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        line = asyncio.run(go())
    assert line.split()[1] == b"500", line
    logged = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR, logged
    assert logged[0].exc_info and "a real fault" in str(logged[0].exc_info[1])


# -- min_tokens past the context, with no length sent ----------------------------------------

@pytest.mark.parametrize("path, body, subject", [
    (CHAT, {"messages": HI, "min_tokens": MAX_MODEL_LEN}, "the messages"),
    (C, {"prompt": "Hi", "max_tokens": None, "min_tokens": MAX_MODEL_LEN}, "the prompt has"),
    (C, {"prompt": ["Hi", "Hello"], "max_tokens": None, "min_tokens": MAX_MODEL_LEN},
     "the prompt has"),
])
def test_min_tokens_past_the_context_names_what_the_client_sent(server, path, body, subject):
    """min_tokens more than the context leaves, with no max_tokens sent: the error names
    min_tokens and the context length, not a max_tokens the client never sent (chat and
    completions filled max_tokens with the context's room, and SamplingParams then said
    "min_tokens (512) must not exceed max_tokens (…)")."""
    status, _, raw = http(server, "POST", path, json=body)
    message = error_of(status, raw, "min_tokens")
    assert "max_tokens" not in message and "max_completion_tokens" not in message, message
    assert f"maximum context length is {MAX_MODEL_LEN}" in message and subject in message
    assert "lower min_tokens to at most" in message, message
    # a min_tokens the context holds still runs to at least that length
    status, _, raw = http(server, "POST", path, json={**body, "min_tokens": 3, "max_tokens": 4})
    assert status == 200, raw


def test_an_empty_prompt_of_no_tokens_is_refused(server):
    """The default tokenizer adds no BOS: "" encodes to no token, which vLLM refuses ("the
    decoder prompt cannot be empty"); a 400 naming the prompt (prompt[1] in a batch)."""
    for body, param in (({"prompt": ""}, "prompt"), ({"prompt": ["Hi", ""]}, "prompt[1]")):
        status, _, raw = http(server, "POST", C, json={**body, "max_tokens": 1})
        assert "no token" in error_of(status, raw, param)


# -- integers past any bound, hundreds of digits long ----------------------------------------

BIG = "1" + "0" * 400  # 10**400 as a JSON integer: 401 digits


@pytest.mark.parametrize("path, body, param", [
    (C, '{"prompt": "Hi", "max_tokens": %s}' % BIG, "max_tokens"),
    (C, '{"prompt": "Hi", "max_tokens": -%s}' % BIG, "max_tokens"),
    (C, '{"prompt": "Hi", "max_tokens": null, "min_tokens": %s}' % BIG, "min_tokens"),
    (C, '{"prompt": "Hi", "max_tokens": 4, "min_tokens": %s}' % BIG, "min_tokens"),
    (C, '{"prompt": "Hi", "seed": %s}' % BIG, "seed"),
    (C, '{"prompt": [1, %s]}' % BIG, "prompt"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": %s}'
     % BIG, "max_completion_tokens"),
    (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -%s}' % BIG,
     "max_tokens"),
    (G, '{"inputs": "Hi", "parameters": {"max_new_tokens": %s}}' % BIG,
     "parameters.max_new_tokens"),
])
def test_a_huge_integer_is_not_echoed_whole(server, path, body, param):
    """A JSON integer of 401 digits past a field's bound came back whole in the 400's
    message (max_tokens: the context length's message gave it twice, some 1 KB). The
    message names the field and its bound, and shows the value cut, with its length."""
    status, _, raw = http(server, "POST", path, data=body.encode(),
                          headers={"Content-Type": "application/json"})
    message = error_of(status, raw, param, path)
    assert len(message) < 400 and "(401 digits)" in message, message
    assert param.rsplit(".", 1)[-1] in message, message
