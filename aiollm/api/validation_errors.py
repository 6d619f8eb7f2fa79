"""msgspec's ValidationError, raised while a body is decoded into its Struct, in the client's
words: the field as OpenAI's `param` names it (`messages[1].content`) and a plain message
("max_tokens: expected an integer, got a string"), not msgspec's own wording ("Expected
`int | null`, got `str` - at `$.max_tokens`").
"""

from __future__ import annotations

import re

import msgspec

from aiollm.errors import MISSING_REQUIRED_PARAMETER

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_TYPE = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_BOUND = re.compile(r"^Expected `([^`]+)` (>=|<=|>|<) (\S+)$")
_LENGTH = re.compile(r"^Expected `([^`]+)` of length (>=|<=|>|<) (\d+)$")

# JSON's types as msgspec names them, in a sentence
_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean",
          "array": "an array", "object": "an object", "null": "null"}
# what was sent: a float where an integer was expected is a number with a fraction
_GOT = {**_NAMES, "float": "a decimal number"}
_UNITS = {"str": "characters", "array": "items", "object": "fields"}
_AT_LEAST = {">=": "at least", "<=": "at most", ">": "more than", "<": "fewer than"}


def describe(exc: msgspec.ValidationError) -> tuple[str, str | None, str | None]:
    """(message, param, code) of a ValidationError from msgspec.json.decode: param is the
    field's path as OpenAI writes it (None for the body itself), and the message names it
    first; code is OpenAI's for a required field left out (MISSING_REQUIRED_PARAMETER),
    else None.
    A wording msgspec may add later that is not known here is kept, its backticks dropped."""
    text = str(exc)
    at = _AT.search(text)
    what = text[:at.start()] if at else text
    # inside an object of free keys msgspec writes `[...]` for the key: the field is the object
    path = at.group(1).split("[...]", 1)[0] if at else ""
    if m := _MISSING.match(what):
        param = f"{path}.{m.group(1)}" if path else m.group(1)
        return f"{param} is required", param, MISSING_REQUIRED_PARAMETER
    field = path or "request body"
    if m := _TYPE.match(what):
        message = f"expected {_one_of(m.group(1))}, got {_GOT.get(m.group(2), m.group(2))}"
    elif m := _LENGTH.match(what):
        kind, op, n = m.groups()
        unit = _UNITS.get(kind, "elements")
        unit = unit[:-1] if n == "1" else unit
        message = f"expected {_one_of(kind)} with {_AT_LEAST[op]} {n} {unit}"
    elif m := _BOUND.match(what):
        message = f"expected {_one_of(m.group(1))} {m.group(2)} {m.group(3)}"
    else:
        message = what.replace("`", "")
        message = message[:1].lower() + message[1:]
    return f"{field}: {message}", path or None, None


def _one_of(types: str) -> str:
    """msgspec's `int | str | null` as "an integer or a string": null, which stands for the
    default wherever it is taken, is left out beside the types that say what to send."""
    names = [t for t in types.split(" | ") if t != "null"] or ["null"]
    words = [_NAMES.get(t, t) for t in names]
    return " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
