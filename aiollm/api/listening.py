"""The listening socket of `aiollm serve`: the address checked before the model loads (a
port in use is told at once, not minutes later) and the site that listens on it once it
has, dual-stack for the IPv6 wildcard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp import web


def listening_site(runner: web.AppRunner, host: str, port: int) -> web.BaseSite:
    """The site of a set-up `runner` that listens on `host`:`port` once started: for the
    IPv6 wildcard (dual_stack) on one socket that takes IPv4 clients too, bound now (its
    OSError raised here); else aiohttp's TCPSite, bound at its start."""
    if not dual_stack(host):
        return web.TCPSite(runner, host, port)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:  # as asyncio's create_server sets it, but for IPV6_V6ONLY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return web.SockSite(runner, sock)


def dual_stack(host: str) -> bool:
    """Whether `host` is the IPv6 wildcard (::), which listens for IPv4 clients too, on one
    socket of both families, as vLLM's server socket for it does: asyncio's create_server
    makes its IPv6 sockets IPv6-only, and `--host ::` refused every IPv4 client."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, or an address with a zone
        return False
    return address.version == 6 and address.is_unspecified


async def check_bindable(host: str, port: int) -> None:
    """Raise the OSError TCPSite would raise for an address of `host`:`port` that cannot be
    bound (in use, not this machine's), as asyncio words it, or socket.gaierror naming a
    host that does not resolve. Bound and closed at once, never listening: until the model
    has loaded, connections are refused, not left waiting."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as e:  # its own words name no host
        raise socket.gaierror(e.errno, f"host {host!r} does not resolve: "
                                       f"{(e.strerror or str(e)).lower()}") from None
    for family, kind, proto, _, addr in set(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # a family this machine lacks: asyncio skips it too
            continue
        with sock:
            # as asyncio's create_server sets them: only a live socket on it is a conflict
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, not dual_stack(host))
            try:
                sock.bind(addr)
            except OSError as e:
                raise OSError(e.errno, f"error while attempting to bind on address {addr!r}: "
                                       f"{(e.strerror or str(e)).lower()}") from None
