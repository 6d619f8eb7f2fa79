"""An `enum` or `const` in a JSON schema, and the keywords beside it.

xgrammar writes such a node as its values alone, each as written, and drops every other
keyword of the node: a value that the "type", a range, a length or a pattern beside it
refuses is written all the same ({"type": "integer", "enum": [1, 50], "maximum": 10}
wrote 50). JSON Schema holds the output to all of them, so each keyword beside the values
is tested here on each value (`value_refusal`, called by grammar_check.py); one that
refuses a value refuses the schema. Where every value passes (pydantic's
`Annotated[Literal["ab", "cde"], Field(min_length=2)]`, OpenAPI's integer enum with a
range), xgrammar's output is what the schema allows and the schema is taken.

`format` is never tested: JSON Schema counts it an annotation unless a validator opts in,
and clients write it beside enums as one (OpenAPI's "int32", Gemini's "enum"). A `pattern`
is not tested (no regex is run on a client's values: see _refuses), nor the keywords that
hold schemas for an object's or array's members (properties, items...): beside a string,
object or array value they are refused; beside others they assert nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiollm.errors import shown_json
from aiollm.sampling_params import is_int

# what each keyword asserts on, by the JSON type of the value (others pass it, as in JSON
# Schema: a minLength says nothing of a number)
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_STRING_KEYS = ("minLength", "maxLength", "pattern")
_ARRAY_KEYS = ("minItems", "maxItems", "items", "prefixItems", "additionalItems",
               "unevaluatedItems", "uniqueItems")
_OBJECT_KEYS = ("minProperties", "maxProperties", "required", "properties",
                "patternProperties", "additionalProperties", "propertyNames",
                "unevaluatedProperties")
_KEYS = {"integer": _NUMBER_KEYS, "number": _NUMBER_KEYS, "string": _STRING_KEYS,
         "array": _ARRAY_KEYS, "object": _OBJECT_KEYS}


def json_type(value: Any) -> str:
    """JSON Schema's type of a JSON value: "null", "boolean", "integer" (a whole float, 2.0,
    too, as the spec counts it), "number", "string", "array", "object"; "" for anything
    else (the Engine API's Python values)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_int(value) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "")


def value_refusal(node: dict) -> tuple[str, str] | None:
    """(what, fix) for grammar_check's refusal of the schema node `node` (a dict with an
    "enum" or a "const"): the first of its values that a keyword beside it refuses, or that
    one could refuse that is not tested; None when every keyword beside passes every value.
    A "type" passes null too where OpenAPI's "nullable" is true."""
    values = list(node["enum"]) if isinstance(node.get("enum"), list) else []
    if "const" in node:
        values.append(node["const"])
    # the range as 2020-12 writes it: OpenAPI 3.0's flag is tested as its bound
    asserted = {**{k: v for k, v in node.items() if k not in RANGE}, **range_bounds(node)}
    for value in values:
        kind = json_type(value)
        if not _type_allows(node, kind):
            return (f"the value {shown_json(value)} of 'enum'/'const', which the 'type' "
                    f"{shown_json(node['type'])} beside it refuses (xgrammar writes the "
                    "values alone),", "remove the value, or add its type")
        for key in _KEYS.get(kind, ()):
            if key not in asserted:
                continue
            refused = _refuses(asserted, key, value)
            shown, culprit = _as_written(node, key, value)
            if refused is None:
                return (f"{culprit!r} beside the 'enum'/'const' value {shown_json(value)}, "
                        "which is not tested on it (xgrammar writes the values alone),",
                        "remove it, or the value")
            if refused:
                return (f"the value {shown_json(value)} of 'enum'/'const', which the "
                        f"{shown} beside it refuses (xgrammar writes the values alone),",
                        f"remove the value, or the {culprit!r}")
    return None


def _as_written(node: dict, key: str, value: Any) -> tuple[str, str]:
    """(the range keyword `key` of range_bounds(node) as the client wrote it, the keyword
    whose removal lets `value` pass): OpenAPI 3.0's flag is its end and the flag, "'minimum'
    3 with 'exclusiveMinimum' true"; the flag lets through a value at the end, the end one
    past it (it was named the flag's fault: removing it left the value refused)."""
    end = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}.get(key)
    if end is None or not isinstance(node[key], bool):
        return f"{key!r} {shown_json(node[key])}", key
    shown = f"{end!r} {shown_json(node[end])} with {key!r} true"
    return shown, key if _number(node[end]) and value == node[end] else end


