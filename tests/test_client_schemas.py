"""JSON schemas as real clients write them (pydantic v2 models, the openai SDK's helpers,
LangChain-style tools, OpenAPI and Gemini-style declarations) pass the checks before
xgrammar (aiollm/engine/grammar_check.py) and compile: a check that refuses one of them
refuses every request of that client."""

from __future__ import annotations

import enum
import json
from typing import Annotated, List, Literal, Optional, Union

import openai
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field, TypeAdapter, conint, conlist, constr

from aiollm.engine.grammar_build import grammar_of
from aiollm.sampling_params import GrammarSpec


class Color(str, enum.Enum):
    red = "red"
    green = "green"


class Level(enum.IntEnum):
    low = 1
    high = 2


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = Field(9, ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    bark: float = Field(gt=0, lt=100)


class Address(BaseModel):
    street: constr(min_length=1, max_length=100)
    zip: str = Field(pattern=r"^\d{5}$", examples=["12345"])


class Order(BaseModel):
    """An order, with the field kinds pydantic writes enums, Literals and constraints for."""
    color: Color = Color.red
    level: Level = Field(Level.low, title="Level", description="how urgent")
    maybe: Optional[Color] = None
    size: Literal["s", "m", "l"] = Field("m", description="size", examples=["m"])
    one: Literal["only"] = "only"
    flag: Literal[True] = True
    mixed: Literal["a", 1, None] = None
    old: Color = Field(Color.green, deprecated=True)
    extra: Color = Field(Color.red, json_schema_extra={"examples": ["red"], "x-order": 1})
    code: Annotated[Literal["ab", "cde"], Field(min_length=2)] = "ab"
    pet: Union[Cat, Dog] = Field(discriminator="kind")
    pets: List[Annotated[Union[Cat, Dog], Field(discriminator="kind")]] = []
    ship_to: Address
    stops: conlist(Address, min_length=1, max_length=3)
    count: conint(gt=0, le=10) = 1
    tags: List[Color] = []


def _pydantic_schemas() -> dict[str, dict]:
    return {
        "model_json_schema": Order.model_json_schema(),
        "serialization": Order.model_json_schema(mode="serialization"),
        "pydantic_function_tool": openai.pydantic_function_tool(Order)["function"]["parameters"],
        "strict": to_strict_json_schema(Order),
        "Literal with min_length": TypeAdapter(
            Annotated[Literal["ab", "cde"], Field(min_length=2)]).json_schema(),
        "IntEnum": TypeAdapter(Level).json_schema(),
    }


HAND_WRITTEN = {
    # LangChain's tools from a pydantic model: $refs inlined, an enum with its annotations
    "langchain": {"type": "object", "properties": {"unit": {
        "title": "Unit", "description": "the unit", "default": "c", "enum": ["c", "f"],
        "type": "string", "examples": ["c"], "deprecated": False, "$comment": "x"}},
        "required": []},
    "const with its type": {"type": "object", "properties": {"k": {"const": "x",
                                                                   "type": "string"}}},
    "nullable enum": {"type": ["string", "null"], "enum": ["a", "b", None]},
    "OpenAPI nullable": {"type": "string", "enum": ["a", None], "nullable": True},
    "integer enum as number": {"type": "number", "enum": [1, 2, 3]},
    "whole float as integer": {"type": "integer", "enum": [1.0]},
    # OpenAPI declarations keep a format beside an enum: an annotation, never asserted there
    "OpenAPI int32 enum": {"type": "integer", "format": "int32", "enum": [1, 2, 4]},
    "Gemini enum format": {"type": "string", "format": "enum", "enum": ["north", "south"]},
    # a range, lengths or multipleOf that every value of the enum keeps
    "enum in its range": {"type": "integer", "enum": [1, 2, 3], "minimum": 1, "maximum": 3},
    "OpenAPI 3.0 exclusive": {"type": "integer", "enum": [2], "minimum": 1,
                              "exclusiveMinimum": True},
    "enum in its lengths": {"type": "string", "enum": ["yes", "no"], "minLength": 1,
                            "maxLength": 3},
    "enum of multiples": {"type": "number", "enum": [0.5, 1.5], "multipleOf": 0.5},
    "array const in its size": {"type": "array", "const": [1], "minItems": 1},
    "object const with its keys": {"type": "object", "const": {"a": 1}, "required": ["a"]},
    # a keyword of another type than every value is no assertion on them
    "string enum beside items": {"type": ["string", "array"], "enum": ["a"], "items": {}},
}


@pytest.mark.parametrize("name, schema", [*_pydantic_schemas().items(), *HAND_WRITTEN.items()])
def test_a_clients_schema_is_taken(name, schema):
    grammar_of(GrammarSpec("json_schema", json.dumps(schema), "response_format"))
