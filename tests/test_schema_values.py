"""The JSON schema checks before xgrammar on what JSON Schema calls invalid, and on an
`enum` or `const` beside other keywords (aiollm/engine/grammar_values.py): xgrammar writes
the values alone, so a value a keyword beside it refuses is refused, and a schema whose
values all pass is taken (tests/test_client_schemas.py has the clients' own)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aiollm.engine.grammar_check import check_schema
from aiollm.errors import InvalidRequest


@pytest.mark.parametrize("schema,keyword", [
    # an empty anyOf/oneOf matches nothing: xgrammar compiled it, and the output was '' or
    # '{"a": }', no JSON at all; JSON Schema requires the three non-empty
    ({"anyOf": []}, "anyOf"),
    ({"type": "object", "properties": {"a": {"oneOf": []}}, "required": ["a"]}, "oneOf"),
    ({"allOf": []}, "allOf"),
    # sizes below 0: xgrammar took minItems -1 and maxLength -1 (as no bound)
    ({"type": "array", "items": {"type": "integer"}, "minItems": -1}, "minItems"),
    ({"type": "object", "properties": {"s": {"type": "string", "maxLength": -1}}}, "maxLength"),
    # ... beside an enum too, where xgrammar reads none of them
    ({"type": "string", "enum": ["a"], "maxLength": -1}, "maxLength"),
])
def test_a_schema_json_schema_calls_invalid_is_refused(schema, keyword):
    with pytest.raises(InvalidRequest, match=repr(keyword)) as e:
        check_schema(schema, "guided_json")
    assert e.value.param == "guided_json"


@pytest.mark.parametrize("schema, says", [
    ({"type": "string", "enum": ["a", 1]}, "value 1 .* 'type' \"string\""),
    ({"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2.5]}}},
     "value 2.5 .* 'type' \"integer\".* at /properties/n "),
    ({"type": ["string", "null"], "const": 3}, "value 3 "),
    ({"type": "boolean", "enum": [0, 1]}, "value 0 "),
    ({"type": "string", "enum": ["a", None]}, "value null "),
    # other keywords beside an enum: dropped too ("a" was written under minLength 2)
    ({"type": "string", "enum": ["a", "bbb"], "minLength": 2}, "value \"a\" .* 'minLength' 2"),
    ({"type": "string", "enum": ["abc"], "maxLength": 2}, "'maxLength' 2"),
    ({"type": "integer", "enum": [1, 50], "maximum": 10}, "value 50 .* 'maximum' 10"),
    ({"type": "integer", "enum": [0, 1], "minimum": 1}, "value 0 .* 'minimum' 1"),
    ({"type": "number", "enum": [1, 2], "exclusiveMaximum": 2}, "value 2 .*'exclusiveMaximum'"),
    ({"type": "number", "enum": [1], "exclusiveMinimum": 1}, "value 1 .*'exclusiveMinimum'"),
    ({"type": "integer", "enum": [3], "minimum": 3, "exclusiveMinimum": True},
     "'exclusiveMinimum' true"),  # OpenAPI 3.0's flag
    ({"type": "integer", "enum": [9, 10], "maximum": 10, "exclusiveMaximum": True},
     "value 10 .*'exclusiveMaximum' true"),
    # a value past the flag's end: the end refuses it, and removing the flag would not do
    ({"type": "integer", "enum": [2], "minimum": 3, "exclusiveMinimum": True},
     "value 2 .*'minimum' 3 with 'exclusiveMinimum' true .*: remove the value, or the "
     "'minimum'$"),
    ({"type": "number", "enum": [10], "maximum": 10, "exclusiveMaximum": True},
     "'maximum' 10 with 'exclusiveMaximum' true .*: remove the value, or the "
     "'exclusiveMaximum'$"),
    ({"type": "integer", "enum": [1], "minimum": "0", "exclusiveMinimum": True},
     "'minimum' beside .* value 1, which is not tested"),
    ({"type": "number", "enum": [0.3, 0.35], "multipleOf": 0.1}, "value 0.35 .*'multipleOf'"),
    # tested exactly past decimal's 28 digits too (0.5 / 3e-300 is 1.66...e299), not
    # refused as untested
    ({"type": "number", "enum": [0.5], "multipleOf": 3e-300},
     "value 0.5 of .* 'multipleOf' 3e-300 beside it refuses"),
    ({"type": "number", "const": 1e300, "multipleOf": 0.7}, "value 1e\\+300 of .* refuses"),
    ({"type": "array", "enum": [[1], []], "minItems": 1}, "value \\[\\] .* 'minItems' 1"),
    ({"type": "object", "const": {"a": 1}, "required": ["b"]}, "'required'"),
    ({"type": "object", "enum": [{"a": 1}], "maxProperties": 0}, "'maxProperties' 0"),
    # keywords on an object's or array's members are not tested: refused beside one
    ({"type": "object", "enum": [{"a": 1}], "properties": {"a": {"type": "string"}}},
     "'properties' beside .* value {\"a\":1}, which is not tested"),
    ({"type": "array", "const": [1, 1], "uniqueItems": True}, "'uniqueItems' beside"),
    ({"enum": [[1]], "items": {"type": "string"}}, "'items' beside"),
    # nor is a pattern (no regex runs on a client's values), nor a bound that is no number
    ({"type": "string", "const": "x", "pattern": "^y"}, "'pattern' beside .* \"x\""),
    ({"type": "string", "enum": ["a"], "pattern": "(?<x>a)"}, "'pattern' beside"),
    ({"type": "integer", "enum": [1], "maximum": "9"}, "'maximum' beside"),
])
def test_an_enum_value_a_keyword_beside_it_refuses_is_refused(schema, says):
    """xgrammar writes an enum (or const) by its values alone and drops the keywords
    beside it: {"type": "string", "enum": ["a", 1]} wrote 1, which the schema refuses."""
    with pytest.raises(InvalidRequest, match=says) as e:
        check_schema(schema, "guided_json")
    assert e.value.param == "guided_json"


@pytest.mark.parametrize("schema", [
    {"type": "string", "enum": ["a", "b"]},
    {"type": "string", "enum": ["a"], "title": "A", "description": "d", "default": "a"},
    {"type": "number", "enum": [1, 2.5]},
    {"type": "integer", "enum": [1, 2.0]},
    {"type": ["string", "null"], "enum": ["a", None]},
    {"type": "object", "const": {"a": 1}},
    {"type": "array", "enum": [[1], []]},
    {"type": "string", "enum": ["a", None], "nullable": True},  # OpenAPI 3.0's null
    # every value passes the keywords beside it
    {"type": "integer", "enum": [1, 10], "minimum": 1, "maximum": 10},
    {"type": "integer", "enum": [2], "exclusiveMinimum": 1, "exclusiveMaximum": 3},
    {"type": "integer", "enum": [2], "minimum": 2, "exclusiveMinimum": False},
    {"type": "integer", "enum": [5], "maximum": 10, "exclusiveMaximum": True},  # not 1
    {"type": "number", "enum": [0.3, 0.6], "multipleOf": 0.1},
    {"type": "integer", "enum": [7 * 10**30], "multipleOf": 7},  # past decimal's 28 digits
    {"type": "number", "enum": [0.5, 1e308], "multipleOf": 1e-300},  # floats past them too
    {"type": "number", "enum": [7e30, 7e300], "multipleOf": 7},
    {"type": "number", "enum": [10**400], "multipleOf": 0.5},
    {"type": "string", "enum": ["ab", "cde"], "minLength": 2, "maxLength": 3},
    {"type": "array", "enum": [[1]], "minItems": 1, "maxItems": 1, "uniqueItems": False},
    {"type": "object", "const": {"a": 1}, "required": ["a"], "minProperties": 1},
    # a format is an annotation (OpenAPI's int32, Gemini's enum)
    {"type": "string", "enum": ["x"], "format": "date"},
    # keywords on another type than the values' assert nothing on them
    {"enum": ["a", 1], "minLength": 1, "minimum": 0, "items": {}, "properties": {}},
    # xgrammar's rules for writing a string or an integer do not apply to values
    {"type": "string", "enum": ["a"], "minLength": 1, "format": "email"},
    {"type": "integer", "enum": [4], "multipleOf": 2, "minimum": 0},
    {"type": "object", "const": {"a": 1}, "required": ["a"]},
])
def test_an_enum_the_keywords_beside_it_allow_is_accepted(schema):
    check_schema(schema, "guided_json")


def test_a_pattern_beside_an_enum_is_never_run_on_its_values():
    """A pattern beside an enum is refused untested, not run by Python's re on the values:
    re backtracks (2**n steps for "^(a+)+$" on n a's and a "!") holding the GIL, and the
    check runs on the event loop for tools: one such request would hold the server."""
    schema = {"type": "string", "enum": ["a" * 40 + "!"], "pattern": "^(a+)+$"}
    code = ("import sys; from aiollm.engine.grammar_check import check_schema\n"
            f"try: check_schema({schema!r}, 'guided_json')\n"
            "except Exception as e: print(e); sys.exit(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3 and "'pattern' beside" in done.stdout, done


@pytest.mark.parametrize("schema, takes, refuses", [
    ({"type": "integer", "minimum": 0, "maximum": 3, "exclusiveMaximum": True}, "2", "3"),
    ({"type": "integer", "minimum": 0, "exclusiveMinimum": True}, "1", "0"),
    ({"type": "number", "minimum": 1.5, "exclusiveMinimum": False}, "1.5", "1.4"),
    ({"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 70,
      "exclusiveMinimum": True}, "7", "0"),
])
def test_openapi_3_0s_exclusive_flags_hold_the_output(schema, takes, refuses):
    """OpenAPI 3.0 (JSON Schema draft 4) writes exclusiveMinimum/Maximum as a flag on
    minimum/maximum; xgrammar refused the schema ("Value must be a number"). It is compiled
    as 2020-12 writes it, and holds the output to it."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    from aiollm.engine.grammar_check import compilable
    from aiollm.sampling_params import GrammarSpec

    grammar = xgr.Grammar.from_json_schema(
        compilable(GrammarSpec("json_schema", json.dumps(schema), "guided_json")))
    assert _is_grammar_accept_string(grammar, takes)
    assert not _is_grammar_accept_string(grammar, refuses)


def test_a_multiple_of_beside_an_openapi_3_0_range_of_one_end_is_refused():
    """{"minimum": 0, "exclusiveMinimum": true} is one end: xgrammar would drop the
    multipleOf beside it, as beside {"exclusiveMinimum": 0}."""
    schema = {"type": "integer", "multipleOf": 7, "minimum": 0, "exclusiveMinimum": True,
              "exclusiveMaximum": False}
    with pytest.raises(InvalidRequest, match="'multipleOf' beside a range with one end"):
        check_schema(schema, "guided_json")
