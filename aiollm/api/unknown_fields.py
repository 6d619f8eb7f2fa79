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
from collections.abc import Callable
from functools import lru_cache

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)

# bodies past this are scanned on a worker thread (a 16 MiB body: ~20 ms of the loop's time)
_INLINE_BYTES = 1 << 20
# and so are those of more colons than this (an upper bound on their keys): the scan makes
# a Python object per key, ~0.5 ms for 4096 keys but 50-90 ms for the ~80k that fit in a
# MiB (ten times the body's decode), where a count of its bytes costs well under a ms
_INLINE_KEYS = 4096
# how many fields a line names, and how much of each: a client's keys are its own text
_NAMED = 16
_NAME_CHARS = 64


async def warn_unknown(request: web.Request, body: bytes, type_: type) -> None:
    """Log one WARNING naming the fields of `body` (the JSON object `request` sent, decoded
    into `type_`) that `type_` does not know, if it has any."""
    found = None
    if inline(body):
        try:
            found = unknown_fields(body, type_)
        except RecursionError:
            # nested about as deep as the decoder takes, which read it a few frames higher
            # up this stack: scanned where a stack starts afresh, not failing the request
            pass
    if found is None:
        found = await asyncio.to_thread(unknown_fields, body, type_)
    warn(request, found)


def warn(request: web.Request, found: tuple[list[str], int]) -> None:
    """Log the WARNING naming `found` (unknown_fields' or unknown_in's answer), if it names
    any field."""
    unknown, count = found
    if not count:
        return
    named = ", ".join(_shown(name) for name in unknown)
    more = f" and {count - len(unknown)} more" if count > len(unknown) else ""
    log.warning("%s %s: the request's fields %s%s are unknown to this endpoint and were "
                "ignored", request.method, request.path, named, more)


def inline(body: bytes) -> bool:
    """Whether a scan of `body` (or its decode, which builds the same objects) is cheap
    enough for the event loop: at most _INLINE_BYTES and _INLINE_KEYS."""
    return len(body) <= _INLINE_BYTES and body.count(b":") <= _INLINE_KEYS


def unknown_in(value: object, type_: type, limit: int = _NAMED) -> tuple[list[str], int]:
    """unknown_fields() of a body decoded already: `value`, its JSON as Python objects (an
    object a dict), which decodes into the Struct `type_`."""
    if not _is_struct(type_):
        return [], 0
    return _unknown(value, type_, "", limit, _as_dict)


def unknown_fields(body: bytes, type_: type, limit: int = _NAMED) -> tuple[list[str], int]:
    """The keys of `body`, a JSON object that decodes into the Struct `type_`, that it
    declares no field for, and those of the objects its Struct fields hold, as paths
    ("parameters.max_token"): the first `limit` of them in the body's order and how many
    there are in all; ([], 0) when `type_`
    is no Struct. Python looks at about `limit` keys plus the declared ones, however many
    the body has (sets count the rest)."""
    if not _is_struct(type_):
        return [], 0
    return _unknown(body, type_, "", limit, _raw_dict)


def _as_dict(value: object) -> dict | None:
    return value if isinstance(value, dict) else None


def _raw_dict(raw: bytes | msgspec.Raw) -> dict[str, msgspec.Raw] | None:
    try:
        return msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):  # null where a Struct may be
        return None


def _unknown(value: object, type_: type, prefix: str, limit: int,
             as_dict: Callable[[object], dict | None]) -> tuple[list[str], int]:
    """The walk of unknown_fields and unknown_in: `as_dict` opens a value (the body, a
    field's) into its keys' dict, None for a value that is no object."""
    fields = as_dict(value)
    if fields is None:
        return [], 0
    known, nested = _fields(type_)
    extra = fields.keys() - known
    count = len(extra)
    pending = nested.keys() & fields.keys()
    names = []
    for name in fields:  # in the body's order, until `limit` are named: every key passed
        if len(names) >= limit:  # on the way is a known one or a named one
            break
        if name in extra:
            names.append(prefix + name)
        elif name in pending:
            pending.discard(name)
            more, n = _unknown(fields[name], nested[name], f"{prefix}{name}.",
                               limit - len(names), as_dict)
            names += more
            count += n
    for name in pending:  # after the limit: counted only
        count += _unknown(fields[name], nested[name], "", 0, as_dict)[1]
    return names, count


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
