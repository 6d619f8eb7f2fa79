"""Server-Sent Events: one `data: {json}\\n\\n` per event on a StreamResponse."""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import AsyncIterator, Callable, TypeVar

import msgspec
from aiohttp import web

from aiollm.api.http_errors import ApiError, as_api_error, error_body

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()

DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def event(obj: object, *, prefix: bytes = b"data: ") -> bytes:
    """One SSE event. OpenAI writes `data: `, LightLLM `data:` (clients strip either)."""
    return prefix + _encode(obj) + b"\n\n"


async def start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",  # requests' iter_lines reads it
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # proxies must not hold events back
    })
    await resp.prepare(request)
    return resp


async def send(request: web.Request, events: AsyncIterator[T],
               render: Callable[[T], bytes], tail: Callable[[], bytes],
               prefix: bytes = b"data: ",
               on_error: Callable[[ApiError], bytes] | None = None) -> web.StreamResponse:
    """Streams `events` as SSE: render(item) per event (b"" sends nothing), then tail() at
    the end. A failure after the response started is sent as on_error renders it (by
    default an OpenAI error body as the event's data).

    The first event is awaited before the response starts, so failures that come before any
    output still get their HTTP status. `events` is always closed on the way out, which aborts
    the engine requests behind it when the client has gone.
    """
    async with aclosing(events):  # type: ignore[type-var]
        item = await anext(events, _END)  # type: ignore[call-overload]
        resp = await start(request)
        try:
            while item is not _END:
                data = render(item)  # type: ignore[arg-type]
                if data:  # b"": nothing to say for this item
                    await resp.write(data)
                item = await anext(events, _END)  # type: ignore[call-overload]
            await resp.write(tail())
        except ConnectionResetError:
            log.debug("client left mid-stream: %s %s", request.method, request.path)
        except Exception as exc:  # noqa: BLE001 - the status is sent; report in the stream
            err = as_api_error(exc, request)
            try:
                await resp.write(on_error(err) if on_error is not None else event(
                    error_body(err.status, err.message, err.param, err.code, err.type),
                    prefix=prefix))
            except ConnectionResetError:
                pass
    return resp
