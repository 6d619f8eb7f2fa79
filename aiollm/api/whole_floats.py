"""Integer fields sent as whole floats: `"max_tokens": 256.0` read as 256, where a body's
Struct expects an integer.

Clients compute these values in floating point (Python's `/`, JavaScript's one number type)
and vLLM's pydantic models take a float with no fractional part for an int field; msgspec's
strict decoding refuses it. msgspec's lax mode (strict=False) takes it too, but also numbers
written as strings and 0/1 for booleans, which the API keeps refusing: so the body is decoded
strictly, and only when that fails on a whole float where an integer was expected is the
float made an integer and the body decoded again. 256.5, booleans, strings and numbers out of
range (a whole float past 64 bits: 1e300) are refused as before, naming the field. (pydantic
also takes true as 1 and "256" as 256 for an int field: not taken here.)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

# msgspec's type error for a float where the expected types include int; its path
_FLOAT_FOR_INT = re.compile(r"^Expected `([^`]+)`, got `float` - at `\$(.*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
# decodes of one body, at most: one per integer field sent as a float (a list's floats are
# made integers at once); more than any body has integer fields
_MAX_PASSES = 64


def _number(text: str) -> float | msgspec.Raw:
    """A JSON number with a fraction or an exponent, as the plain decode reads it: a float,
    read by Python's float(), as msgspec's own parse of one with a large exponent (1e300)
    takes some 9 µs, 20 times as long, holding the GIL (a 16 MB body of them: 23 s of the
    event loop's); one past a double (1e999) stays its text, so that the typed decode
    refuses it naming its field, as the strict one does (not encoded as null: a default)."""
    value = float(text)
    return value if math.isfinite(value) else msgspec.Raw(text.encode())


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent in a field of any type (Any: `tools`,
    `logit_bias`), read by Python's float() for the reason `_number` gives: some 0.3-0.5 µs
    for any value, where msgspec's own parse takes 0.05 µs for 0.5 but 8-10 µs for 1e300.
    The same value as msgspec's parse (both round correctly); past a double (1e999) the
    ValueError makes msgspec's own "Number out of range" error at the field's path."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("Number out of range")
    return value


@functools.cache
def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    """The strict decoder of `type_`, made once per type. msgspec hands only floats of no
    declared type to a float_hook: a typed float field (temperature) is one value, parsed by
    msgspec, and no field holds a typed list or map of floats (logit_bias is Any)."""
    return msgspec.json.Decoder(type_, float_hook=_finite)


def strict(body: bytes, type_: type[T]) -> T:
    """`body` (JSON) decoded into `type_` as msgspec.json.decode(body, type=type_) does,
    the same values and errors, but the floats in fields typed Any read by float(): a 16 MB
    body of 1e300 in `tools` held the event loop for 23 s; some 1.3 s now."""
    return _decoder(type_).decode(body)


# the body as plain JSON, its floats read as strict() reads those of fields typed Any
_ANY = msgspec.json.Decoder(float_hook=_finite)


def plain_and_typed(body: bytes, type_: type[T]) -> tuple[Any, T]:
    """`body` (JSON) decoded once: as plain Python objects (an object a dict), and those
    converted into `type_` (msgspec.convert, strict: no parse again, and the value strict()
    gives), a whole float taken where an integer is expected, as decode() takes it. A key
    the body names twice has its last value, as Python's json keeps it (FastAPI's, vLLM's):
    the value dropped is never checked, here where decode(), which reads the bytes again,
    checked its type and refused a body that has a whole float (the value kept is the same
    in both). Raises msgspec's errors, which may not be strict()'s (a path not named, the
    later of two errors): a caller that reports one decodes with strict() for it."""
    value = _ANY.decode(body)
    typed = _whole_floats_taken(value, lambda v: msgspec.convert(v, type_, strict=True))
    return value, typed if typed is not None else msgspec.convert(value, type_, strict=True)


# the body as plain JSON (_number)
_PLAIN = msgspec.json.Decoder(float_hook=_number)
# the 64-bit integers: a whole float outside them stays a float, refused as one
_LEAST, _PAST_GREATEST = -2.0**63, 2.0**64


def decode(body: bytes, type_: type[T]) -> T:
    """`body` (JSON) decoded into `type_` as msgspec.json.decode(body, type=type_) does, a
    whole float (finite, no fractional part, within 64 bits) taken where an integer is
    expected. Raises msgspec's errors: a ValidationError naming the first field at fault
    once the whole floats before it are taken (`{"max_tokens": 2.0, "n": 1.5}`: n)."""
    try:
        return strict(body, type_)
    except msgspec.ValidationError as exc:
        first = exc
        if _float_for_int(exc) is None:
            raise
    # a body whose JSON breaks after the float raises DecodeError here, as bad JSON
    value = _PLAIN.decode(body)
    typed = _whole_floats_taken(value, lambda v: strict(msgspec.json.encode(v), type_))
    if typed is None:
        raise first
    return typed


def decode_kept(body: bytes, type_: type[T]) -> T:
    """`body` (JSON) decoded as decode() decodes it, but a key an object names twice read
    once, with its last value, as plain_and_typed reads it: its errors name a value the
    body keeps, never one dropped (`{"n": "x", "n": 1, "temperature": "hot"}`:
    temperature), for a body plain_and_typed refused. A body the plain decode refuses
    (no JSON, a lone surrogate escape, nested too deeply) is decoded as sent, for decode()'s
    own error."""
    try:
        kept = msgspec.json.encode(_PLAIN.decode(body))
    except (msgspec.DecodeError, RecursionError):
        kept = body
    return decode(kept, type_)


def _whole_floats_taken(value: Any, typed: Callable[[Any], T]) -> T | None:
    """typed(value) (the plain JSON `value` made the body's Struct), retried after each
    whole float it refuses where an integer is expected is made one in `value`
    (_make_whole), at most _MAX_PASSES times: None where those run out. Raises typed's
    error for any other refusal."""
    for _ in range(_MAX_PASSES):
        try:
            return typed(value)
        except msgspec.ValidationError as exc:
            path = _float_for_int(exc)
            if path is None or not _make_whole(value, path):
                raise
    return None


def _float_for_int(exc: msgspec.ValidationError) -> list[str | int] | None:
    """The path (keys and indices) of the float that `exc` refused where an integer was
    expected; None for another error, or a path through an object of free keys."""
    m = _FLOAT_FOR_INT.match(str(exc))
    if m is None or "int" not in m.group(1).split(" | ") or "[...]" in m.group(2):
        return None
    return [key if key else int(index)
            for key, index in _STEP.findall(m.group(2))]


def _make_whole(value: Any, path: list[str | int]) -> bool:
    """Make the float at `path` in `value` an integer, and the whole floats of its list (and
    of the lists beside it in a list of lists: a batch of token-id lists) too, so that a
    list of floats takes one pass; False where it is no whole float."""
    parent, container = None, value
    for step in path[:-1]:
        parent, container = container, container[step]
    key = path[-1]
    if not _is_whole(container[key]):
        return False
    container[key] = int(container[key])
    if isinstance(container, list):
        lists = parent if isinstance(parent, list) else [container]
        for items in lists:
            if isinstance(items, list):
                items[:] = [int(v) if _is_whole(v) else v for v in items]
    return True


def _is_whole(v: Any) -> bool:
    """A float with no fractional part within the 64-bit integers msgspec decodes (int64's
    least to uint64's greatest). NaN and the infinities are not; nor is 1e300, which no
    field takes, made a 301-digit int (and a body of them a hundred times its size when
    encoded again, for every pass)."""
    return type(v) is float and v.is_integer() and _LEAST <= v < _PAST_GREATEST
