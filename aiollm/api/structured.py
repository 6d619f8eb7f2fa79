"""The request fields that constrain the output, turned into one aiollm Constraint.

OpenAI: `response_format` ({"type": "text" | "json_object" | "json_schema", "json_schema":
{"name", "schema", "strict"}}), `logit_bias` ({"token id": bias in [-100, 100]}). vLLM's
extensions: `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` (EBNF, as
xgrammar takes it) and the newer `structured_outputs` object ({"json" | "regex" | "choice" |
"grammar" | "json_object" | "structural_tag": ...}), `allowed_token_ids`. LightLLM's
/generate: `guided_json`, `guided_grammar`, `regular_constraint`, `allowed_token_ids`.

At most one grammar per request: two are refused (400) rather than one silently dropped.
So is a JSON schema keyword that xgrammar accepts but does not enforce (the output would not
validate), and a schema nested or enumerating past what compiles in a few seconds.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, GrammarSpec, is_int


def _text(value: Any, param: str) -> str:
    if isinstance(value, str):
        return value
    raise InvalidRequest(f"{param} must be a string", param=param)


def _json(value: Any, param: str) -> Any:
    """`value`, parsed first when it is JSON text (InvalidRequest naming `param` if it is not
    valid JSON)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"{param} is not valid JSON: {e}", param=param) from None


def _schema(value: Any, param: str) -> str:
    value = _json(value, param)
    if value is True:  # any JSON value
        return "{}"
    if value is False:  # the grammar cannot express "nothing" (xgrammar drops "not")
        raise InvalidRequest(f"{param} is false, which no output validates against",
                             param=param)
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON schema object", param=param)
    check_schema(value, param)
    return json.dumps(grammar_schema(value))


# Measured on the default model's tokenizer: 200 nested levels compile in 1.5 s, 600 in 11 s
# (and past ~2000 Python's json recursion fails); a 20,000-value enum in 10 s, 60,000 in 65 s
# (of a 2-core CPU's time, slowing every stream). OpenAI allows 1000 enum values per schema.
MAX_SCHEMA_DEPTH = 64
MAX_ENUM_VALUES = 1000
# keywords xgrammar compiles but does not enforce (a random walk over its grammar writes
# documents that fail them): refused rather than silently dropped
_UNENFORCED = ("not", "if", "then", "else", "contains", "minContains", "maxContains",
               "dependentRequired", "dependentSchemas", "dependencies")
# a node with one of these is that schema alone to xgrammar: it drops the node's other
# assertions (a "type" and "properties" beside anyOf: any JSON value would do)
_COMBINATORS = ("$ref", "anyOf", "oneOf", "allOf")
_ASSERTIONS = ("type", "enum", "const", "multipleOf", "minimum", "maximum", "exclusiveMinimum",
               "exclusiveMaximum", "minLength", "maxLength", "pattern", "format", "minItems",
               "maxItems", "items", "prefixItems", "minProperties", "maxProperties",
               "required", "properties", "patternProperties", "additionalProperties",
               "propertyNames")
_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_ONE = ("items", "additionalProperties", "propertyNames", "additionalItems",
               "unevaluatedProperties", "unevaluatedItems")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_OBJECT_SHAPES = ("properties", "patternProperties", "additionalProperties", "propertyNames",
                  "unevaluatedProperties")


def check_schema(schema: dict, param: str) -> None:
    """Refuse (InvalidRequest naming `param` and the keyword's JSON pointer) a JSON schema the
    grammar cannot hold the output to, or one too large to compile quickly."""
    stack, enums = [(schema, 1)], 0
    while stack:  # every container, values too: no recursion on a deep document
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels",
                                 param=param)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
        if isinstance(node, dict) and isinstance(node.get("enum"), list):
            enums += len(node["enum"])
    if enums > MAX_ENUM_VALUES:
        raise InvalidRequest(f"{param} has {enums} enum values; at most {MAX_ENUM_VALUES}",
                             param=param)
    _check_keywords(schema, "", param)


def grammar_schema(schema: dict) -> dict:
    """The schema to compile: a copy where an array sized without items (minItems/maxItems,
    no items or prefixItems) gets `items: {}` and an object sized without properties gets
    `additionalProperties: {}`. JSON Schema allows any items there; xgrammar's strict mode
    (no items or properties but those named) allowed none: minItems 1 did not compile and
    maxItems alone allowed only []."""
    out = copy.deepcopy(schema)
    stack = [out]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if ("minItems" in node or "maxItems" in node) and not (
                "items" in node or "prefixItems" in node):
            node["items"] = {}
        if ("minProperties" in node or "maxProperties" in node) and not any(
                k in node for k in _OBJECT_SHAPES):
            node["additionalProperties"] = {}
        stack.extend(sub for _, sub in _subschemas(node))
    return out


def _subschemas(node: dict) -> Iterator[tuple[str, Any]]:
    """The subschemas a schema node names directly, each with its JSON-pointer step from the
    node ("/properties/name", "/items", "/anyOf/0"); `items` comes as one schema and, when a
    list, as its elements."""
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield f"/{key}/{name}", sub
    for key in _SCHEMA_ONE:
        if key in node:
            yield f"/{key}", node[key]
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                yield f"/{key}/{i}", sub


