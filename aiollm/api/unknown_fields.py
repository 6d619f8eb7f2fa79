"""Fields of a request body that its endpoint does not know: served as if left out, as vLLM
serves them (its request models take extra fields), and named in one WARNING line of the log
per request, as vLLM names them, so that a typo (`max_token`) or a field meant for another
server is seen rather than silently doing nothing.

Known is what the body's msgspec Struct declares, at its top level and in the objects its
fields decode into Structs (LightLLM's `parameters`, `stream_options`); the items of lists
(messages, their content parts) are not looked into, as vLLM's are not. A field declared
but not served keeps its own handling (protocol.refuse_unserved: a 400 naming it).
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Iterator
from functools import lru_cache

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)

# bodies past this are scanned on a worker thread (a 16 MiB body: ~20 ms of the loop's time)
_INLINE_BYTES = 1 << 20
# how many fields a line names, and how much of each: a client's keys are its own text
_NAMED = 16
_NAME_CHARS = 64


async def warn_unknown(request: web.Request, body: bytes, type_: type) -> None:
    """Log one WARNING naming the fields of `body` (the JSON object `request` sent, decoded
    into `type_`) that `type_` does not know, if it has any."""
    if len(body) > _INLINE_BYTES:
        unknown = await asyncio.to_thread(unknown_fields, body, type_)
    else:
        unknown = unknown_fields(body, type_)
    if not unknown:
        return
    named = ", ".join(_shown(name) for name in unknown[:_NAMED])
    more = f" and {len(unknown) - _NAMED} more" if len(unknown) > _NAMED else ""
    log.warning("%s %s: the request's fields %s%s are unknown to this endpoint and were "
                "ignored", request.method, request.path, named, more)


def unknown_fields(body: bytes, type_: type) -> list[str]:
    """The keys of `body`, a JSON object that decodes into the Struct `type_`, that it
    declares no field for, and those of the objects its Struct fields hold, as paths
    ("parameters.max_token"), in the body's order; [] when `type_` is no Struct."""
    if not _is_struct(type_):
        return []
    return list(_unknown(body, type_, ""))


def _unknown(raw: bytes | msgspec.Raw, type_: type, prefix: str) -> Iterator[str]:
    try:
        fields = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):  # null where a Struct may be
        return
    known, nested = _fields(type_)
    for name, value in fields.items():
        if name not in known:
            yield prefix + name
        elif name in nested:
            yield from _unknown(value, nested[name], f"{prefix}{name}.")


@lru_cache(maxsize=None)
def _fields(type_: type) -> tuple[frozenset[str], dict[str, type]]:
    """The JSON names of `type_`'s fields, and the Struct each field holds (alone or with
    None), by name."""
    known, nested = set(), {}
    for f in msgspec.structs.fields(type_):
        known.add(f.encode_name)
        structs = [t for t in (typing.get_args(f.type) or (f.type,)) if _is_struct(t)]
        if len(structs) == 1:
            nested[f.encode_name] = structs[0]
    return frozenset(known), nested


def _is_struct(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def _shown(name: str) -> str:
    """A key as the log line names it: cut to _NAME_CHARS, escaped where it is not printable
    (a line break would forge a log line)."""
    cut = name[:_NAME_CHARS] + ("..." if len(name) > _NAME_CHARS else "")
    return cut if cut.isprintable() else ascii(cut)