def _type_allows(node: dict, kind: str) -> bool:
    types = node.get("type")
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list):  # no type (or a bad one, refused elsewhere)
        return True
    return (kind in types or (kind == "integer" and "number" in types)
            or (kind == "null" and node.get("nullable") is True))


RANGE = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def range_bounds(node: dict) -> dict:
    """The range keywords of the schema node `node` (those of RANGE it has) as JSON Schema
    2020-12 writes them: OpenAPI 3.0's (draft 4's) flag on a minimum, {"minimum": 0,
    "exclusiveMinimum": true}, as {"exclusiveMinimum": 0}; a false flag, or one without its
    end, as nothing. The one reading of the flag: the values are tested (value_refusal) and
    the schema compiled (grammar_check.grammar_schema; xgrammar refused the flag, "Value
    must be a number") by it."""
    out = {k: node[k] for k in RANGE if k in node}
    for flag, end in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(flag), bool) and out.pop(flag) and end in out:
            out[flag] = out.pop(end)
    return out


def _number(bound: Any) -> bool:
    return isinstance(bound, (int, float)) and not isinstance(bound, bool)


def _refuses(node: dict, key: str, value: Any) -> bool | None:
    """Whether `key` of `node` (its range as range_bounds writes it) refuses `value` (one
    of the JSON type the key asserts on); None where it is not tested here: the keywords
    holding members' schemas, a bound that is no number, a pattern (Python's re
    backtracks, 2**n steps on a pattern such as "^(a+)+$", holding the GIL: this runs on
    the event loop for tools)."""
    bound = node[key]
    if key == "uniqueItems" and bound is False:
        return False
    if key in ("minLength", "minItems", "minProperties"):
        return len(value) < bound  # a non-negative integer: checked before (grammar_check)
    if key in ("maxLength", "maxItems", "maxProperties"):
        return len(value) > bound
    if key == "required":
        return any(name not in value for name in bound)
    if not _number(bound):
        return None
    if key in ("minimum", "maximum"):
        return value < bound if key == "minimum" else value > bound
    if key in ("exclusiveMinimum", "exclusiveMaximum"):
        return value <= bound if key == "exclusiveMinimum" else value >= bound
    if key == "multipleOf":
        value, bound = _decimal(value), _decimal(bound)
        if value is None or bound is None or bound[0] <= 0:
            return None
        return not _is_multiple(value, bound)
    return None  # items, properties...: the members' schemas


def _decimal(number: int | float) -> tuple[int, int] | None:
    """(digits, exponent) with `number` == digits * 10**exponent exactly as its JSON text
    writes it: a float by its shortest decimal (0.1 is (1, -1), so 0.3 is a multiple of
    it, as the client reads them), an int as (int, 0); None for an infinity or NaN."""
    if is_int(number):
        return number, 0
    text = Decimal(repr(number))
    if not text.is_finite():
        return None
    sign, digits, exponent = text.as_tuple()
    return int("".join(map(str, digits))) * (-1 if sign else 1), exponent


def _is_multiple(value: tuple[int, int], of: tuple[int, int]) -> bool:
    """Whether the decimal `value` is a whole multiple of the positive decimal `of` (both
    (digits, exponent)): exact at any scale (decimal's 28 digits refused 0.5 beside a
    multipleOf 1e-300 as untested) and in integers alone (a Fraction's gcds took 25 ms
    for 1000 values of 1e308 beside 5e-324, on the event loop for tools): a JSON float
    scales to some 650 digits at most."""
    (a, p), (b, q) = value, of
    low = min(p, q)
    return a * 10 ** (p - low) % (b * 10 ** (q - low)) == 0
