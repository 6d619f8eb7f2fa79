"""Every failure leaves the server as an OpenAI-style error body:
{"error": {"message", "type", "param", "code"}}, whatever raised it (our validation, the engine,
aiohttp's router or body reader)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator

import msgspec
from aiohttp import web

from aiollm.api import validation_errors
from aiollm.errors import (ChatTemplateError, ContextExceeded, InvalidRequest, Overloaded,
                           RequestFailed)
from aiollm.sampling_params import SamplingParams

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what an overloaded server tells clients to wait
# what an unknown /v1/ route's 404 adds: the openai client's embeddings, audio, images, ...
# reach a server that serves none of them, and "no such route" alone did not say so
OPENAI_SERVED = ("; of OpenAI's API this server serves /v1/chat/completions, /v1/completions, "
                 "/v1/responses and /v1/models, for a model that generates text (no "
                 "embeddings, audio, images, moderations, files or batches)")
# the fields SamplingParams and the engine name in their errors
_ENGINE_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)} | {"prompt"}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "internal_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """An HTTP error with a message for the client; `param` names the field at fault;
    `type` the body's error type where it is not the status's (_TYPES: OpenAI's stored
    responses tell an unknown id as a 404 invalid_request_error); `close` ends the
    connection after the response (Connection: close), for a request whose bytes the
    server could not read to their end."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None,
                 close: bool = False, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}
        self.close = close


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None, type: str | None = None) -> dict:
    """OpenAI's error body; its type is `type`, else the one of `status` (_TYPES)."""
    return {"error": {"message": message,
                      "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(err: ApiError, message: bool = False) -> web.Response:
    """`err` as a response; message: its message at the body's top level too
    ({"message": ..., "error": {...}}), where LightLLM's clients read it."""
    body = error_body(err.status, err.message, err.param, err.code, err.type)
    if message:
        body = {"message": err.message, **body}
    resp = web.Response(
        status=err.status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        charset="utf-8",  # clients that honour only the header must not guess ISO-8859-1
        headers=err.headers,
    )
    if err.close:
        resp.force_close()  # aiohttp then writes Connection: close
    return resp


def as_api_error(exc: BaseException, request: web.Request | None = None) -> ApiError:
    """Maps an exception from the engine or from decoding to the error the client sees. Every
    500 is logged (an unexpected one with its traceback) and, given the `request` it failed,
    with that request's X-Request-Id, method and path, so a client's 500 can be found in the
    log."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, Overloaded):
        return ApiError(503, str(exc) or "server overloaded, retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, msgspec.ValidationError):
        message, param, code = validation_errors.describe(exc)
        return ApiError(400, message, param=param, code=code)
    if isinstance(exc, RequestFailed):  # the engine logged the cause; this names the request
        log.error("request %s failed: %s", _named(request), exc)
        return ApiError(500, str(exc) or "the request failed in the engine")
    if isinstance(exc, ChatTemplateError):  # the load warned of it; each request says it too
        log.error("request %s: %s", _named(request), exc)
        return ApiError(500, str(exc))
    log.exception("unexpected error while serving request %s", _named(request), exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}")


def _named(request: web.Request | None) -> str:
    """A request as the log names it: its X-Request-Id, method and path ("?" without one)."""
    if request is None:
        return "?"
    from aiollm.api.request_id import settled_id  # it raises our ApiError: no cycle at load
    return f"{settled_id(request)} ({request.method} {request.path})"


# a string value a message quotes as Python's repr() writes it (not an apostrophe: "model's")
_QUOTED = r"""(?<!\w)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?!\w)"""


@contextmanager
def param_names(names: dict[str, str]) -> Iterator[None]:
    """Report InvalidRequest errors under the field names the client used: SamplingParams and
    the engine name their own fields (max_tokens); an endpoint may call them otherwise
    (parameters.max_new_tokens). An error about a field the endpoint does not rename has the
    others its message mentions renamed too (min_tokens' quotes max_tokens); the endpoint's
    own errors (their param not an engine name) already speak the client's words."""
    try:
        yield
    except InvalidRequest as e:
        if e.param not in names and e.param not in _ENGINE_FIELDS:
            raise
        message = str(e)
        for name, theirs in names.items():  # also the other fields a message names
            if name != "prompt":  # the prompt's errors name it as context_told says
                # a quoted span is the client's own value (a stop string "logprobs"): as sent
                short = theirs.rsplit(".", 1)[-1]
                message = re.sub(rf"{_QUOTED}|\b{name}\b",
                                 lambda m, short=short: m.group(1) or short, message)
        raise InvalidRequest(message, param=names.get(e.param, e.param), code=e.code) from None


@contextmanager
def context_told(subject: str, prompt: str, advice: str) -> Iterator[None]:
    """A ContextExceeded raised in the block (a prompt past the context) told in the
    endpoint's words: `subject` names its prompt with its verb ("the messages have"),
    `prompt` names it alone ("the messages"), `advice` says what its client may change of
    a prompt that fills the context (the engine's advice, max_tokens 0 with
    prompt_logprobs, is refused where nothing is scored). Inside param_names and
    naming_batch_item, which keep the message as it is then."""
    try:
        yield
    except ContextExceeded as e:
        raise e.told(subject, prompt, advice) from None


def http_exception_error(exc: web.HTTPException, request: web.Request) -> ApiError:
    """aiohttp's HTTP exception `exc` (the router's 404 and 405 among them), raised while
    serving `request`, as the error the client sees: its status, its Allow and Retry-After
    headers, a message that says why."""
    status = exc.status
    if status == 404:
        message = f"no such route: {request.method} {request.path}"
        if request.path.startswith("/v1/"):  # an OpenAI client's call of a route not served
            message += OPENAI_SERVED
    elif status == 405:
        message = f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    elif status == 413:
        message = f"request body too large: {exc.text}"
    else:
        message = exc.text or exc.reason
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    return ApiError(status, message, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(http_exception_error(exc, request))
    except OSError as exc:  # ConnectionResetError among them
        if request.transport is None or request.transport.is_closing():
            # The client went away; nobody is left to read an error. aiohttp cancels the
            # handler then (serve's handler_cancellation), but Python 3.11's wait_for,
            # woken by the body read's ConnectionResetError and the cancellation at once,
            # raises the error and drops the cancellation: raised on, aiohttp logged it at
            # ERROR with a traceback as a 500 nobody reads. It ends as cancelled, quietly.
            log.debug("client disconnected: %s", exc)
            raise asyncio.CancelledError() from exc
        if isinstance(exc, ConnectionResetError):  # a write the client reset: gone too
            log.debug("client disconnected: %s", exc)
            raise
        # the server's own (too many open files, a TimeoutError): re-raised, aiohttp
        # answered its text/plain 500 (504) and logged no request id
        return error_response(as_api_error(exc, request))
    except Exception as exc:  # noqa: BLE001 - the edge: every error becomes a response
        return error_response(as_api_error(exc, request))
