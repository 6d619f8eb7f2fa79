"""Request ids: one per HTTP request, sent back in its `X-Request-Id` response header (which
the openai SDK reads as `response._request_id`, as OpenAI sends it on every response) and
in the `id` of a completion (`chatcmpl-<id>`, `cmpl-<id>`), so that a client, a proxy's log
and the server's access log name a request alike. Not in a Response's id (/v1/responses),
which is the key of a kept response and so the server's own (responses_output.ResponseHead).

The id is the client's, as vLLM takes it: the request's `X-Request-Id` header, else the
body's `request_id` field (vLLM's, on /v1/completions and /v1/chat/completions), else a
fresh uuid4 in hex. It is a label: the engine keys its requests by its own counter, so two
requests sent with the same id both run, each to its own answer. vLLM sends the header
only with --enable-request-id-headers (its middleware wraps every ASGI message, a cost at
high rates); here it is one header set as a response is prepared, so it is always sent,
and the flag is accepted as changing nothing (vllm_flags.NO_EFFECT).

An id travels in a header, so it is 1 to MAX_CHARS printable ASCII characters; any other
value of the header or the field is a 400 naming it (an id with a line break would have
made the response's own header invalid).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from aiollm.api.http_errors import ApiError
from aiollm.errors import InvalidRequest

HEADER = "X-Request-Id"
MAX_CHARS = 512  # a trace id is 32 to 55; the header line stays well within clients' limits
_KEY = web.RequestKey("aiollm_request_id", str)  # where the request keeps its id


def request_id(request: web.Request, body_id: str | None = None) -> str:
    """The id of `request`: its X-Request-Id header, else `body_id` (a body's request_id
    field, checked: InvalidRequest naming it), else a fresh one; the same on each call, the
    first call fixing it (a handler calls this with the body's field before the response
    is prepared). ApiError 400 for a header that is no id."""
    rid = request.get(_KEY)
    if rid is None:
        given = request.headers.get(HEADER)
        if given is not None:
            _check(given, f"the {HEADER} header", None)
            rid = given
        elif body_id is not None:
            _check(body_id, "request_id", "request_id")
            rid = body_id
        else:
            rid = uuid.uuid4().hex
        request[_KEY] = rid
    return rid


def _check(value: str, what: str, param: str | None) -> None:
    if 0 < len(value) <= MAX_CHARS and value.isascii() and value.isprintable():
        return
    message = (f"{what} must be 1 to {MAX_CHARS} printable ASCII characters (it is sent back "
               f"in the {HEADER} response header), got {value[:64]!r}"
               f"{'...' if len(value) > 64 else ''}")
    if param is None:  # a header: no field of the body to name
        raise ApiError(400, message)
    raise InvalidRequest(message, param=param)


def settled_id(request: web.Request) -> str:
    """The id `request`'s response carries, never raising: request_id(), else (its header was
    refused) a fresh one, fixed for the response and for the log line naming it."""
    try:
        return request_id(request)
    except ApiError:
        rid = request[_KEY] = uuid.uuid4().hex
        return rid


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response carries its request's id, errors included (one
    whose header was refused carries a fresh id)."""
    response.headers[HEADER] = settled_id(request)
