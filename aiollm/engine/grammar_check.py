"""What a grammar must be before it is compiled: the checks of what xgrammar would compile
without enforcing it, and the form it is compiled in. Both the Engine API and the HTTP layer
reach them through one call, `compilable()`, which Grammars runs before each compilation.

Refused (InvalidRequest naming the grammar's field) rather than silently dropped: a JSON
schema keyword xgrammar accepts but does not enforce (the output would not validate), a
schema nested or enumerating past what compiles in a few seconds, a regex escape xgrammar
would match as its letter. A schema is compiled as `grammar_schema()` writes it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from aiollm.engine.grammar_values import RANGE, range_bounds, value_refusal
from aiollm.errors import InvalidRequest, shown_json
from aiollm.sampling_params import GrammarSpec, is_int

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
_SIZES = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_OBJECT_SHAPES = ("properties", "patternProperties", "additionalProperties", "propertyNames",
                  "unevaluatedProperties")


def check_schema(schema: dict, param: str) -> None:
    """Refuse (InvalidRequest naming `param` and the keyword's JSON pointer) a JSON schema the
    grammar cannot hold the output to, or one too large to compile quickly."""
    enums = check_nesting(schema, param)
    if enums > MAX_ENUM_VALUES:
        raise InvalidRequest(f"{param} has {enums} enum values; at most {MAX_ENUM_VALUES}",
                             param=param)
    _check_keywords(schema, "", param)


def check_nesting(schema: Any, param: str) -> int:
    """The number of enum values in the JSON schema `schema`; InvalidRequest naming `param`
    where it nests deeper than MAX_SCHEMA_DEPTH levels. The bound holds where no grammar
    is built too (tools only rendered): a chat template's walk over a schema some 170
    levels deep ran out of Python's recursion (a 400 blaming the messages; the Python API's
    tools, unbounded by the HTTP body's decoder, a RecursionError)."""
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
    return enums


def grammar_schema(schema: dict) -> dict:
    """The schema to compile: a copy where an array sized without items (minItems/maxItems,
    no items or prefixItems) gets `items: {}` and an object sized without properties gets
    `additionalProperties: {}`. JSON Schema allows any items there; xgrammar's strict mode
    (no items or properties but those named) allowed none: minItems 1 did not compile and
    maxItems alone allowed only []. OpenAPI 3.0's exclusive flags are written as numbers
    (grammar_values.range_bounds)."""
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
        if any(isinstance(node.get(k), bool) for k in ("exclusiveMinimum", "exclusiveMaximum")):
            bounds = range_bounds(node)
            for key in RANGE:
                node.pop(key, None)
            node.update(bounds)
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
    _check_shapes(node, at, param)
    combinator = next((k for k in _COMBINATORS if k in node), None)
    if combinator is not None:
        beside = next((k for k in (*_COMBINATORS, *_ASSERTIONS)
                       if k in node and k != combinator), None)
        if beside is not None:
            refuse(f"{beside!r} beside {combinator!r}",
                   f"move it into the schemas {combinator!r} names")
    ref = node.get("$ref")
    if isinstance(ref, str) and not (ref == "#" or ref.startswith("#/")):
        refuse(f"the $ref {shown_json(ref)}", "only references into the schema itself ('#', "
               "'#/...') are resolved; inline the schema it names")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        refuse("'allOf' of more than one schema")
    if isinstance(node.get("enum"), list) or "const" in node:
        # written as the values alone: they are what the keywords beside must allow, and
        # what xgrammar makes of those keywords (below) does not matter
        refusal = value_refusal(node)
        if refusal is not None:
            refuse(*refusal)
    else:
        _check_written(node, refuse)
    for step, sub in _subschemas(node):
        _check_keywords(sub, at + step, param)


def _check_written(node: dict, refuse: Callable[..., None]) -> None:
    """Refuse (through `refuse(what, fix)`) the keywords of a schema node without enum or
    const that xgrammar would write without enforcing them."""
    required, props = node.get("required"), node.get("properties")
    # xgrammar writes only the properties `properties` names: another required one never
    # appears, whatever additionalProperties or patternProperties allow
    missing = next((r for r in required if isinstance(r, str) and not (
        isinstance(props, dict) and r in props)), None) if isinstance(required, list) else None
    if missing is not None:
        refuse(f"the required property {shown_json(missing)}, which 'properties' does not name",
               "add it to 'properties'")
    if node.get("uniqueItems") is True:
        refuse("'uniqueItems'")
    mult = node.get("multipleOf")
    if mult is not None and not (node.get("type") == "integer" and isinstance(mult, int)):
        refuse("'multipleOf' other than an integer's by an integer")
    dropped = _dropped_multiple(node) if mult is not None else None
    if dropped is not None:
        refuse(*dropped)
    pattern = node.get("pattern")
    if isinstance(pattern, str) and _unread_escape(pattern):
        refuse(f"{_unread_escape(pattern)} of 'pattern'")
    if isinstance(pattern, str) and _LOOKAROUND.search(pattern):
        refuse("a lookaround in 'pattern'")
    if isinstance(pattern, str) and ("minLength" in node or "maxLength" in node):
        refuse("'pattern' with 'minLength'/'maxLength'")
    # xgrammar enforces a format (email, date, uri...) by dropping the string's pattern and
    # lengths
    if isinstance(node.get("format"), str) and isinstance(pattern, str):
        refuse("'pattern' with 'format'", "remove one of them")
    if isinstance(node.get("format"), str) and _binding_lengths(node):
        refuse("'format' with 'minLength'/'maxLength'",
               f"remove them (a maxLength of {LOOSE_MAX_LENGTH} or more is accepted)")


def _check_shapes(node: dict, at: str, param: str) -> None:
    """InvalidRequest naming `param` and the keyword's place when a keyword that holds
    schemas or types is of the wrong JSON type ('properties': 5, 'type': 5). xgrammar
    refused them itself, but its error was named after the whole grammar: for tools,
    param "tools" and no word of which tool or where."""
    def wrong(key: str, want: str) -> None:
        # shown_json: json.dumps raised on the Engine API's bytes or huge integers
        raise InvalidRequest(f"{param}: {key!r} at {at or '/'} must be {want}, got "
                             f"{shown_json(node[key])}", param=param)

    for key in _SCHEMA_MAPS:
        if key in node and not isinstance(node[key], dict):
            wrong(key, "an object of schemas")
    for key in _SCHEMA_LISTS:
        if key != "items" and key in node and not isinstance(node[key], list):
            wrong(key, "an array of schemas")
    # an empty anyOf/oneOf matches nothing, and xgrammar let the output end there ('' or
    # '{"a": }'); JSON Schema requires all three non-empty
    for key in ("anyOf", "oneOf", "allOf"):
        if node.get(key) == []:
            wrong(key, "a non-empty array of schemas")
    # xgrammar refuses most bad sizes itself but took minItems -1 and maxLength -1 as no bound
    for key in _SIZES:
        if key in node and not (is_int(node[key]) and node[key] >= 0):
            wrong(key, "a non-negative integer")
    kind = node.get("type")
    if "type" in node and not (isinstance(kind, str) or (
            isinstance(kind, list) and kind and all(isinstance(k, str) for k in kind))):
        wrong("type", "a type name or an array of type names")
    if "required" in node and not (isinstance(node["required"], list) and all(
            isinstance(r, str) for r in node["required"])):
        wrong("required", "an array of property names")


# xgrammar 0.2.9 holds an integer's multipleOf alone up to this value, and beside a range only
# when it has both ends at most this many integers apart; else it drops it with a warning
MAX_MULTIPLE_OF = 1024
MAX_MULTIPLE_OF_RANGE = 10_000


def _dropped_multiple(node: dict) -> tuple[str, str] | None:
    """Why xgrammar would drop this integer schema's multipleOf and how to keep it, or None.
    Bounds that are no whole numbers are left to xgrammar, which refuses them itself."""
    mult = node["multipleOf"]
    if mult == 1:
        return None
    if mult > MAX_MULTIPLE_OF:
        return f"'multipleOf' above {MAX_MULTIPLE_OF}", "remove it"
    bounds = range_bounds(node)
    ends = [bounds.get(k) for k in RANGE]
    if not all(e is None or is_int(e) or (isinstance(e, float) and e.is_integer())
               for e in ends):
        return None
    lows = [int(e) + step for e, step in zip(ends[:2], (0, 1)) if e is not None]
    highs = [int(e) - step for e, step in zip(ends[2:], (0, 1)) if e is not None]
    if bool(lows) != bool(highs):
        return ("'multipleOf' beside a range with one end", "give the range both ends, at "
                f"most {MAX_MULTIPLE_OF_RANGE} integers apart, or none")
    if lows and min(highs) - max(lows) + 1 > MAX_MULTIPLE_OF_RANGE:
        return (f"'multipleOf' over a range of more than {MAX_MULTIPLE_OF_RANGE} integers",
                f"narrow the range to at most {MAX_MULTIPLE_OF_RANGE}, or remove it")
    return None


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


def check_regex(pattern: str, param: str) -> None:
    """Refuse (InvalidRequest naming `param`) a regex the grammar would not read as the
    client means it."""
    bad = _unread_escape(pattern)
    if bad:
        raise InvalidRequest(f"{param}: {bad} is not supported (the grammar would match the "
                             "letter itself); the whole output matches the regex, so anchors "
                             "are not needed", param=param)


def _parsed(text: str, param: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"{param} is not valid JSON: {e}", param=param) from None


def compilable(spec: GrammarSpec) -> str:
    """The text xgrammar compiles for `spec`: a JSON schema checked (check_schema) and
    written by grammar_schema, each JSON schema of a structural tag too, a regex checked
    (check_regex); other kinds as they are. Raises InvalidRequest naming spec.param.
    Runs where the grammar is compiled: a worker thread, off the event loop."""
    if spec.kind == "regex":
        check_regex(spec.value, spec.param)
    if spec.kind not in ("json_schema", "structural_tag"):
        return spec.value
    value = _parsed(spec.value, spec.param)
    if spec.kind == "json_schema":
        if not isinstance(value, dict):
            raise InvalidRequest(f"{spec.param} must be a JSON schema object", param=spec.param)
        check_schema(value, spec.param)
        return json.dumps(grammar_schema(value))
    value = _from_legacy_tag(value, spec.param)
    stack = [value]
    while stack:  # a structural tag: its JSON schemas are held to the same rules
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and isinstance(node.get("json_schema"), dict):
                check_schema(node["json_schema"], spec.param)
                node["json_schema"] = grammar_schema(node["json_schema"])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return json.dumps(value)


def _from_legacy_tag(tag: Any, param: str) -> Any:
    """A structural tag in its first form, {"structures": [{"begin", "schema", "end"}...],
    "triggers": [...]} (vLLM's examples and its response_format of type structural_tag
    write it; vLLM compiles it by xgrammar's legacy call), as the same grammar in the form
    xgrammar reads now: a triggered_tags format, each structure a tag whose content is its
    JSON schema (what xgrammar's StructuralTag.from_legacy_structural_tag builds). Any
    other tag is returned as it is. Raises InvalidRequest naming `param` for a first-form
    tag of the wrong shape (vLLM answered it with a KeyError)."""
    if not isinstance(tag, dict) or "structures" not in tag or "format" in tag:
        return tag
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise InvalidRequest(f"{param}: triggers must be a list of strings (with "
                             "structures)", param=param)
    if not isinstance(structures, list):
        raise InvalidRequest(f"{param}: structures must be a list of objects with begin, "
                             "schema and end", param=param)
    tags = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict):
            raise InvalidRequest(f"{param}: structures[{i}] must be an object with begin, "
                                 "schema and end", param=param)
        for key in ("begin", "end"):
            if not isinstance(s.get(key), str):
                raise InvalidRequest(f"{param}: structures[{i}].{key} must be a string",
                                     param=param)
        schema = s.get("schema")
        if isinstance(schema, str):  # xgrammar's StructuralTagItem takes the schema's text
            schema = _parsed(schema, param)
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{param}: structures[{i}].schema must be a JSON schema "
                                 "object", param=param)
        tags.append({"type": "tag", "begin": s["begin"], "end": s["end"],
                     "content": {"type": "json_schema", "json_schema": schema}})
    return {"type": "structural_tag",
            "format": {"type": "triggered_tags", "triggers": triggers, "tags": tags}}
