"""SGLang's constraint fields on the OpenAI endpoints, sent as SGLang's structured-output docs
send them (`extra_body={"regex": ...}`, `{"ebnf": ...}`; `json_schema` on /v1/completions):
the output follows them, as under vLLM's guided_regex/guided_grammar/guided_json. Each was
an unknown field, ignored with a log line, and the output ran free."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from live_server import at_once, http

# SGLang's docs' grammar (its EBNF, as xgrammar reads it)
EBNF = ('root ::= city " is the capital of " country\n'
        'city ::= "London" | "Paris" | "Berlin" | "Rome"\n'
        'country ::= "England" | "France" | "Germany" | "Italy"')
EBNF_TEXT = re.compile("(London|Paris|Berlin|Rome) is the capital of "
                       "(England|France|Germany|Italy)")
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
    "population": {"type": "integer", "minimum": 0, "maximum": 99999}},
    "required": ["name", "population"], "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_regex_ebnf_and_json_schema_constrain_the_output(client):
    """temperature 0.9: a free output would rarely match; each must, in full."""
    kw = dict(model=None, temperature=0.9, seed=3)
    regex, ebnf, schema, completion_regex = at_once(  # at once: the server batches them
        lambda: client.chat.completions.create(messages=ASK, max_tokens=8, **kw,
                                               extra_body={"regex": "(Paris|London)"}),
        lambda: client.chat.completions.create(messages=ASK, max_tokens=24, **kw,
                                               extra_body={"ebnf": EBNF}),
        lambda: client.completions.create(prompt="The capital of France as JSON:", **kw,
                                          max_tokens=40,
                                          extra_body={"json_schema": json.dumps(SCHEMA)}),
        lambda: client.completions.create(prompt="The capital of France is", max_tokens=8,
                                          **kw, extra_body={"regex": " (Paris|London)"}))
    assert regex.choices[0].message.content in ("Paris", "London")
    assert EBNF_TEXT.fullmatch(ebnf.choices[0].message.content)
    jsonschema.validate(json.loads(schema.choices[0].text), SCHEMA)
    assert completion_regex.choices[0].text in (" Paris", " London")
    assert {r.choices[0].finish_reason for r in (regex, ebnf, schema)} == {"stop"}


@pytest.mark.parametrize("path,body,param", [
    # one grammar a request, as SGLang and vLLM allow
    ("/v1/chat/completions", {"regex": "a", "guided_regex": "b"}, "regex"),
    ("/v1/chat/completions", {"ebnf": EBNF, "response_format": {"type": "json_object"}},
     "ebnf"),
    ("/v1/completions", {"json_schema": "{}", "regex": "a"}, "json_schema"),
    ("/v1/chat/completions", {"regex": 5}, "regex"),
    ("/v1/chat/completions", {"ebnf": "root ::= "}, "ebnf"),
    ("/v1/completions", {"json_schema": "{not json"}, "json_schema"),
])
def test_bad_or_second_grammar_is_400_naming_the_field(server, path, body, param):
    base = {"prompt": "x"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "x"}]}
    status, _, raw = http(server, "POST", path, json={**base, "max_tokens": 4, **body})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == param, err
