"""How LightLLM's routes answer a request they refuse: as LightLLM's HTTP server does, with
status 417 (Expectation Failed) where the other routes say 400, and a body whose top-level
"message" says why. LightLLM answers every failure of /generate, /generate_stream, POST /,
/tokens and /get_score so, {"message": ...} (503 for a busy server): its clients read the
message there. The OpenAI-style "error" object (type, param naming the field at fault, code)
stays beside it, as every route here answers it.

Other statuses stay as they are: 503 (overloaded, as LightLLM's busy server), 500 (an engine
failure), 404, 413, 415 (a Content-Encoding not decoded; any Content-Type is read as JSON
here, body.decode_body). A stream that fails after its first event (its status already 200)
ends with an event of the same body (stream_error).
"""

from __future__ import annotations

import functools

from aiohttp import web

from aiollm.api import sse
from aiollm.api.http_errors import ApiError, Handler, as_api_error, error_body, error_response

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


def stream_error(err: ApiError) -> bytes:
    """The last event of a LightLLM stream that `err` ended after its first event: the body a
    refused request gets ({"message": ..., "error": {...}}), as `data:{json}`. LightLLM's
    clients read the message at the top level there too."""
    body = {"message": err.message,
            **error_body(err.status, err.message, err.param, err.code, err.type)}
    return sse.event(body, prefix=b"data:")
