"""A boolean field read as vLLM's pydantic models read one: the JSON values pydantic's lax
mode takes for a `bool` (its default; vLLM's request models are not strict).

Clients written against vLLM send chat's `logprobs` as 1 (the legacy completions API's
`logprobs` is a count, and OpenAI's older SDK examples mixed the two) or as the string
"true" from a form or an environment variable; vLLM serves these, and refuses what pydantic
refuses (2, 0.5, "maybe", " true"). The rule, checked against pydantic 2.14 (pydantic-core's
lax bool validator, which reads JSON and Python input alike):

- true, false and null as they are;
- the integers 0 and 1, and the floats 0.0 and 1.0;
- the strings "0", "off", "f", "false", "n", "no" (false) and "1", "on", "t", "true", "y",
  "yes" (true), letters in any case, nothing around them.
"""

from __future__ import annotations

from aiollm.errors import InvalidRequest, shown_json

_FALSE = frozenset(("0", "off", "f", "false", "n", "no"))
_TRUE = frozenset(("1", "on", "t", "true", "y", "yes"))


def lax_bool(value: object, param: str) -> bool | None:
    """`value` (a decoded JSON value) as the bool pydantic's lax mode makes of it; None for
    null. Raises InvalidRequest naming `param` for any other value, as vLLM answers it with
    a 400 naming the field."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.lower() if value.isascii() else value
        if word in _FALSE:
            return False
        if word in _TRUE:
            return True
    raise InvalidRequest(f"{param} must be a boolean (true or false; 1, 0, \"true\" and "
                         f"\"false\" are read as they are by vLLM), got {shown_json(value)}",
                         param=param)
