"""errors.shown_json, the quoting of a client's bad value in an error (a role, a status):
as JSON spells it, cut to 100 characters, and never failing itself: the Engine API and
offline LLM.chat take Python values no JSON body holds (a lone surrogate, NaN, bytes, an
integer past Python's 4,300 digits, a list nested 100,000 deep)."""

from __future__ import annotations

import pytest

from aiollm.engine.chat_messages import checked_messages
from aiollm.errors import InvalidRequest, shown_json


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value, says", [
    ("foo", '"foo"'),
    (None, "null"),
    (True, "true"),
    ({"a": [1, 2.5, None]}, '{"a":[1,2.5,null]}'),
    ("é\n", '"é\\n"'),
    ("x" * 101, f'"{"x" * 100}"...'),
    ([1] * 100_000, "[" + "1," * 49 + "1..."),
    ({"k": "v" * 200}, '{"k":"' + "v" * 94 + "..."),
    ("\ud800", '"\\ud800"'),  # JSON's escape for it: UTF-8 has none
    (float("nan"), "nan"),  # no JSON spelling: Python's words, not null
    (float("inf"), "inf"),
    (b"ab", "b'ab'"),  # not its base64 ("YWI="), which msgspec would write
    (_nested(100_000), "[" * 100 + "..."),
])
def test_a_value_is_spelled_as_json_cut_to_100(value, says):
    assert shown_json(value) == says


def test_an_integer_past_pythons_digits_is_named_not_raised():
    assert shown_json(10 ** 5000) == "(an integer of 16610 bits)"


@pytest.mark.parametrize("role", ["\ud800", _nested(100_000), 10 ** 5000, float("nan")],
                         ids=["surrogate", "deep", "huge_integer", "nan"])
def test_the_engine_apis_bad_role_is_an_invalid_request(role):
    """A chat message's role as LLM.chat and Engine take it (Python values): a 400-kind
    error naming messages[0].role, where a lone surrogate raised UnicodeEncodeError, a
    deep list RecursionError, a huge integer ValueError, and NaN was quoted as null."""
    with pytest.raises(InvalidRequest) as e:
        checked_messages([{"role": role, "content": "Hi"}])
    assert e.value.param == "messages[0].role"
    assert "null" not in str(e.value)


@pytest.mark.parametrize("value, says", [
    ("get\u200bweather", '"get\\u200bweather"'),  # a zero-width space: looked valid
    ("llama\u00a0", '"llama\\u00a0"'),  # a no-break space: looked like a space
    ("a\u202eb", '"a\\u202eb"'),  # right-to-left override: turned the rest around
    ("\x7f\u2028", '"\\u007f\\u2028"'),
    ("\U000e0041", '"\\udb40\\udc41"'),  # an invisible tag character, as a JSON pair
    ("é\ud800", '"é\\ud800"'),  # the rest of the string is left as it was
    (["a\u200b"], '["a\\u200b"]'),
])
def test_a_character_that_prints_as_nothing_is_escaped(value, says):
    """Python's repr() escaped what prints as nothing or as a blank; JSON writes it as it is,
    so a tool name or model with a zero-width space was quoted as if it were right. Its JSON
    escape keeps the bad part seen, and the quote still JSON."""
    assert shown_json(value) == says


@pytest.mark.parametrize("required", [[b"x"], [10 ** 5000], [float("nan")]],
                         ids=["bytes", "huge_integer", "nan"])
def test_the_engine_apis_bad_required_is_an_invalid_request(required):
    """A tool's schema in Python values, held to the grammar's checks (check_tools'
    default: a request whose tool_choice builds a grammar): its 'required' of the wrong kind
    is a 400-kind error naming the tool's parameters, where bytes raised TypeError and a
    huge integer ValueError from the json.dumps that quoted it. (Engine.chat and LLM.chat,
    which only render tools, refuse such values through check_tools' JSON check.)"""
    from aiollm.engine.chat_tools import check_tools

    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {}, "required": required}}}
    with pytest.raises(InvalidRequest) as e:
        check_tools([tool])
    assert e.value.param == "tools[0].function.parameters"
    assert "'required' at / must be an array of property names" in str(e.value)
