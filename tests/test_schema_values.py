"""The JSON schema checks before xgrammar on what JSON Schema calls invalid, and on an
`enum` or `const` beside other keywords: xgrammar writes the values alone."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("schema,keyword", [
    # an empty anyOf/oneOf matches nothing: xgrammar compiled it, and the output was '' or
    # '{"a": }', no JSON at all; JSON Schema requires the three non-empty
    ({"anyOf": []}, "anyOf"),
    ({"type": "object", "properties": {"a": {"oneOf": []}}, "required": ["a"]}, "oneOf"),
    ({"allOf": []}, "allOf"),
    # sizes below 0: xgrammar took minItems -1 and maxLength -1 (as no bound)
    ({"type": "array", "items": {"type": "integer"}, "minItems": -1}, "minItems"),
    ({"type": "object", "properties": {"s": {"type": "string", "maxLength": -1}}}, "maxLength"),
])
def test_a_schema_json_schema_calls_invalid_is_refused(schema, keyword):
    from aiollm.engine.grammar_check import check_schema
    from aiollm.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=repr(keyword)) as e:
        check_schema(schema, "guided_json")
    assert e.value.param == "guided_json"


@pytest.mark.parametrize("schema", [
    {"type": "string", "enum": ["a", 1]},
    {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2.5]}}},
    {"type": ["string", "null"], "const": 3},
    {"type": "boolean", "enum": [0, 1]},
    {"type": "string", "enum": ["a", None]},
    # other assertions beside an enum: dropped too ("a" was written under minLength 2)
    {"type": "string", "enum": ["a", "bbb"], "minLength": 2},
    {"type": "integer", "enum": [1, 50], "maximum": 10},
    {"type": "string", "const": "x", "pattern": "^y"},
])
def test_an_enum_value_of_another_type_than_the_type_beside_it_is_refused(schema):
    """xgrammar writes an enum (or const) by its values alone and drops the "type" beside it:
    {"type": "string", "enum": ["a", 1]} wrote 1, which the schema refuses."""
    from aiollm.engine.grammar_check import check_schema
    from aiollm.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="'type'|beside 'enum'") as e:
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
])
def test_an_enum_of_the_type_beside_it_is_accepted(schema):
    from aiollm.engine.grammar_check import check_schema

    check_schema(schema, "guided_json")