def _check_keywords(node: Any, at: str, param: str) -> None:
    if not isinstance(node, dict):
        return

    def refuse(what: str, fix: str = "remove it") -> None:
        raise InvalidRequest(f"{param}: {what} at {at or '/'} is not supported (the grammar "
                             f"cannot enforce it): {fix}", param=param)

    for key in _UNENFORCED:
        if key in node:
            refuse(repr(key))
    combinator = next((k for k in _COMBINATORS if k in node), None)
    if combinator is not None:
        beside = next((k for k in (*_COMBINATORS, *_ASSERTIONS)
                       if k in node and k != combinator), None)
        if beside is not None:
            refuse(f"{beside!r} beside {combinator!r}",
                   f"move it into the schemas {combinator!r} names")
    ref = node.get("$ref")
    if isinstance(ref, str) and not (ref == "#" or ref.startswith("#/")):
        refuse(f"the $ref {ref!r}", "only references into the schema itself ('#', '#/...') "
               "are resolved; inline the schema it names")
    required, props = node.get("required"), node.get("properties")
    # xgrammar writes only the properties `properties` names: another required one never
    # appears, whatever additionalProperties or patternProperties allow
    missing = next((r for r in required if isinstance(r, str) and not (
        isinstance(props, dict) and r in props)), None) if isinstance(required, list) else None
    if missing is not None:
        refuse(f"the required property {missing!r}, which 'properties' does not name",
               "add it to 'properties'")
    if node.get("uniqueItems") is True:
        refuse("'uniqueItems'")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        refuse("'allOf' of more than one schema")
    mult = node.get("multipleOf")
    if mult is not None and not (node.get("type") == "integer" and isinstance(mult, int)):
        refuse("'multipleOf' other than an integer's by an integer")
    pattern = node.get("pattern")
    if isinstance(pattern, str) and _unread_escape(pattern):
        refuse(f"{_unread_escape(pattern)} of 'pattern'")
    if isinstance(pattern, str) and _LOOKAROUND.search(pattern):
        refuse("a lookaround in 'pattern'")
    if isinstance(pattern, str) and ("minLength" in node or "maxLength" in node):
        refuse("'pattern' with 'minLength'/'maxLength'")
    # xgrammar enforces a format (email, date, uri...) by dropping the string's lengths
    if isinstance(node.get("format"), str) and _binding_lengths(node):
        refuse("'format' with 'minLength'/'maxLength'",
               f"remove them (a maxLength of {LOOSE_MAX_LENGTH} or more is accepted)")
    for step, sub in _subschemas(node):
        _check_keywords(sub, at + step, param)


# A maxLength this large beside a format is accepted though the grammar cannot hold it:
# pydantic's URL types write {"format": "uri", "minLength": 1, "maxLength": 2083}, and refusing
# them would refuse every model with a URL field, for a bound no generated URL comes near
LOOSE_MAX_LENGTH = 2048


# formats whose xgrammar pattern never matches the empty string (checked with xgrammar
# 0.2.9; uri-reference, iri, iri-reference, uri-template, json-pointer and regex do match it)
_NON_EMPTY_FORMATS = frozenset({"email", "date", "time", "date-time", "duration", "ipv4",
                                "ipv6", "hostname", "uri", "uuid", "relative-json-pointer"})


def _binding_lengths(node: dict) -> bool:
    """Whether a format string's minLength/maxLength could bind: minLength 0 never does, nor 1
    for a format that is never empty; a maxLength of LOOSE_MAX_LENGTH or more is let go."""
    lo, hi = node.get("minLength"), node.get("maxLength")
    floor = 1 if node.get("format") in _NON_EMPTY_FORMATS else 0
    return ((lo is not None and not (is_int(lo) and lo <= floor))
            or (hi is not None and not (is_int(hi) and hi >= LOOSE_MAX_LENGTH)))


# escapes of a letter that xgrammar's regex reads (or refuses itself); it matches any other
# escaped letter as the letter, where Python's \A and \Z are anchors
_REGEX_ESCAPES = frozenset("acdefnrstvwDSWbBkpPux")


def _unread_escape(pattern: str) -> str | None:
    """The first escape of a letter in `pattern` that the grammar would match as the letter."""
    i = pattern.find("\\")
    while i >= 0 and i + 1 < len(pattern):
        c = pattern[i + 1]
        if c.isascii() and c.isalpha() and c not in _REGEX_ESCAPES:
            return f"the escape \\{c} at position {i}"
        i = pattern.find("\\", i + 2)
    return None


def _regex(value: Any, param: str) -> str:
    """A regex the grammar reads as the client means it (InvalidRequest naming `param`)."""
    bad = _unread_escape(_text(value, param))
    if bad:
        raise InvalidRequest(f"{param}: {bad} is not supported (the grammar would match the "
                             "letter itself); the whole output matches the regex, so anchors "
                             "are not needed", param=param)
    return value


