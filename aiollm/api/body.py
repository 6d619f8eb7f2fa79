"""Decoding of HTTP request bodies: the JSON body of a request into its msgspec Struct.

Owns the checks of the body as bytes, before any field is looked at: the Content-Type, a
body the client could not send whole, an empty one, a UTF-8 byte order mark, bytes that are
not UTF-8 or not JSON, and strings that escape a lone surrogate (named by their field).
The Structs themselves, and the rules of their fields, live in api/protocol.py.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec
from aiohttp import hdrs, web

from aiollm.api.http_errors import ApiError
from aiollm.engine.submission import check_unicode, off_loop
from aiollm.errors import InvalidRequest

T = TypeVar("T")


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """The JSON body of `request` decoded into `type_`; ApiError (400/415) when it is not one,
    InvalidRequest naming the field whose string holds a lone surrogate escape ("\\ud800").
    A UTF-8 byte order mark before the JSON is skipped, as Python's json (vLLM's and
    LightLLM's parser) skips it. aiohttp's reader raises 413 itself past the app's
    client_max_size."""
    ctype = request.headers.get(hdrs.CONTENT_TYPE)
    if ctype is not None and not _is_json(request.content_type):
        raise ApiError(415, f"Content-Type must be application/json, got {ctype!r}")
    try:
        body = await request.read()
    except web.RequestPayloadError as exc:  # the client's bytes, not the server, are at fault
        detail = getattr(exc.__cause__, "message", "") or str(exc)
        # the rest of the body cannot be read past, so aiohttp drops the connection after
        # the response: the response says so, or a client's pool sends its next request
        # on a connection being closed
        raise ApiError(400, f"request body could not be read: {detail}", close=True) from None
    body = body.removeprefix(_UTF8_BOM)  # a file saved by Windows tools starts with one
    if not body:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError:
        raise  # mapped with its field path by the error middleware
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not valid UTF-8") from None
        if _SURROGATE_ESCAPE.search(body):  # valid JSON syntax, but no text: name the field
            await off_loop(len(body), _check_surrogates, body)
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


_UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # msgspec's words for it vary


def _check_surrogates(body: bytes) -> None:
    """InvalidRequest naming the first field (`messages[0].content`, as msgspec's paths
    read) whose string holds a lone surrogate: JSON may escape one ("\\ud83d", a string cut
    inside an emoji by a UTF-16 client), but no text holds it. Returns when the body does
    not parse or holds none (the caller reports the JSON error then)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return

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
