"""The API key: which requests may reach their route without it, how a key is checked,
and the 401 of a request without one, answered by a middleware or, for a request that
expects 100 Continue, before its body is read.

create_app (server.py) builds the check from the keys it is given (vLLM's --api-key, one
or several) and installs both: no keys, no check.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from aiohttp import hdrs, web

from aiollm.api.body import expect_continue
from aiollm.api.http_errors import ApiError, Handler, error_response
from aiollm.api.lightllm_errors import answers_as_lightllm, lightllm_path

# Reachable without the API key, with or without a trailing slash: the operations a probe
# (LightLLM's /liveness and /readiness too), a Prometheus scraper, a router (/load, LightLLM's
# /token_load) or a deploy script reads, which carry no secrets, run no model and change
# nothing (vLLM's key guards /v1 alone;
# its /metrics and /version are open). Every other path needs the key, unknown ones
# included: a route added later is guarded unless it is listed here. /tokenize,
# /detokenize and /flush_cache stay behind it, unlike vLLM's open /tokenize: they run the
# tokenizer on the caller's input or change the cache.
OPEN_PATHS = frozenset(path + end for path in ("/health", "/healthz", "/ping", "/load",
                                              "/metrics", "/version", "/liveness",
                                              "/readiness", "/token_load")
                       for end in ("", "/"))


def key_check(api_keys: tuple[str, ...]) -> Callable[[web.Request], bool]:
    """Whether a request may reach its route under `api_keys`: it carries one of them, or
    its route needs none."""
    # compared as SHA-256 digests: equal lengths, so compare_digest's time tells neither
    # how much of a key was right nor how long the keys are
    expected = [hashlib.sha256(key.encode()).digest() for key in api_keys if key]

    def allowed(request: web.Request) -> bool:
        # OPTIONS routes exist only with CORS on: its preflights, which carry no credentials
        # (browsers never send them) and run nothing
        if (request.path in OPEN_PATHS
                or request.match_info.route.method == hdrs.METH_OPTIONS):
            return True
        scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        # compare_digest: the time taken must not tell how much of the key was right.
        # Header bytes that are not UTF-8 arrive as surrogates: encode them back.
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        # every key compared, none skipped: the time does not tell which key matched
        matched = [hmac.compare_digest(given, key) for key in expected]
        return scheme.lower() == "bearer" and any(matched)

    return allowed


def _unauthorized(*, close: bool = False, message: bool = False) -> web.Response:
    """The 401 of a request without a valid key; message: its message at the body's top
    level too, as LightLLM's routes answer every refusal (error_response)."""
    return error_response(ApiError(
        401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}, close=close), message)


def auth_middleware(allowed: Callable[[web.Request], bool]) -> Callable:
    """The middleware that answers a request `allowed` (key_check's) refuses with the 401,
    before its handler runs."""
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not allowed(request):
            return _unauthorized(message=lightllm_path(request))
        return await handler(request)

    return auth


def expect_handler(allowed: Callable[[web.Request], bool] | None) -> Callable:
    """expect_continue behind the API key: aiohttp asks the route's expect handler before
    any middleware runs, so a request without the key was told 100 Continue and sent its
    whole body only to get its 401. Refused on its headers alone, it gets the 401 at once
    (RFC 9110 10.1.1), and the connection closes: the body is never read."""
    async def expect(request: web.Request) -> web.StreamResponse | None:
        if allowed is not None and not allowed(request):
            return _unauthorized(close=True, message=lightllm_path(request))
        # LightLLM's routes put the refusal's message at the top level, as they answer it
        return await expect_continue(
            request, message=answers_as_lightllm(request.match_info.handler))

    return expect
