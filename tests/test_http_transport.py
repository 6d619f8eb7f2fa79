"""The HTTP API below its JSON, through the real server (tests/live_server.py) and raw
sockets: clients that leave as soon as they have sent, and bodies in the encodings JSON may
come in."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import warnings

from live_server import LiveServer, http

C = "/v1/completions"
JSON = {"Content-Type": "application/json"}


def post(path: str, body: dict, *, version: str = "1.1", extra: str = "") -> bytes:
    """A POST of `body` as JSON, written as bytes."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


def exchange(srv: LiveServer, data: bytes, *, half_close: bool = False,
             timeout: float = 10.0) -> bytes:
    """All the server sends back to `data` until it closes the connection. half_close:
    the client shuts its write side once it has sent (a FIN, as `nc -N` sends)."""
    host, port = srv.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


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