def _structural_tag(value: Any, param: str) -> str:
    """An xgrammar structural tag whose JSON schemas are checked and compiled as a
    json_schema field's are (check_schema, grammar_schema)."""
    value = _json(value, param)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and isinstance(node.get("json_schema"), dict):
                check_schema(node["json_schema"], param)
                node["json_schema"] = grammar_schema(node["json_schema"])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return json.dumps(value)


def _choice(value: Any, param: str) -> str:
    if not isinstance(value, list) or not value or not all(
            isinstance(c, str) and c for c in value):
        raise InvalidRequest(f"{param} must be a non-empty list of non-empty strings",
                             param=param)
    return json.dumps(value)


def response_format(value: Any) -> GrammarSpec | None:
    """OpenAI's response_format."""
    p = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequest('response_format must be an object with a "type"', param=p)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "", p)
    if kind == "json_schema":
        js = value.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise InvalidRequest('response_format.json_schema must be an object with a '
                                 '"schema"', param=f"{p}.json_schema")
        return GrammarSpec("json_schema", _schema(js["schema"], f"{p}.json_schema.schema"),
                           f"{p}.json_schema.schema")
    raise InvalidRequest(f'response_format.type must be "text", "json_object" or '
                         f'"json_schema", got {kind!r}', param=f"{p}.type")


# vLLM's options beside the grammar: its output here is already compact, strict JSON
_STRUCTURED_OPTIONS = ("disable_fallback", "disable_any_whitespace",
                       "disable_additional_properties", "whitespace_pattern")


def structured_outputs(value: Any) -> GrammarSpec | None:
    """vLLM's structured_outputs object: exactly one of its grammar fields."""
    p = "structured_outputs"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("structured_outputs must be an object", param=p)
    makers = {
        "json": lambda v, q: GrammarSpec("json_schema", _schema(v, q), q),
        "regex": lambda v, q: GrammarSpec("regex", _regex(v, q), q),
        "choice": lambda v, q: GrammarSpec("choice", _choice(v, q), q),
        "grammar": lambda v, q: GrammarSpec("ebnf", _text(v, q), q),
        "json_object": lambda v, q: GrammarSpec("json_object", "", q) if v else None,
        "structural_tag": lambda v, q: GrammarSpec("structural_tag", _structural_tag(v, q), q),
    }
    unknown = [k for k in value if k not in makers and k not in _STRUCTURED_OPTIONS]
    if unknown:  # a misspelt grammar field would leave the output free
        raise InvalidRequest(f"structured_outputs has no field {unknown[0]!r}; it takes one of "
                             f"{', '.join(makers)}", param=f"{p}.{unknown[0]}")
    specs = [makers[k](v, f"{p}.{k}") for k, v in value.items()
             if k in makers and v is not None]
    specs = [s for s in specs if s is not None]
    if len(specs) > 1:
        raise InvalidRequest("structured_outputs takes one of json, regex, choice, grammar, "
                             "json_object, structural_tag", param=p)
    return specs[0] if specs else None


def guided(fields: dict[str, Any], prefix: str = "") -> list[GrammarSpec]:
    """vLLM's guided_* fields (and LightLLM's regular_constraint); errors name
    prefix + field."""
    specs = []
    for name, kind, conv in (("guided_json", "json_schema", _schema),
                             ("guided_regex", "regex", _regex),
                             ("regular_constraint", "regex", _regex),
                             ("guided_choice", "choice", _choice),
                             ("guided_grammar", "ebnf", _text)):
        param = prefix + name
        if fields.get(name) is not None:
            specs.append(GrammarSpec(kind, conv(fields[name], param), param))
    return specs


def logit_bias(value: Any) -> dict[int, float] | None:
    """OpenAI's {"token id": bias}; ranges are checked against the vocabulary by the engine."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("logit_bias must be an object of token id -> bias", param="logit_bias")
    out = {}
    for k, v in value.items():
        try:
            t = int(k)
        except (TypeError, ValueError):
            raise InvalidRequest(f"logit_bias key {k!r} is not a token id",
                                 param="logit_bias") from None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -100 <= v <= 100:
            raise InvalidRequest(f"logit_bias[{k}] must be a number in [-100, 100], got {v!r}",
                                 param="logit_bias")
        out[t] = float(v)
    return out or None


def constraint(grammars: list[GrammarSpec | None], *, allowed_token_ids: Any = None,
               bias: dict[int, float] | None = None, allowed_param: str = "allowed_token_ids"
               ) -> Constraint | None:
    """One Constraint from the request's grammar fields (at most one may be set)."""
    specs = [g for g in grammars if g is not None]
    if len(specs) > 1:
        raise InvalidRequest(f"{specs[0].param} and {specs[1].param} both constrain the output; "
                             f"send one", param=specs[1].param)
    if allowed_token_ids is not None and (not isinstance(allowed_token_ids, list)
                                          or not all(map(is_int, allowed_token_ids))):
        raise InvalidRequest("allowed_token_ids must be a list of token ids", param=allowed_param)
    if not specs and allowed_token_ids is None and not bias:
        return None
    return Constraint(specs[0] if specs else None, allowed_token_ids, bias)
