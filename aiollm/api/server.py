"""The aiohttp app: routes, error handling, the engine's lifetime, graceful shutdown; the
API key's check is api_keys.py's.

One event loop runs it all: the app's handlers, the engine's scheduler and model loop.
`create_app` builds the app around an Engine; the app starts the engine (loads the model)
when it starts and stops it when it is cleaned up. `serve` runs the app until SIGINT/SIGTERM
(or a given event) and then shuts down gracefully: stop accepting, let in-flight requests
finish within shutdown_timeout (a second signal: at once), abort the rest.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from aiollm.api import lightllm, lightllm_routes, openai, ops
from aiollm.api.api_keys import auth_middleware, expect_handler, key_check
from aiollm.api.chat_request import TRUST_PARAM
from aiollm.api.cors import CorsOptions, enable_cors
from aiollm.api.http_errors import error_middleware
from aiollm.api.lightllm_errors import lightllm_http_errors
from aiollm.api.listening import check_bindable, listening_site
from aiollm.api.request_id import HEADER as REQUEST_ID_HEADER
from aiollm.api.request_id import send_request_id
from aiollm.api.response_store import ResponseStore
from aiollm.api.state import BODY_TIMEOUT_S, STATE, ApiState
from aiollm.config import (MAX_STORED_RESPONSE_BYTES, MAX_STORED_RESPONSES,
                           check_shutdown_timeout)
from aiollm.engine.content_format import PARAM as CONTENT_FORMAT_PARAM
from aiollm.engine.content_format import check_content_format, log_served_format
from aiollm.engine.served_format import check_served_format
from aiollm.stop_signal import Terminated

if TYPE_CHECKING:
    from aiollm.engine import Engine

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20  # larger bodies get 413; a full-context prompt is far smaller
# Request head limits (aiohttp's parser answers 400 past them, before any handler runs):
# one header line, the number of header lines.
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADERS = 128


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server log (aiohttp.server), as serve() hands it to aiohttp. A request its
    parser cannot read (a bad Content-Length, a header line past MAX_HEADER_LINE_BYTES, bytes
    that are no HTTP) is the client's fault, which aiohttp answers with a 400 and logged at
    ERROR with a traceback: any client could fill the log. It is one WARNING line here, as
    uvicorn (vLLM's server) logs an invalid request; anything else aiohttp logs as an
    exception (a fault of the server, its 500) keeps its level and traceback."""

    def exception(self, msg: object, *args: object, exc_info: object = True,
                  **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = " ".join(str(exc_info.message).split())[:200]  # one line, however sent
            self.warning("%s: malformed HTTP, answered 400: %s", str(msg) % args, reason)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_LOG = _ServerLog(server_logger)


def create_app(engine: Engine, *, api_key: str | Sequence[str] | None = None,
               served_model_name: str | Sequence[str] | None = None,
               any_model: bool = False,
               shutdown_timeout: float = 30.0, max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout: float = BODY_TIMEOUT_S,
               cors: CorsOptions | None = None,
               trust_request_chat_template: bool = False,
               trust_request_chat_template_name: str = TRUST_PARAM,
               chat_template_content_format: str = "auto",
               content_format_name: str = CONTENT_FORMAT_PARAM,
               response_role: str = "assistant",
               return_tokens_as_token_ids: bool = False,
               max_stored_responses: int = MAX_STORED_RESPONSES,
               max_stored_response_bytes: int = MAX_STORED_RESPONSE_BYTES) -> web.Application:
    """The HTTP app around `engine` (not yet started: the app starts and stops it). Browsers
    may call it from other origins only as `cors` allows (None: from none, CORS off).
    api_key: the key every route but the probes, metrics and version needs, or several
    (vLLM's --api-key k1 k2): a request may send any; None or none: no auth.
    Run it as serve() does, with aiohttp's auto_decompress off: api/body.py decodes the
    bodies' content codings itself. served_model_name: the model's name in the API, or
    several (vLLM's --served-model-name A B): the first is reported, each is accepted as a
    request's model and listed by /v1/models; None: the engine's model name. any_model:
    a request may name any model, the name reported whatever it names (LightLLM's
    --model_name, whose server checks no request's model); else another name is a 404.
    body_timeout: seconds a request body's next bytes may take (408 past it); ValueError
    unless positive. trust_request_chat_template: a chat or /tokenize request may render its
    messages with a chat template of its own (vLLM's --trust-request-chat-template; else a
    400 naming it as trust_request_chat_template_name says: this argument by default;
    `aiollm serve` gives its flag). chat_template_content_format: the form of message content the
    chat template is given, for chat, the Responses API and /tokenize (vLLM's
    --chat-template-content-format: "auto", "string" or "openai"; engine/content_format.py);
    InvalidRequest, a ValueError, naming it for another value. content_format_name: how
    the messages of a chat template that cannot render that form (logged at start, and each
    such chat request's 500) name it: this argument by default; `aiollm serve` gives its
    flag, --chat-template-content-format. response_role: the role of a
    chat answer where the prompt opens a new turn (vLLM's --response-role); ValueError
    unless a non-empty string.
    return_tokens_as_token_ids: logprobs name tokens "token_id:N" where a request does not
    say (vLLM's --return-tokens-as-token-ids). max_stored_responses: how many responses
    /v1/responses keeps (store true), the most recent (api/response_store.py); 0 keeps none,
    each answered with store false; ValueError unless an integer >= 0.
    max_stored_response_bytes: the bytes of memory those may hold in all, the oldest dropped
    first; 0 keeps none; ValueError unless an integer >= 0. shutdown_timeout: seconds the
    requests in flight at SIGTERM may take to finish; ValueError unless a number >= 0."""
    check_shutdown_timeout(shutdown_timeout, "shutdown_timeout")  # here, not at SIGTERM
    if not body_timeout > 0:
        raise ValueError(f"body_timeout must be positive seconds, got {body_timeout!r}")
    if not isinstance(response_role, str) or not response_role.strip():
        raise ValueError(f"response_role must be a non-empty string, got {response_role!r}")
    check_content_format(chat_template_content_format)
    # LightLLM's routes answer the router's 405 in their own body
    middlewares = [error_middleware, lightllm_http_errors]
    keys = (api_key,) if isinstance(api_key, str) else tuple(api_key or ())
    allowed = key_check(keys) if any(keys) else None
    if allowed is not None:
        middlewares.append(auth_middleware(allowed))
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    names = ((served_model_name,) if isinstance(served_model_name, str)
             else tuple(dict.fromkeys(served_model_name or ())))  # each once, in order
    app[STATE] = ApiState(engine=engine, served_model_name=names[0] if names else None,
                          aliases=names[1:], any_model=any_model,
                          shutdown_timeout=shutdown_timeout,
                          created=int(time.time()), body_timeout=body_timeout,
                          trust_request_chat_template=trust_request_chat_template,
                          trust_request_chat_template_name=trust_request_chat_template_name,
                          chat_template_content_format=chat_template_content_format,
                          content_format_name=content_format_name,
                          response_role=response_role,
                          return_tokens_as_token_ids=return_tokens_as_token_ids,
                          allowed_origins=cors.allowed_origins if cors is not None else (),
                          allowed_methods=cors.allowed_methods if cors is not None else ("*",),
                          responses=ResponseStore(max_stored_responses,
                                                  max_stored_response_bytes))
    app.add_routes(_with_trailing_slash(ops.ROUTES + openai.ROUTES + lightllm.ROUTES
                                        + lightllm_routes.ROUTES,
                                        expect_handler=expect_handler(allowed)))
    if cors is not None:
        enable_cors(app, cors)
    app.on_response_prepare.append(send_request_id)
    app.cleanup_ctx.append(_engine_lifetime)
    app.on_shutdown.append(_drain)
    return app


def _with_trailing_slash(routes: list[web.RouteDef], **options) -> list[web.RouteDef]:
    """`routes` with `options` (aiohttp's route options: expect_handler), each also at its
    path with a trailing slash (POST /v1/chat/completions/:
    a base URL joined with one slash too many). Served, not redirected as FastAPI
    (vLLM, SGLang) redirects it: curl without -L and clients that follow no redirect for a
    POST stop at a redirect, which also costs a round trip and must resend the body. A
    path with a variable ({model:.+}) already takes what follows it, slash included."""
    out = []
    for route in routes:
        kwargs = {**options, **route.kwargs}
        out.append(web.RouteDef(route.method, route.path, route.handler, kwargs))
        if not route.path.endswith("/") and "{" not in route.path:
            out.append(web.RouteDef(route.method, route.path + "/", route.handler, kwargs))
    return out


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    async with st.engine:
        # once, for the served template (vLLM logs its detected format at start too)
        log_served_format(st.chat_template_content_format, st.engine.tokenizer.chat_template,
                          st.content_format_name)
        check_served_format(st.engine.tokenizer, st.chat_template_content_format,
                            st.content_format_name)
        # Everything alive now (torch, transformers, the tokenizer, the model: some 10^5-10^6
        # objects) stays alive while serving. Moving it out of the collector's reach keeps a
        # full collection, which would otherwise walk all of it and stall every stream for
        # 0.1-0.3 s, down to the objects that serving creates.
        gc.collect()
        gc.freeze()
        gc.enable()  # `aiollm serve` starts with the collector off (cli/serve.py)
        metrics = app[STATE].engine.metrics
        metrics.watch_gc()
        try:
            yield
        finally:
            metrics.watch_gc(False)
            # frozen objects are never collected, not even at exit, where nanobind then
            # reports each of its bindings they hold as leaked (~30 lines per Ctrl-C)
            gc.unfreeze()


async def _drain(app: web.Application) -> None:
    """on_shutdown runs after the listening sockets close and before aiohttp waits for the
    handlers: the engine finishes what it has within the timeout, then aborts the rest, so
    every handler ends by itself with what it got."""
    st = app[STATE]
    st.draining = True
    log.info("shutting down: finishing in-flight requests (up to %.0fs; signal again to "
             "abort them now)", st.shutdown_timeout)
    drain = asyncio.ensure_future(st.engine.shutdown(st.shutdown_timeout))
    hurry = asyncio.ensure_future(st.hurry.wait())
    try:
        await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():  # a second signal: abort what is in flight now
            log.info("second signal: aborting the requests in flight")
            await st.engine.stop()
        await drain
    finally:
        hurry.cancel()


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 8000, *,
                stop: asyncio.Event | None = None,
                on_started: Callable[[str, int], None] | None = None) -> None:
    """Run `app` until `stop` is set, or until SIGINT/SIGTERM when no event is given
    (signal handlers need the main thread). Returns after a graceful shutdown; a second
    signal during it aborts the requests still in flight at once (sets ApiState.hurry).
    Raises OSError before the model loads when the address cannot be bound (a port in use).
    A signal while the model loads shuts down once it is loaded, never listening; but an
    engine whose start can be given up (Engine.start_interruptible: tensor parallelism,
    whose rendezvous waits for other nodes up to minutes) gives it up at once, and serve
    raises KeyboardInterrupt (Terminated at SIGTERM)."""
    st = app[STATE]
    runner = web.AppRunner(
        app,
        # a client that disconnects cancels its handler, which aborts its engine request
        handler_cancellation=True,
        # request bodies come as sent: api/body.py decodes their content coding, so a body
        # that does not decode is a client's 400, not an error inside aiohttp's parser
        auto_decompress=False,
        # the engine drains within shutdown_timeout (see _drain); this is what aiohttp then
        # gives the handlers to write their last bytes
        shutdown_timeout=5.0,
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADERS,
        access_log=log.getChild("access") if log.isEnabledFor(logging.DEBUG) else None,
        # aiohttp's format, and the id the response carries (api/request_id.py)
        access_log_format=f'%a %t "%r" %s %b "%{{Referer}}i" "%{{User-Agent}}i" '
                          f'%{{{REQUEST_ID_HEADER}}}o',
        logger=SERVER_LOG,
    )
    loop = asyncio.get_running_loop()
    signals = []
    setup: asyncio.Task | None = None  # the engine's start, while it runs
    interrupted: signal.Signals | None = None  # the signal that gave the engine's start up
    if stop is None:
        stop = asyncio.Event()
        def on_signal(sig: signal.Signals, event: asyncio.Event = stop) -> None:
            nonlocal interrupted
            if event.is_set():  # the second one (Ctrl-C twice): stop waiting for requests
                st.hurry.set()
            event.set()
            if (setup is not None and not setup.done()
                    and getattr(st.engine, "start_interruptible", False)):
                interrupted = interrupted or sig
                setup.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            signals.append(sig)
    try:  # the handlers go with serve(), however it ends: else Ctrl-C sets a dead event
        # a taken port, or a host that does not resolve (with port 0 too), is told now,
        # not after the model has loaded
        await check_bindable(host, port)
        setup = asyncio.ensure_future(runner.setup())  # starts the engine: loads the model
        try:
            await setup
        except asyncio.CancelledError:
            if interrupted == signal.SIGTERM:  # (exit status 143, not Ctrl-C's 130)
                raise Terminated() from None
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        try:
            # a signal during the load (which cannot be interrupted): shut down unseen, as
            # a server never up (it listened and said it served, clients found it up)
            if not stop.is_set():
                await _listen(runner, host, port, st, on_started)
                await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("server stopped")


async def _listen(runner: web.AppRunner, host: str, port: int, st: ApiState,
                  on_started: Callable[[str, int], None] | None) -> None:
    """Open the port of a set-up runner, say so, and call on_started(host, port)."""
    await listening_site(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    # an IPv6 address goes in brackets, as a URL writes it (else its port reads as part of it)
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("serving %s on http://%s:%d (KV capacity %d tokens)", st.model_name,
             url_host, bound_port, st.engine.stats()["kv_total"])
    if on_started is not None:
        on_started(bound_host, bound_port)


def run_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, *,
               api_key: str | Sequence[str] | None = None,
               served_model_name: str | Sequence[str] | None = None,
               shutdown_timeout: float = 30.0, cors: CorsOptions | None = None) -> None:
    """Serve `engine` on uvloop until SIGINT/SIGTERM."""
    import uvloop

    app = create_app(engine, api_key=api_key, served_model_name=served_model_name,
                     shutdown_timeout=shutdown_timeout, cors=cors)
    uvloop.run(serve(app, host, port))
