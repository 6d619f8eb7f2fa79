"""The HTTP API below its JSON, through the real server (tests/live_server.py) and raw
sockets: clients that leave as soon as they have sent, bodies in the encodings JSON may come
in, and bodies that stop arriving."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import socket
import stat
import struct
import time
import warnings

import pytest
from conftest import tiny_llama
from live_server import LiveServer, http, sse_events

C = "/v1/completions"
JSON = {"Content-Type": "application/json"}


def post(path: str, body: dict, *, version: str = "1.1", extra: str = "") -> bytes:
    """A POST of `body` as JSON, written as bytes."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


def exchange(srv: LiveServer, *parts: bytes, half_close: bool = False, pause: float = 0.0,
             timeout: float = 10.0) -> bytes:
    """What the server sends back to `parts`, sent `pause` seconds apart: until it closes the
    connection, or its first response is whole (its Content-Length read). half_close: the
    client shuts its write side once it has sent (a FIN, as `nc -N` sends)."""
    host, port = srv.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        for i, data in enumerate(parts):
            if i:
                time.sleep(pause)
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while not _whole(out) and (chunk := sock.recv(65536)):
            out += chunk
        return out


def _whole(raw: bytes) -> bool:
    """Whether `raw` holds a response head and the Content-Length bytes it announces."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(sep and length and len(body) >= int(length.group(1)))


def test_a_client_gone_before_its_choices_start_leaves_no_coroutine_unawaited(server):
    """A client that leaves while its handler submits its choices (here: it shuts its side
    right after sending, which ends the connection as uvicorn, vLLM's server, ends it too)
    cancels the choices before they start. Each completions choice wrapped the engine's
    generate() coroutine in another; cancelled before it ran, the wrapper dropped the inner
    one unawaited and Python warned 'coroutine EngineAPI.generate was never awaited' on the
    server's stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (1, 2):
            got = exchange(server, post(C, {"prompt": "hi", "max_tokens": 4, "n": n}),
                           half_close=True)
            assert got == b""  # the connection ended with its client, nothing was sent
        server.wait_idle()
        server.call(gc.collect)
    never = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert never == []


def test_json_bodies_in_utf16_and_utf32_are_read_as_python_reads_them(server):
    """JSON in UTF-16 or UTF-32, with a byte order mark or without (told by the zero bytes
    around the first character, as RFC 4627 tells them): Python's json reads it, and so do
    vLLM's and LightLLM's servers (Starlette's request.json()); a file Windows PowerShell
    5.1 saved with Out-File (UTF-16) and posted as it is was a 400 here, 'not valid UTF-8'
    or, without the mark, 'object keys must be strings'."""
    body = {"prompt": "héllo, 日本 🙂"}
    want = http(server, "POST", "/tokenize", json=body)
    assert want[0] == 200, want
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        data = json.dumps(body, ensure_ascii=False).encode(encoding)
        got = http(server, "POST", "/tokenize", data=data, headers=JSON)
        assert got[0] == 200 and json.loads(got[2]) == json.loads(want[2]), (encoding, got)
    completion = json.dumps({"prompt": "hi", "max_tokens": 1}).encode("utf-16")
    assert http(server, "POST", C, data=completion, headers=JSON)[0] == 200
    # UTF-16 that is not: a lone surrogate (a string cut inside an emoji)
    cut = "\ufeff".encode("utf-16-le") + '{"prompt": "'.encode("utf-16-le") + b"\x3d\xd8" \
        + '"}'.encode("utf-16-le")
    status, _, raw = http(server, "POST", "/tokenize", data=cut, headers=JSON)
    assert status == 400 and "UTF-16" in json.loads(raw)["error"]["message"], raw


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-be", "utf-8-sig", "utf-8"])
def test_a_body_that_is_no_json_is_told_where_as_sent(server, encoding):
    """Where a body stops being JSON is the byte of the body as the client sent it (its byte
    order mark and UTF-16 surrogate pairs counted), not of the UTF-8 copy without a mark that
    is parsed: the UTF-16 one here was told byte 24, where the client has it at byte 46, and
    a UTF-8 one with a mark (Windows Notepad's) 3 bytes before where it is."""
    text = '{"a": "\U0001F642", "prompt": x}'
    data = text.encode(encoding)
    at = len(text[:text.index("x")].encode(encoding))  # a mark too, for "utf-16", "utf-8-sig"
    status, _, raw = http(server, "POST", "/tokenize", data=data, headers=JSON)
    assert status == 400, raw
    assert json.loads(raw)["error"]["message"].endswith(f"(byte {at})"), (at, raw)


# -- bodies that stop arriving -----------------------------------------------------------------

BODY_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def impatient(tmp_path_factory) -> LiveServer:
    """A server that waits BODY_TIMEOUT seconds for the next bytes of a body: a tiny dummy
    model (its output is nonsense, but it is deterministic and hundreds of tokens a second on
    the CPU)."""
    path = tiny_llama(tmp_path_factory.mktemp("tiny"), vocab_size=256)
    srv = LiveServer(model=path, load_format="dummy", max_model_len=256, kv_tokens=512,
                     app_options={"body_timeout": BODY_TIMEOUT}).start()
    yield srv
    srv.close()


def answer(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """The status, headers and JSON body of the one response in `raw`."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, json.loads(body)


HEAD = (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")


def test_a_body_that_stops_arriving_is_408_and_closes(impatient):
    """A client that sends less than its Content-Length and then nothing held its handler and
    socket for as long as it kept the connection open: aiohttp reads a body without a
    timeout. After body_timeout seconds without a byte it gets a 408 with Connection: close
    (RFC 9110 15.5.9); aiohttp closes the connection once it has waited its lingering time
    (10 s) for the rest of the body, or at once when the client closes first."""
    start = time.monotonic()
    raw = exchange(impatient, HEAD + b"Content-Length: 100\r\n\r\n{\"prompt\"")
    waited = time.monotonic() - start
    status, headers, body = answer(raw)
    assert status == 408 and headers["Connection"] == "close", raw
    assert "request body" in body["error"]["message"], body
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + 5, waited


def test_a_chunked_body_that_breaks_after_it_started_is_answered(impatient):
    """A chunked body whose chunk size turns invalid in a later packet than the head: aiohttp's
    C parser (llhttp) drops the body's stream without an error, so the handler waited for
    the rest for ever and the client got no answer (the same bytes in one packet get
    aiohttp's own 400). It ends as a body that stopped arriving: a 408 and a close (aiohttp's
    pure-Python parser, AIOHTTP_NO_EXTENSIONS=1, reports the bad chunk: a 400 and a close)."""
    raw = exchange(impatient, HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n",
                   b"zz\r\n", pause=0.2)
    status, headers, body = answer(raw)
    assert status in (400, 408) and headers["Connection"] == "close", raw
    assert "request body" in body["error"]["message"], body


@pytest.mark.parametrize("path", [C, "/v1/chat/completions", "/generate"])
def test_a_client_gone_while_its_body_arrives_is_no_server_error(impatient, caplog, path):
    """A client that closes its connection while the server reads its body (an openai
    client's request cancelled as it is sent, a reset) is a disconnect, not a fault of the
    server: aiohttp cancels the handler, but Python 3.11's asyncio.wait_for, woken by the
    read's ConnectionResetError and the cancellation at once, raised the error and dropped
    the cancellation, and aiohttp logged it at ERROR with a traceback ('Error handling
    request') as a 500, one per such client."""
    host, port = impatient.base.removeprefix("http://").split(":")
    with caplog.at_level(logging.WARNING):
        for linger in (False, True):  # a FIN, then a reset (SO_LINGER 0)
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             "application/json\r\nContent-Length: 100\r\n\r\n{\"pro".encode())
                time.sleep(0.2)  # the handler waits for the rest of the body
                if linger:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            time.sleep(0.2)  # the server sees the connection end
        impatient.wait_idle()
    assert [r.getMessage() for r in caplog.records] == []
    status, _, body = http(impatient, "POST", "/tokenize", json={"prompt": "hi"})
    assert status == 200 and body


def test_a_slow_body_that_keeps_arriving_is_read(impatient):
    """The timeout is between two reads, not for the whole body: a body sent in pieces, the
    whole taking three times body_timeout, is served."""
    data = json.dumps({"prompt": "hello there"}).encode()
    pieces = [data[i:i + 4] for i in range(0, len(data), 4)]
    pause = 3 * BODY_TIMEOUT / len(pieces)
    raw = exchange(impatient, HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n"
                   % len(data), *pieces, pause=pause)
    status, _, body = answer(raw)
    assert status == 200 and body["count"] > 0, raw


# -- responses that stop being read ------------------------------------------------------------

def metric(srv: LiveServer, name: str) -> float:
    _, _, body = http(srv, "GET", "/metrics")
    return float(re.search(rf"^{name} (\S+)$", body.decode(), re.M).group(1))


def shrink_send_buffers(srv: LiveServer, size: int) -> None:
    """Set SO_SNDBUF on the server's listening socket, which the connections it accepts
    inherit (Linux): a client that stops reading then blocks the server's writes after a few
    KiB, not after the megabytes that the kernel's buffer autotuning allows on loopback."""
    port = int(srv.base.rsplit(":", 1)[1])
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:  # the listing's own descriptor, closed since
            continue
        with socket.socket(fileno=os.dup(fd)) as sock:
            if (sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[1] == port):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                return
    raise AssertionError(f"no listening socket on port {port}")


def dechunked(body: bytes) -> bytes:
    """A body sent with Transfer-Encoding: chunked, without its chunk sizes."""
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        out, body = out + body[:n], body[n + 2:]
    return out


@pytest.mark.parametrize("then", ["reads", "leaves"])
def test_a_stream_nobody_reads_ends_at_its_stop_string(impatient, then):
    """A streaming client that stops reading (its buffers full) blocked the handler's write,
    and with it the detokenizing and stop-string check that ran in the same task: the model
    generated on to max_tokens, holding its KV. Now the request ends at its stop string
    whatever the client does; only the bytes wait for it. Once it reads, the stream is whole;
    once it leaves instead, nothing is left behind."""
    shrink_send_buffers(impatient, 4096)
    # the first chunk (the echoed prompt, each token with 20 logprobs) fills the buffers
    prompt = list(range(40, 240))
    body = {"prompt": prompt, "max_tokens": 50, "temperature": 0, "ignore_eos": True}
    _, _, raw = http(impatient, "POST", C, json=body)
    text = json.loads(raw)["choices"][0]["text"]
    # a stop string that first appears a few tokens in (not U+FFFD: a token's part of a
    # character, whose text comes with the next token)
    stop = next(c for i, c in enumerate(text) if i >= 3 and c != "\ufffd" and text.index(c) == i)
    body.update(stop=[stop])
    _, _, raw = http(impatient, "POST", C, json=body)
    want = json.loads(raw)["choices"][0]
    assert want["finish_reason"] == "stop" and want["text"] == text[:text.find(stop)]

    idle = impatient.stats()["tasks"]
    generated = metric(impatient, "aiollm_generation_tokens_total")
    host, port = impatient.base.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect((host, int(port)))
        sock.sendall(post(C, {**body, "stream": True, "echo": True, "logprobs": 20}))
        deadline = time.monotonic() + 10
        while (metric(impatient, "aiollm_generation_tokens_total") == generated
               and time.monotonic() < deadline):
            time.sleep(0.01)  # until the request runs
        impatient.wait_idle(timeout=10)  # KV, slot and row given back, nothing read yet
        ran = metric(impatient, "aiollm_generation_tokens_total") - generated
        assert ran < body["max_tokens"] // 2, ran
        if then == "reads":
            sock.settimeout(10)
            # a window of 1 KiB from here on moved the stream's 120 KB in 80 s
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            raw = b""
            while not raw.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
                raw += chunk
            *chunks, done = [json.loads(e) if e != "[DONE]" else e
                             for e in sse_events(dechunked(raw.partition(b"\r\n\r\n")[2]))]
            assert done == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
            streamed = "".join(c["choices"][0]["text"] for c in chunks)
            assert streamed.endswith(want["text"])  # after the echoed prompt
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 5
    while impatient.stats()["tasks"] > idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert impatient.stats()["tasks"] <= idle
