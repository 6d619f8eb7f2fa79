"""How LightLLM's routes answer a request they refuse: as LightLLM's HTTP server does, with
status 417 (Expectation Failed) where the other routes say 400, and a body whose top-level
"message" says why. LightLLM answers every failure of /generate, /generate_stream, POST /,
/tokens and /get_score so, {"message": ...} (503 for a busy server): its clients read the
message there. The OpenAI-style "error" object (type, param naming the field at fault, code)
stays beside it, as every route here answers it.

A wrong method on one of these routes (aiohttp's router answers it, before any handler) is
a 405 with its Allow header and the same body (lightllm_http_errors); so is a request
without the API key's 401 (lightllm_path: api_keys.py's key check).

Other statuses stay as they are: 503 (overloaded, as LightLLM's busy server), 500 (an engine
failure), 404, 413, 415 (a Content-Encoding not decoded; any Content-Type is read as JSON
here, body.decode_body). A stream that fails after its first event (its status already 200)
ends with an event of the same body (stream_error).
"""

from __future__ import annotations

import functools

from aiohttp import web

from aiollm.api import sse
from aiollm.api.http_errors import (ApiError, Handler, as_api_error, error_body, error_response,
                                    http_exception_error)

REFUSED = 417  # LightLLM's status for a request it cannot serve as sent
_MARK = "_aiollm_lightllm_errors"  # set on the handlers lightllm_errors makes


def lightllm_errors(handler: Handler) -> Handler:
    """`handler` with its failures answered as LightLLM answers them (the module's
    docstring). A client that went away (OSError) and aiohttp's own HTTP exceptions go on to
    error_middleware, as from any route."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - the edge: every error becomes a response
            err = as_api_error(exc, request)
            if err.status == 400:
                err = ApiError(REFUSED, err.message, param=err.param, code=err.code,
                               headers=err.headers, close=err.close)
            return error_response(err, message=True)

    setattr(handle, _MARK, True)
    return handle


def answers_as_lightllm(handler: object) -> bool:
    """Whether `handler` (a route's) answers failures as LightLLM does (lightllm_errors):
    for the refusals made before it runs (the expect handler's 413), which say so too."""
    return getattr(handler, _MARK, False)


@web.middleware
async def lightllm_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's HTTP errors at the path of one of LightLLM's routes (the router's 405 for a
    wrong method: GET /generate) answered with LightLLM's top-level message beside the
    error object, as the route answers its own refusals; its Allow header kept. Elsewhere
    (the OpenAI routes, unknown paths, which belong to no family) they go on to
    error_middleware."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not lightllm_path(request):
            raise
        return error_response(http_exception_error(exc, request), message=True)


def lightllm_path(request: web.Request) -> bool:
    """Whether `request.path` is the path of a route that answers as LightLLM, by any
    method (the router tells a 405 no route: its path is looked up among the app's), for
    the refusals made before its handler runs (the router's 405, the API key's 401)."""
    for resource in request.app.router.resources():
        if resource.get_info().get("path") == request.path:
            return any(answers_as_lightllm(route.handler) for route in resource)
    return False


def stream_error(err: ApiError) -> bytes:
    """The last event of a LightLLM stream that `err` ended after its first event: the body a
    refused request gets ({"message": ..., "error": {...}}), as `data:{json}`. LightLLM's
    clients read the message at the top level there too."""
    body = {"message": err.message,
            **error_body(err.status, err.message, err.param, err.code, err.type)}
    return sse.event(body, prefix=b"data:")
