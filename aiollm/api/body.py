"""Decoding of HTTP request bodies: the JSON body of a request into its msgspec Struct.

Owns the checks of the body as bytes, before any field is looked at: an `Expect:
100-continue` whose body would be too large (expect_continue), the Content-Type, a
body the client could not send whole or that stopped arriving (408), its content coding
(gzip and deflate are decoded here, not by aiohttp: see decode_body; any other is a 415),
an empty body (or one of whitespace alone), a UTF-8 byte order mark, JSON in UTF-16 or
UTF-32 (read as UTF-8), bytes that are not UTF-8 or not JSON, and strings that escape a
lone surrogate (named by their field). An integer field sent as a whole float (256.0) is
taken as vLLM takes it (api/whole_floats.py); fields the body's Struct does not know are
served as if left out, and named in the log (api/unknown_fields.py).
The Structs themselves, and the rules of their fields, live in api/protocol.py and the
files it names.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any, TypeVar

import msgspec
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from aiollm.api import unknown_fields, whole_floats
from aiollm.api.http_errors import ApiError, error_response
from aiollm.api.state import state
from aiollm.engine.submission import check_unicode, off_loop
from aiollm.errors import InvalidRequest

T = TypeVar("T")


async def decode_body(request: web.Request, type_: type[T],
                      any_content_type: bool = False) -> T:
    """The JSON body of `request` decoded into `type_`; ApiError (400/415) when it is not one
    (415: a Content-Type not JSON, unless `any_content_type`, or none, with an Origin CORS
    does not allow; a Content-Encoding not gzip, deflate or identity),
    InvalidRequest naming the field whose string holds a lone surrogate escape ("\\ud800").
    A UTF-8 byte order mark before the JSON is skipped, and JSON in UTF-16 or UTF-32 is
    read (400 when its bytes are not that encoding), as Python's json (vLLM's and
    LightLLM's parser) reads them. A body past the app's client_max_size is a 413, before
    or after its content coding is decoded; one whose next bytes do not come within the
    app's body_timeout seconds a 408 (see _read).

    A gzip or deflate body (Content-Encoding) is decoded here, so the server must hand
    bodies over as sent (aiohttp's auto_decompress=False, as serve() runs it): aiohttp's
    own decoding fails inside its parser, where a body that is not the gzip it claims
    left aiohttp draining the broken body after our 400 and logging the client's fault as
    an "Unhandled exception" with a traceback.

    `any_content_type` is for LightLLM's routes: LightLLM parses every body as JSON whatever
    its Content-Type, so `curl -d '{"inputs": ...}'` (sent as a form) is served there.
    A request with an `Origin` header (a browser's page, "null" from a sandboxed frame or a
    file) that CORS does not allow needs a JSON Content-Type on every route, whatever
    `any_content_type` says: a POST with a form's or text/plain's Content-Type, or with none
    (a page's fetch() of an ArrayBuffer or untyped Blob), is one a page of any site may send
    without a CORS preflight, so only a JSON Content-Type, which needs the preflight that
    CORS (off by default) refuses, lets a page drive the server. An origin CORS allows
    (--allowed-origins) with the request's method (--allowed-methods: a method outside it
    has its preflight refused) may drive it anyway: its requests are read as those without
    an Origin (curl, the SDKs), a body without a Content-Type as JSON (and any type on
    LightLLM's routes: a page's fetch() of JSON.stringify(...) sends text/plain)."""
    ctype = request.headers.get(hdrs.CONTENT_TYPE)
    check_page(request)
    if ctype is not None and not any_content_type and not _is_json(request.content_type):
        raise ApiError(415, f"Content-Type must be application/json, got {ctype!r}")
    coding = _content_coding(request)
    try:
        body = await _read(request, state(request).body_timeout)
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # the client's bytes, not the server, are at fault: aiohttp's C parser reports a
        # broken body as RequestPayloadError, its pure-Python one (AIOHTTP_NO_EXTENSIONS=1,
        # platforms without the C extension) a bad chunk as the parser's own error
        detail = (getattr(exc.__cause__, "message", "") or getattr(exc, "message", "")
                  or str(exc))
        # the rest of the body cannot be read past, so aiohttp drops the connection after
        # the response: the response says so, or a client's pool sends its next request
        # on a connection being closed
        raise ApiError(400, f"request body could not be read: {detail}", close=True) from None
    if coding is not None:  # a compressed body is small: its size is no measure of the work
        body = await off_loop(len(body), _decoded, body, coding, request.client_max_size)
    encoding = json.detect_encoding(body)  # "utf-8-sig": UTF-8 after a byte order mark
    if encoding not in ("utf-8", "utf-8-sig"):
        body = await off_loop(len(body), _as_utf8, body, encoding)
    body = body.removeprefix(_UTF8_BOM)  # a file saved by Windows tools starts with one
    if not body.strip(_JSON_WHITESPACE):  # whitespace alone holds no value, cut or not
        raise ApiError(400, "request body is empty; expected a JSON object")
    once = await _decoded_once(body, type_)
    if once is not None:
        value, found = once
        unknown_fields.warn(request, found)  # served as if left out, and named
        return value
    # refused: decoded by the typed decode, which names the first field at fault in the
    # body's order as msgspec reads it
    try:
        value = await _typed(body, type_)
    except msgspec.ValidationError as exc:
        # msgspec checks types as it reads, so a type error may come before the bytes that
        # make the body no JSON at all ("[1,2", a brace missing after a wrong type): the
        # client is told what to fix first, that the JSON is broken
        error: Exception = _syntax_error(body) or exc
        if error is exc:
            raise  # mapped with its field path by the error middleware
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        error = exc
    else:
        await unknown_fields.warn_unknown(request, body, type_)
        return value
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    if _SURROGATE_ESCAPE.search(body):  # valid JSON syntax, but no text: name the field
        await off_loop(len(body), _check_surrogates, body)
    # a form's fields sent to a route that reads any Content-Type (curl -d a=b, -F a=b)
    sent_as = ("" if ctype is None or _is_json(request.content_type) else
               f" (it is read as JSON whatever its Content-Type, here {request.content_type})")
    raise ApiError(400, f"request body is not valid JSON{sent_as}: "
                        f"{_why(error, body, encoding)}") from None


def check_page(request: web.Request) -> None:
    """ApiError 415 when `request` has an Origin CORS does not allow with its method (a
    browser's page of another site) and a Content-Type not JSON, or none: such a POST needs
    no CORS preflight, so any site could send it (see decode_body). For a route that reads no
    body (POST /flush_cache) as for one that does."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or state(request).allows_origin(origin, request.method):
        return
    if not _is_json(request.content_type):  # (no Content-Type: octet-stream)
        ctype = request.headers.get(hdrs.CONTENT_TYPE)
        got = repr(ctype) if ctype is not None else "none"
        raise ApiError(415, "Content-Type must be application/json on a request with an "
                       f"Origin CORS does not allow (a browser's page), got {got}")


async def _decoded_once(body: bytes, type_: type[T]) -> tuple[T, tuple[list[str], int]] | None:
    """`body` (UTF-8 JSON) decoded once into `type_`, with its unknown fields
    (unknown_fields.unknown_in); on a worker thread when its decode is not cheap
    (unknown_fields.inline: a body past 1 MiB, or of many keys). None when msgspec refuses
    it or it runs out of recursion: the caller decodes it as before for the error, so
    every refusal stays as it was. Whole floats are taken here too, and a key named twice
    has its last value alone checked (whole_floats.plain_and_typed). It was decoded twice: into
    its Struct on the loop, then as raw values for the unknown fields."""
    def decode() -> tuple[T, tuple[list[str], int]] | None:
        try:
            plain, value = whole_floats.plain_and_typed(body, type_)
            return value, unknown_fields.unknown_in(plain, type_)
        except Exception:  # noqa: BLE001 - the caller's decode raises it as it did
            return None

    if unknown_fields.inline(body):
        return decode()
    return await asyncio.to_thread(decode)


async def _typed(body: bytes, type_: type[T]) -> T:
    """`body`, UTF-8 JSON, decoded into `type_`: msgspec's errors as it raises them, of the
    values the body keeps (a key named twice: its last, as _decoded_once reads it), whole
    floats taken (whole_floats.decode_kept); off the loop when it is large."""
    return await off_loop(len(body), whole_floats.decode_kept, body, type_)


async def expect_continue(request: web.Request, message: bool = False
                          ) -> web.StreamResponse | None:
    """The API routes' answer to an `Expect` header (aiohttp calls it before the handler
    and its middlewares). `100-continue` with a Content-Length past the app's
    client_max_size gets its 413 at once, as RFC 9110 (10.1.1) asks of a request refused
    on its header fields alone: aiohttp's own handler said 100 Continue to any size, and
    the client (curl, for bodies past 1 MB) sent megabytes only to be refused. Otherwise
    100 Continue, as aiohttp's handler says it; another expectation is a 417. message: the
    refusal's message at its body's top level too (error_response's; LightLLM's routes)."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:  # HTTP/1.0 has no 100 (Continue)
        return None
    if expect.lower() != "100-continue":
        return error_response(ApiError(417, f"unknown Expect: {expect!r}; only 100-continue "
                                            "is served"), message)
    size, limit = request.content_length, request.client_max_size
    if size is not None and size > limit:
        # the body is never read: the connection cannot be reused past it
        return error_response(ApiError(413, f"request body too large: Content-Length {size} "
                                            f"is more than the {limit} bytes allowed",
                                       close=True), message)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is no part of the response's size
    return None


async def _read(request: web.Request, idle_timeout: float) -> bytes:
    """The body of `request` as sent; ApiError 413 past its client_max_size (with
    Connection: close: the rest is not read), 408 (with Connection: close, as RFC 9110
    15.5.9 asks) when `idle_timeout` seconds pass without its next bytes. aiohttp reads a
    body without a timeout, so a client that sent less than its Content-Length held its
    handler and socket for as long as it kept the connection open; so did a chunked body
    whose chunk size turns invalid in a later packet than its head, whose stream aiohttp's C
    parser (llhttp) drops without an error. Between two reads, not for the whole body
    (nginx's client_body_timeout): a large body on a slow link keeps arriving."""
    limit = request.client_max_size
    chunks: list[bytes] = []
    size = 0
    while True:
        try:  # (asyncio.timeout would spare a task per read; it needs Python 3.11)
            chunk = await asyncio.wait_for(request.content.readany(), idle_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"request body incomplete: no bytes of it came for "
                                f"{idle_timeout:g} s (received {size})", close=True) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            # the rest of the body is not read: Connection: close, as for the 408 (aiohttp
            # still drains what comes within its lingering time, so the client is not reset
            # before it reads the answer); a connection kept open would take what the
            # client sent next as part of a body
            raise ApiError(413, f"request body too large: more than the {limit} bytes "
                                "allowed", close=True)
        chunks.append(chunk)


def _syntax_error(body: bytes) -> msgspec.DecodeError | None:
    """Why `body` is no JSON at all, None when it is JSON: a scan that builds no objects
    (msgspec skips a Raw value, checking its syntax: milliseconds for megabytes)."""
    try:
        msgspec.json.decode(body, type=msgspec.Raw)
    except RecursionError:
        return None  # well formed as far as it goes; the typed decode said what is wrong
    except msgspec.DecodeError as exc:
        return exc
    return None


def _why(exc: Exception, body: bytes, sent_as: str) -> str:
    """msgspec's reason `body` is no JSON, as the rest of a sentence; where it failed (the
    byte) when msgspec says, counted in the body as sent: `sent_as` names the encoding it
    came in, as json.detect_encoding names them ("utf-8-sig" for UTF-8 after a byte order
    mark), `body` being its UTF-8 copy without a mark."""
    text = str(exc)
    if text == "Input data was truncated":
        return "it ends before its JSON value does (cut short, or a closing bracket missing)"
    if sent_as != "utf-8":  # msgspec counts the bytes of our UTF-8 copy
        text = _BYTE.sub(lambda m: f"(byte {_sent_byte(body, int(m[1]), sent_as)})", text)
    return text.removeprefix("JSON is malformed: ")


def _sent_byte(body: bytes, offset: int, encoding: str) -> int:
    """Where byte `offset` of `body`, the UTF-8 copy without a mark of a body sent in
    `encoding` (as json.detect_encoding names them), is in the body as sent: its characters
    before that byte re-counted in `encoding`, a byte order mark (utf-8-sig, utf-16,
    utf-32) too."""
    if encoding.startswith("utf-8"):
        size = offset
    elif encoding.startswith("utf-32"):
        size = 4 * len(body[:offset].decode("utf-8", "ignore"))
    else:  # 2 bytes a character, 4 for one past U+FFFF (a surrogate pair)
        size = len(body[:offset].decode("utf-8", "ignore").encode("utf-16-le"))
    mark = {"utf-8-sig": 3, "utf-16": 2, "utf-32": 4}.get(encoding, 0)
    return mark + size


_UTF8_BOM = b"\xef\xbb\xbf"
_BYTE = re.compile(r"\(byte (\d+)\)")  # where msgspec says a body stops being JSON
_JSON_WHITESPACE = b" \t\r\n"  # RFC 8259's; bytes.strip() would take \v and \f too
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # msgspec's words for it vary

# the content codings decoded (RFC 9110 8.4.1), as zlib's wbits: gzip, and x-gzip, its old
# name, which RFC 9110 asks recipients to take as gzip; deflate is the zlib format
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
            "deflate": zlib.MAX_WBITS}
_ACCEPTED = ("gzip", "deflate")  # as a 415 names them


def _content_coding(request: web.Request) -> str | None:
    """The content coding of the body to undo (a name in _CODINGS), None for none (no
    Content-Encoding, or identity); ApiError 415 for any other, and for more than one,
    with Accept-Encoding naming the codings decoded (RFC 9110 12.5.3, 15.5.16): br, zstd
    or compress must not be taken as JSON, nor reach aiohttp's decoders, whose refusal is
    plain text."""
    values = request.headers.getall(hdrs.CONTENT_ENCODING, ())
    codings = [c for c in (c.strip().lower() for v in values for c in v.split(","))
               if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _CODINGS:
        return codings[0]
    raise ApiError(415, f"Content-Encoding {', '.join(values)!r} is not supported: send the "
                        f"body as it is, or with Content-Encoding {' or '.join(_ACCEPTED)}",
                   headers={hdrs.ACCEPT_ENCODING: ", ".join(_ACCEPTED)})


def _decoded(body: bytes, coding: str, limit: int) -> bytes:
    """`body` decoded from `coding`; ApiError 400 when it is not that coding's data (or
    holds more after it), 413 when it decodes to more than `limit` bytes (a small body
    may decode to a huge one: it is never decoded past the limit)."""
    wbits = _CODINGS[coding]
    if coding == "deflate" and body and body[0] & 0x0F != 8:
        # no zlib header (its first byte's low bits say deflate): raw deflate data, which
        # some clients send as deflate; aiohttp's decoder took it too
        wbits = -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    header = f"Content-Encoding: {coding}"
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"request body is not the {coding} data its header {header} "
                            f"says it is: {exc}") from None
    if len(out) > limit:
        raise ApiError(413, f"request body too large: it decodes ({header}) to more than "
                            f"{limit} bytes")
    if body and not decoder.eof:
        raise ApiError(400, f"request body is cut short: its {coding} data ({header}) "
                            "is incomplete")
    if decoder.unused_data:
        raise ApiError(400, f"request body holds {len(decoder.unused_data)} bytes after its "
                            f"{coding} data ({header})")
    return out


def _as_utf8(body: bytes, encoding: str) -> bytes:
    """`body`, JSON in `encoding` (UTF-16 or UTF-32, as json.detect_encoding tells them: by a
    byte order mark, or by the zero bytes around the first character, RFC 4627 3), as
    UTF-8; ApiError 400 when its bytes are not that encoding (a lone surrogate). vLLM and
    LightLLM read such bodies (Starlette's request.json() is json.loads of the bytes), and
    Windows PowerShell 5.1's Out-File writes UTF-16: a file it saved, posted as it is.
    The copy may be up to 1.5 times the body (U+0800 to U+FFFF: 2 bytes in UTF-16, 3 in
    UTF-8) and client_max_size is not applied to it: the limit is on the bytes received, a
    bounded growth is no decompression bomb, and the body holds at most half as many
    characters (what the work after depends on) as a UTF-8 body of its size may."""
    try:
        return body.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid {encoding.upper()}: {exc.reason} at "
                            f"byte {exc.start}") from None


def _check_surrogates(body: bytes) -> None:
    """InvalidRequest naming the first field (`messages[0].content`, as msgspec's paths
    read) whose string holds a lone surrogate: JSON may escape one ("\\ud83d", a string cut
    inside an emoji by a UTF-16 client), but no text holds it. Returns when the body does
    not parse or holds none (the caller reports the JSON error then)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(value, dict):
        # a body that is no object is refused as such, as msgspec refuses one without a
        # surrogate; its surrogate named "the request body" as if that were a field (param)
        got = "a string" if isinstance(value, str) else "an array"  # (what holds a string)
        raise ApiError(400, f"request body: expected an object, got {got}")

    def walk(v: Any, path: str) -> None:
        if isinstance(v, str):
            check_unicode(v, path or "the request body")
        elif isinstance(v, dict):
            for k, item in v.items():
                try:
                    check_unicode(k, "key")
                except InvalidRequest as e:  # a key is no field: its object is named
                    raise InvalidRequest(f"a key of {path or 'the request body'}"
                                         f"{str(e).removeprefix('key')}",
                                         param=path or None) from None
                walk(item, f"{path}.{k}" if path else k)
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, f"{path}[{i}]")

    try:
        walk(value, "")
    except RecursionError:  # as deep as json allows, deeper than our frames left
        return


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")
