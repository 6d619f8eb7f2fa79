"""A JSON body that names a field twice (`{"max_tokens": 5, "max_tokens": -1}`), through the
real server: the last value wins, as Python's json (FastAPI's, so vLLM's and LightLLM's
parser) keeps it, and that value is the one checked and the one used, on every path a body
is decoded by: a check of one value and the use of another would let a refused value
through."""

from __future__ import annotations

import json

import pytest
from live_server import http, refused_status

HI = '[{{"role": "user", "content": "hi"}}]'  # doubled braces: a format template
# (path, body with the length field twice: {first} then {last}, the tokens it generated)
ROUTES = [
    ("/v1/completions", '{{"prompt": "hi", "ignore_eos": true, '
     '"max_tokens": {first}, "max_tokens": {last}}}', "max_tokens"),
    ("/v1/chat/completions", '{{"messages": ' + HI + ', "ignore_eos": true, '
     '"max_tokens": {first}, "max_tokens": {last}}}', "max_tokens"),
    ("/generate", '{{"inputs": "hi", "parameters": {{"ignore_eos": true, '
     '"max_new_tokens": {first}, "max_new_tokens": {last}}}}}', "parameters.max_new_tokens"),
]


def _post(server, path: str, body: str) -> tuple[int, dict]:
    status, _, raw = http(server, "POST", path, data=body.encode(),
                          headers={"Content-Type": "application/json"})
    return status, json.loads(raw)


def _generated(path: str, out: dict) -> int:
    return (out["count_output_tokens"] if path == "/generate"
            else out["usage"]["completion_tokens"])


@pytest.mark.parametrize("path,template,param", ROUTES, ids=[p for p, _, _ in ROUTES])
def test_the_last_value_of_a_field_named_twice_is_checked_and_used(server, path, template,
                                                                   param):
    """A valid value then a refused one: refused, naming the field; a refused value then a
    valid one: served with the valid one (3 tokens generated), as pydantic's models read
    the dict Python's json makes. Both held before this test was written: msgspec sets a
    field again for each time the body names it."""
    status, out = _post(server, path, template.format(first=5, last=-1))
    assert status == refused_status(path) and out["error"]["param"] == param, out
    status, out = _post(server, path, template.format(first=-1, last=3))
    assert status == 200 and _generated(path, out) == 3, out
    # an earlier value of the wrong type is dropped too, unchecked
    status, out = _post(server, path, template.format(first='"three"', last=3))
    assert status == 200 and _generated(path, out) == 3, out


@pytest.mark.parametrize("path,template,param", ROUTES, ids=[p for p, _, _ in ROUTES])
def test_a_dropped_duplicate_is_no_error_beside_a_whole_float(server, path, template, param):
    """An integer field sent as a whole float elsewhere in the body (`"n": 1.0`) took the
    body through a second decode of its bytes, which checked every value of a field named
    twice: the dropped one, of the wrong type, refused a body served without the float.
    The last value wins there too, the whole float's own field's included."""
    status, out = _post(server, path, template.format(first='"three"', last="3.0"))
    assert status == 200 and _generated(path, out) == 3, out
    body = template.format(first=3, last=3)
    twice = '"seed": "x", "seed": 7.0' if path == "/generate" else '"n": "x", "n": 1.0'
    if path == "/generate":
        body = body.replace('"parameters": {', '"parameters": {' + twice + ", ")
    else:
        body = body.replace("{", "{" + twice + ", ", 1)
    status, out = _post(server, path, body)
    assert status == 200 and _generated(path, out) == 3, (body, out)


@pytest.mark.parametrize("path,template,param", ROUTES, ids=[p for p, _, _ in ROUTES])
def test_a_refused_body_names_a_kept_value_not_a_dropped_duplicate(server, path, template,
                                                                   param):
    """A body refused for another field, whose length field is named twice (a value of the
    wrong type, then a valid one): the error names the field at fault, not the dropped
    value, which is never used; a second decode of the bytes for the error named it
    (`max_tokens: expected an integer`) and sent the client to fix a field already fine.
    The same beside a whole float, and for a float that is no whole one."""
    prefix = "parameters." if path == "/generate" else ""
    for bad, field in (('"temperature": "hot"', "temperature"), ('"seed": 2.5', "seed"),
                       ('"seed": 2.0, "temperature": "hot"', "temperature")):
        body = template.format(first='"three"', last=3)  # after both values: read last
        end = 2 if path == "/generate" else 1
        body = body[:-end] + ", " + bad + body[-end:]
        status, out = _post(server, path, body)
        assert status == refused_status(path), (body, out)
        assert out["error"]["param"] == prefix + field, (body, out)
