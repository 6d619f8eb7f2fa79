"""Cross-origin requests (CORS): which web pages a browser lets call the server.

Off unless origins are allowed: the server listens on 127.0.0.1 by default, and a server
that allowed every origin would let any page the user visits drive it. With origins given,
every route answers the browser's preflight OPTIONS (before the API key is asked for: a
preflight carries no credentials and runs nothing) and every response to an allowed origin,
streams and errors included, carries Access-Control-Allow-Origin and lets the page read its
X-Request-Id (Access-Control-Expose-Headers), and every response carries Vary: Origin.
aiohttp-cors does the protocol; this module turns the server's options into its
configuration.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import aiohttp_cors
from aiohttp import hdrs, web

from aiollm.api.request_id import HEADER as REQUEST_ID_HEADER

# what a browser sends as Origin: scheme://host[:port], no path; "null" from file:// pages
_ORIGIN = re.compile(r"null|[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+")
# request headers a browser may send without asking (the CORS-safelisted ones; it still lists
# Content-Type in a preflight when it is application/json): allowed with any list, as
# vLLM (Starlette) allows them
_SAFELISTED_HEADERS = ("Accept", "Accept-Language", "Content-Language", "Content-Type")
PREFLIGHT_MAX_AGE_S = 600  # how long a browser may reuse a preflight's answer
# response headers a page may read beyond the safelisted ones (Content-Type...): the request
# id, which the openai SDK reads as the response's _request_id and the log names requests by,
# and Retry-After, which the SDK waits by before retrying an overloaded server's 503
EXPOSED_HEADERS = (REQUEST_ID_HEADER, "Retry-After")


@dataclass(frozen=True)
class CorsOptions:
    """The origins (scheme://host[:port], "null", or "*" for any) whose pages may call the
    server, the methods and request headers they may use ("*": any), and whether the browser
    may send its credentials (cookies, HTTP auth) with them. Raises ValueError naming a value
    a browser would never match."""

    allowed_origins: tuple[str, ...]
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False

    def __post_init__(self) -> None:
        if not self.allowed_origins:
            raise ValueError("allowed_origins must name at least one origin (or \"*\")")
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] "
                                 "without a path, as browsers send it (e.g. "
                                 "http://localhost:3000), or \"*\" for any")
            sent = _as_sent(origin)
            if sent is None:
                raise ValueError(f"{origin!r} is not an origin a browser sends: give "
                                 "scheme://host[:port] with no user name, a port from 0 to "
                                 "65535 and a valid address (e.g. http://localhost:3000)")
            if sent != origin:  # compared as sent: this entry would never match
                raise ValueError(f"{origin!r} is not an origin as browsers send it: give "
                                 f"{sent!r} (scheme and host in lower case, a host not in "
                                 "ASCII in its IDNA form, an IPv6 address in its shortest "
                                 "form, no default port, no leading zeros)")
        for name in ("allowed_methods", "allowed_headers"):
            if not getattr(self, name) or not all(getattr(self, name)):
                raise ValueError(f"{name} must name at least one, without empty names "
                                 "(or \"*\" for any)")


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _as_sent(origin: str) -> str | None:
    """`origin` (one _ORIGIN matches) as a browser serializes it in the Origin header (the
    HTML standard's ASCII serialization of an origin, the host and port as the URL standard
    parses them): scheme and host in lower case, a host not in ASCII in its IDNA form
    (punycode), an IPv6 address in its shortest form (RFC 5952), the port as a decimal number
    without leading zeros and left out when it is the scheme's default. "*" and "null" as
    given. None for what no browser sends: a user name (user@host), a port that is no number
    or past 65535, a bracketed host that is no IPv6 address, a host IDNA cannot encode."""
    if origin in ("*", "null"):
        return origin
    scheme, _, rest = origin.partition("://")
    if "@" in rest:
        return None
    host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    if not colon or "]" in port:  # no port, or the colon was inside an IPv6 address
        host, port = rest, ""
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    scheme = scheme.lower()
    if port:
        port = "" if int(port) == _DEFAULT_PORTS.get(scheme) else str(int(port))
    try:
        if host.startswith("["):
            if not host.endswith("]"):
                return None
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        elif not host.isascii():
            host = host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    return f"{scheme}://{host.lower()}" + (f":{port}" if port else "")


def enable_cors(app: web.Application, options: CorsOptions) -> None:
    """Add CORS to every route `app` has now: call it after the routes are added."""
    methods = "*" if "*" in options.allowed_methods else options.allowed_methods
    headers = ("*" if "*" in options.allowed_headers
               else tuple({*options.allowed_headers, *_SAFELISTED_HEADERS}))
    resource = aiohttp_cors.ResourceOptions(
        allow_credentials=options.allow_credentials, allow_headers=headers,
        allow_methods=methods, expose_headers=EXPOSED_HEADERS, max_age=PREFLIGHT_MAX_AGE_S)
    origins = ("*",) if "*" in options.allowed_origins else options.allowed_origins
    cors = aiohttp_cors.setup(app, defaults={origin: resource for origin in origins})
    # by resource, not by route: aiohttp-cors allows a route's own method whatever
    # allow_methods says, so --allowed-methods would restrict nothing
    for res in list(app.router.resources()):
        cors.add(res)
    app.on_response_prepare.append(_unrouted_responses(options))
    app.on_response_prepare.append(_vary_on_origin)


async def _vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """Vary: Origin on every response, as the Fetch standard asks of a server whose CORS
    headers depend on the request's Origin. aiohttp-cors always echoes the origin (never
    "*", even when any is allowed) and sends nothing to other origins or to requests without
    one, so a shared cache that kept one origin's answer would hand it to another page (or
    an Origin-less answer to a page), which the browser would then refuse."""
    # every Vary header the handler set (a list of them is one list), without empty members
    names = [name.strip() for vary in response.headers.getall(hdrs.VARY, ())
             for name in vary.split(",") if name.strip()]
    if not {name.lower() for name in names} & {"*", "origin"}:
        response.headers[hdrs.VARY] = ", ".join([*names, hdrs.ORIGIN])


def _unrouted_responses(options: CorsOptions):
    """The CORS headers of the router's own answers (404: no route has the path, 405: none
    serves the method), which come from no resource aiohttp-cors configured: without them the
    page sees a network error in place of the server's JSON error."""
    anywhere = "*" in options.allowed_origins

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if (origin is None or request.match_info.http_exception is None
                or request.method == hdrs.METH_OPTIONS
                or hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers
                or not (anywhere or origin in options.allowed_origins)):
            return
        # as aiohttp-cors answers a routed request: the origin itself, not "*"
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSED_HEADERS)
        if options.allow_credentials:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"

    return on_prepare
