"""Structured output and tool calling against the real server (default model, CPU), with the
official `openai` client: JSON schemas, regex, choice, logit_bias, allowed_token_ids, tools.
Outputs are short (bounded schemas, small max_tokens) to keep the CPU time low."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import jsonschema
import openai
import pydantic
import pytest
from live_server import KV_TOKENS, MAX_MODEL_LEN, at_once, http, openai_client, refused_status

ASK = [{"role": "user", "content": "Describe a person as JSON."}]
NAME = {"type": "string", "minLength": 1, "maxLength": 12}

SCHEMAS = [
    # nested object, optional field, enum
    {"type": "object", "properties": {
        "name": NAME, "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "address": {"type": "object", "properties": {"city": NAME, "zip": {
            "type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"]},
        "nickname": NAME}, "required": ["name", "role", "address"],
     "additionalProperties": False},
    # array, bounded numbers
    {"type": "object", "properties": {
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                   "minItems": 1, "maxItems": 3},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["scores", "ratio"], "additionalProperties": False},
    # anyOf, boolean
    {"type": "object", "properties": {
        "id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999}, NAME]},
        "active": {"type": "boolean"}}, "required": ["id", "active"],
     "additionalProperties": False},
]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": NAME, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
DEEP: dict = {"type": "integer"}
for _ in range(100):
    DEEP = {"type": "array", "items": DEEP}
NAMED = {"type": "function", "function": {"name": "get_weather"}}  # tool_choice naming WEATHER
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": NAME}, "required": ["zone"],
                   "additionalProperties": False}}}


@pytest.fixture(scope="module")
def random_server(server, tmp_path_factory):
    """A tiny random Llama (dummy weights) with the default model's tokenizer, the shared
    server's limits and a chat template naming <tool_call> (the hermes parser, as the
    default model's), for the tests whose output the grammar writes or whose check holds for
    any output (a stream against the whole answer, a seed's replay): the default model's
    30 layers cost ~0.1 s of a 2-core CPU a token for words they do not assert."""
    from live_server import tiny_server

    srv, _ = tiny_server(server, tmp_path_factory.mktemp("random"), lambda tok: None,
                         "<tool_call>", max_model_len=MAX_MODEL_LEN, kv_tokens=KV_TOKENS)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def random_client(random_server):
    """The official `openai` client on random_server."""
    return openai_client(random_server)


def _chat(client, stream: bool, **kw) -> tuple[str, str]:
    if not stream:
        r = client.chat.completions.create(model=None, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(model=None, stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=120)


def test_parse_pydantic_model(random_client):
    """The SDK's parse of a pydantic model: the grammar holds the output to its schema."""
    r = random_client.chat.completions.parse(model=None, messages=ASK, response_format=Person,
                                      max_tokens=60, temperature=0)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120
    assert r.choices[0].finish_reason == "stop"


@pytest.fixture(scope="module")
def schema_answers(random_client) -> list[tuple[str, str]]:
    """(text, finish) of an answer held to each of SCHEMAS (the odd ones streamed), the
    requests made at once (the server batches them), from the random model: what holds the
    output to the schema is the grammar alone."""
    def answer(k: int) -> tuple[str, str]:
        fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMAS[k],
                                                      "strict": True}}
        return _chat(random_client, stream=k % 2 == 1, messages=ASK, response_format=fmt,
                     max_tokens=90, temperature=0.7, seed=k)

    return at_once(*(lambda k=k: answer(k) for k in range(len(SCHEMAS))))


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_json_schema_validates(schema_answers, k):
    text, finish = schema_answers[k]
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), SCHEMAS[k])


def test_json_object_and_guided_json_on_completions(random_client):
    client = random_client
    (text, finish), r = at_once(
        lambda: _chat(client, False, messages=ASK, max_tokens=30, temperature=0,
                      response_format={"type": "json_object"}),
        lambda: client.completions.create(model=None, prompt="A user record:", max_tokens=60,
                                          temperature=0, extra_body={"guided_json": SCHEMAS[2]}))
    # any JSON object may run past a small max_tokens: then it is a prefix of one
    assert text.startswith("{") and (finish == "length" or isinstance(json.loads(text), dict))
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMAS[2])


@pytest.mark.parametrize("json_schema", [{"name": "x"}, {"name": "x", "schema": None,
                                                       "strict": True, "description": "d"}])
def test_json_schema_without_a_schema_is_any_json_object(random_client, json_schema):
    """OpenAI's json_schema.schema is optional (it was a 400): without one the output is
    held to a JSON object, as json_object holds it."""
    kw = dict(messages=ASK, max_tokens=12, temperature=0)
    fmt = {"type": "json_schema", "json_schema": json_schema}
    want, whole, streamed = at_once(
        lambda: _chat(random_client, False, **kw, response_format={"type": "json_object"}),
        lambda: _chat(random_client, False, **kw, response_format=fmt),
        lambda: _chat(random_client, True, **kw, response_format=fmt))
    assert want[0].startswith("{")
    assert whole == want
    assert streamed == want


def test_regex_and_choice(client, server):
    choices = ["yes", "no", "maybe later"]
    (text, _), (choice, finish), (status, _, body) = at_once(  # at once: the server batches
        lambda: _chat(client, True, messages=ASK, max_tokens=20, temperature=0.9, seed=1,
                      extra_body={"guided_regex": r"[A-Z][a-z]{2,6}-[0-9]{3}"}),
        lambda: _chat(client, False, messages=ASK, max_tokens=10, temperature=0.9,
                      extra_body={"structured_outputs": {"choice": choices}}),
        lambda: http(server, "POST", "/generate", json={
            "inputs": "Code:", "parameters": {"max_new_tokens": 12,
                                              "regular_constraint": "[0-9]{4}"}}))
    assert re.fullmatch(r"[A-Z][a-z]{2,6}-[0-9]{3}", text)
    assert choice in choices and finish == "stop"
    assert status == 200 and re.fullmatch("[0-9]{4}", json.loads(body)["generated_text"][0])


def test_seeded_grammar_sampling_is_reproducible(random_client):
    kw = dict(messages=ASK, max_tokens=24, temperature=1.0, seed=1234,
              response_format={"type": "json_schema", "json_schema": {
                  "name": "p", "schema": SCHEMAS[1]}})
    whole, streamed = at_once(lambda: _chat(random_client, False, **kw),
                              lambda: _chat(random_client, True, **kw))
    assert whole == streamed


def test_greedy_unchanged_beside_constrained(client):
    plain = dict(messages=[{"role": "user", "content": "Name three colors."}], max_tokens=12,
                 temperature=0)
    alone = _chat(client, False, **plain)
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS[0]}}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(_chat, client, i % 2 == 0, messages=ASK, max_tokens=20,
                            temperature=0.8, seed=i, response_format=fmt) for i in range(3)]
        mixed = pool.submit(_chat, client, False, **plain)
        assert mixed.result() == alone
        for f in futs:
            f.result()


def test_allowed_token_ids_and_logit_bias(client, server):
    allowed = [28, 314, 1070, 2000, 4512]
    status, _, body = http(server, "POST", "/generate", json={"inputs": "Hello", "parameters": {
        "max_new_tokens": 6, "do_sample": True, "ignore_eos": True, "return_details": True,
        "allowed_token_ids": allowed}})
    tokens = [t["id"] for t in json.loads(body)["tokens"]]
    assert status == 200 and len(tokens) == 6 and set(tokens) <= set(allowed), tokens
    r = client.completions.create(model=None, prompt="Hello", max_tokens=3, temperature=0,
                                  logit_bias={"314": 100}, extra_body={"ignore_eos": True})
    _, _, body = http(server, "POST", "/detokenize", json={"tokens": [314] * 3})
    assert r.choices[0].text == json.loads(body)["prompt"]


# logit_bias keys that int() reads as a token id but are none: " 1", "+1", "1_0" and other
# scripts' digits were token 1 (or 10); a number's other spellings were refused by accident
@pytest.mark.parametrize("bias", [{" 1": 5}, {"1 ": 5}, {"+1": 5}, {"-1": 5}, {"1.0": 5},
                                  {"1_0": 5}, {"\u0661": 5}, {"": 5}, {"0x1": 5},
                                  {"1": 5, "01": -5}, {"9" * 5000: 5}])
def test_logit_bias_keys_are_decimal_token_ids(server, bias):
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hi", "max_tokens": 1, "logit_bias": bias})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "logit_bias", err
    # quoted as JSON spells it ("01"), not as Python's repr ('01')
    assert json.dumps(list(bias)[-1][:20], ensure_ascii=False) in err["message"], err


@pytest.mark.parametrize("value,shown", [(True, "true"), (None, "null"), ("1", '"1"'),
                                         ([1], "[1]"), ({"a": 1}, '{"a": 1}')])
def test_logit_bias_value_is_shown_as_the_client_wrote_it(server, value, shown):
    """A bias that is no number is named in JSON's spelling (true, null), not Python's
    (True, None), which a JSON client never sent (one past [-100, 100] is clipped to it,
    as vLLM clips it: tests/test_logit_bias_clipped.py)."""
    status, _, raw = http(server, "POST", "/v1/completions", json={
        "prompt": "Hi", "max_tokens": 1, "logit_bias": {"5": value}})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "logit_bias", err
    assert err["message"].endswith(f"got {shown}"), err


def test_logit_bias_key_with_leading_zeros_is_its_token(client):
    r = client.completions.create(model=None, prompt="Hello", max_tokens=2, temperature=0,
                                  logit_bias={"0314": 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == client.completions.create(
        model=None, prompt="Hello", max_tokens=2, temperature=0, logit_bias={"314": 100},
        extra_body={"ignore_eos": True}).choices[0].text


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "frobnicate"}}}}, "response_format.json_schema.schema"),
    ({"guided_regex": "[a-"}, "guided_regex"),
    # OpenAI requires json_schema.name, of a function name's form: it was taken without one
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMAS[0]}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a person",
                                                                 "schema": SCHEMAS[0]}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x" * 65,
                                                                 "schema": SCHEMAS[0]}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": 7,
                                                                 "schema": SCHEMAS[0]}}},
     "response_format.json_schema.name"),
    # fields nested in response_format are typed as OpenAI types them: they were taken
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMAS[0], "strict": "yes"}}}, "response_format.json_schema.strict"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMAS[0], "description": 5}}},
     "response_format.json_schema.description"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": 1}}},
     "response_format.json_schema.strict"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}},
     "response_format.json_schema"),
    ({"response_format": {"type": 5}}, "response_format.type"),
    ({"response_format": {"type": None}}, "response_format.type"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs.json_object"),
    # false asks for no grammar: vLLM refuses it (its backends would fail on it), and it was
    # taken here as no constraint, or beside another grammar as that one
    ({"structured_outputs": {"json_object": False}}, "structured_outputs.json_object"),
    ({"structured_outputs": {"regex": "[0-9]+", "json_object": False}},
     "structured_outputs.json_object"),
    ({"structured_outputs": {"json": SCHEMAS[0], "disable_fallback": "x"}},
     "structured_outputs.disable_fallback"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
     "tools[0].function.description"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "strict": "yes"}}]},
     "tools[1].function.strict"),
    ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
    # a bias of no number (one past [-100, 100] is clipped, as vLLM clips it)
    ({"logit_bias": {"5": True}}, "logit_bias"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
    ({"structured_outputs": {"jsonn": {"type": "object"}}}, "structured_outputs.jsonn"),
    # no grammar field at all (vLLM refuses it): the output was left free
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"json": None, "disable_any_whitespace": True}},
     "structured_outputs"),
    # keywords xgrammar compiles without enforcing them: refused, not silently dropped
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}},
     "response_format.json_schema.schema"),
    ({"structured_outputs": {"json": {"type": "object", "properties": {
        "n": {"not": {"type": "string"}}}}}}, "structured_outputs.json"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5}}}}}]},
     "tools[0].function.parameters"),
    ({"guided_json": {"type": "object", "properties": {"e": {
        "type": "string", "format": "email", "maxLength": 30}}}}, "guided_json"),
    # a schema inside a structural tag is held to the same rules
    ({"structured_outputs": {"structural_tag": {"type": "structural_tag", "format": {
        "type": "json_schema", "json_schema": {"type": "object", "properties": {
            "a": {"type": "integer", "not": {"const": 1}}}}}}}}, "structured_outputs.structural_tag"),
    # the schema false: no output validates
    ({"guided_json": False}, "guided_json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "false"}}},
     "response_format.json_schema.schema"),
    # keywords beside anyOf/oneOf/allOf/$ref, which xgrammar drops ("type" and "properties"
    # here: any JSON value at all would do)
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "integer"}, "b": NAME},
                      "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}}, "guided_json"),
    ({"guided_json": {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {
        "x": {"$ref": "#/$defs/n", "maximum": 3}}}}, "guided_json"),
    # a $ref outside the schema, and a required property 'properties' does not name: xgrammar
    # let any JSON value stand for the one and never wrote the other
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}}}},
     "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": NAME}, "required": ["city", "country"]}}}]},
     "tools[0].function.parameters"),
    ({"guided_json": {"type": "object", "required": ["a"], "additionalProperties": True}},
     "guided_json"),
    # parameters that are not an object: a call's arguments came back as text that is no
    # JSON ("f" for {"type": "string"}) or as a JSON array
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string"}}}], "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "array", "items": {"type": "integer"}}}}]}, "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "$defs": {"S": {"type": "string"}}, "$ref": "#/$defs/S"}}}]},
     "tools[0].function.parameters"),
    # keywords of the wrong JSON type: xgrammar refused them under param "tools", not the
    # tool's parameters
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": 5}}}]}, "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": 5}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": NAME}, "required": "a"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"anyOf": {"type": "string"}}}}}}]},
     "tools[0].function.parameters"),
    # a schema xgrammar itself refuses (an unknown type) in one tool's parameters: the 400
    # named "tools", no word of which tool, whatever the tool_choice
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "frobnicate"}}}}}]},
     "tools[1].function.parameters"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "frobnicate"}}}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}},
     "tools[1].function.parameters"),
    ({"tools": [TIME, WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "[a-"}}}}}],
      "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tools[2].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 5,
                                                "maximum": 1}}}}}, WEATHER],
      "response_format": {"type": "json_object"}}, "tools[0].function.parameters"),
    # escapes xgrammar would match as the letter itself (\A and \Z are anchors)
    ({"guided_regex": r"\Aabc\Z"}, "guided_regex"),
    ({"structured_outputs": {"regex": r"[0-9]+\Z"}}, "structured_outputs.regex"),
    ({"guided_json": {"type": "string", "pattern": r"\A[a-z]+$"}}, "guided_json"),
    # too large to compile in a few seconds
    ({"guided_json": DEEP}, "guided_json"),
    ({"guided_json": {"enum": [f"v{i}" for i in range(5000)]}}, "guided_json"),
])
def test_bad_constraint_is_400(server, body, param):
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=
                          {"messages": ASK, "max_tokens": 4, **body})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == param, err
    if param.endswith((".strict", ".description", ".type", ".json_object",
                       ".disable_fallback")) and (
            "yaml" not in json.dumps(body)):
        assert err["message"].startswith(f"{param}: expected "), err
    if param == "response_format.json_schema.name":
        assert "a-z, A-Z, 0-9" in err["message"] and "64" in err["message"], err
    if "frobnicate" in json.dumps(body) or "[a-" in json.dumps(body):
        assert "frobnicate" in err["message"] or "position" in err["message"], err


def _tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {}}}}


@pytest.mark.parametrize("tools,param", [
    ([_tool("get weather")], "tools[0].function.name"),  # OpenAI's ^[a-zA-Z0-9_-]{1,64}$
    ([WEATHER, _tool("search.web")], "tools[1].function.name"),
    ([_tool("")], "tools[0].function.name"),
    ([_tool("f" * 65)], "tools[0].function.name"),
    ([_tool('say "hi"')], "tools[0].function.name"),
    ([_tool("f\n")], "tools[0].function.name"),
    # two tools of one name: a call could not say which it is (nor which schema holds it)
    ([WEATHER, TIME, {**WEATHER}], "tools[2].function.name"),
])
def test_bad_tool_names_are_400(server, tools, param):
    for choice in ("auto", "none"):  # also where no grammar is built from them
        status, _, raw = http(server, "POST", "/v1/chat/completions", json={
            "messages": ASK, "max_tokens": 1, "tools": tools, "tool_choice": choice})
        assert status == 400, (choice, raw)
        err = json.loads(raw)["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", err
        assert "name" in err["message"], err


@pytest.mark.parametrize("choice", [None, "auto", "none"], ids=["absent", "auto", "none"])
def test_empty_tools_are_no_tools(server, choice):
    """`tools: []` (LangChain sends it) with tool_choice "auto" or absent is no tools, as
    vLLM answers it: it was a 400 ("tool_choice needs tools") for "auto". The answer is
    the model's text, as without tools."""
    body = {"messages": ASK, "max_tokens": 4, "temperature": 0, "tools": []}
    if choice:
        body["tool_choice"] = choice
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=body)
    assert status == 200, raw
    plain = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
    _, _, alone = http(server, "POST", "/v1/chat/completions", json=plain)
    got, want = json.loads(raw)["choices"][0], json.loads(alone)["choices"][0]
    assert got["message"] == want["message"] and "tool_calls" not in got["message"], got


@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_empty_tools_with_a_call_required_are_400(server, choice):
    """A call is asked for, and there is nothing to call: the 400 names tool_choice."""
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 1, "tools": [], "tool_choice": choice})
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "tool_choice", err
    assert "tools" in err["message"], err


@pytest.mark.parametrize("tools", [None, [], [WEATHER]], ids=["absent", "empty", "one"])
@pytest.mark.parametrize("choice", [{}, {"type": "function"}, {"type": "function",
                                    "function": "get_weather"},
                                    {"type": "function", "function": {"name": 5}}],
                         ids=["empty", "no function", "function a string", "name a number"])
def test_a_tool_choice_of_no_form_is_told_the_forms(server, tools, choice):
    """A tool_choice object of none of OpenAI's forms was, without tools, told that it
    "asks for a call, but no tools were sent" (a Python repr of it in the message), and
    with tools, for a name not a string, that it named a function not among them: it is
    told the forms, with what was sent, wherever tools are."""
    body = {"messages": ASK, "max_tokens": 1, "tool_choice": choice}
    if tools is not None:
        body["tools"] = tools
    status, _, raw = http(server, "POST", "/v1/chat/completions", json=body)
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "tool_choice", err
    assert err["message"].startswith('tool_choice must be "none", "auto", "required" or '
                                     '{"type": "function", "function": {"name": ...}}, got '
                                     + json.dumps(choice)), err


def test_longest_tool_name_is_served(server):
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 1, "tools": [_tool("A-z_9" * 12 + "abcd")]})
    assert status == 200, raw


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"tools": [WEATHER], "tool_choice": "required"}, "tools"),
    ("/v1/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/generate", {"parameters": {"logit_bias": {"28": 100}}}, "parameters.logit_bias"),
    ("/generate", {"parameters": {"response_format": {"type": "json_object"}}},
     "parameters.response_format"),
    ("/generate", {"parameters": {"guided_choice": ["a", "b"]}}, "parameters.guided_choice"),
    ("/generate_stream", {"parameters": {"guided_regex": "[0-9]+"}}, "parameters.guided_regex"),
])
def test_constraints_an_endpoint_does_not_take_are_400(server, path, body, param):
    """Fields that would change the output, sent where they are not served (tools on the
    completions endpoint, OpenAI's and vLLM's fields on LightLLM's): refused, not dropped."""
    base = {"prompt": "x", "max_tokens": 4} if path.startswith("/v1") else {"inputs": "x"}
    status, _, raw = http(server, "POST", path, json={**base, **body})
    err = json.loads(raw)["error"]
    assert status == refused_status(path) and err["param"] == param, err


def test_very_deep_schema_is_400(server):
    """Deeper than Python's recursion limit (was a 500), as an object (the body's decoder
    refuses it) and as a string (the schema's)."""
    deep = '{"type": "array", "items": ' * 3000 + '{"type": "integer"}' + "}" * 3000
    for schema, param in ((deep, None), (json.dumps(deep), "guided_json")):
        status, _, raw = http(server, "POST", "/v1/chat/completions", data=(
            '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
            f'"guided_json": {schema}}}'), headers={"Content-Type": "application/json"})
        assert status == 400 and json.loads(raw)["error"]["param"] == param, raw[:300]


def test_schema_nearly_as_deep_as_the_body_decoder_takes_is_400(server):
    """Just below the depth the body's decoder refuses, a schema object overflowed the
    recursion of the encoder that turns it into grammar text (a 500 at ~984 levels)."""
    for depth in range(965, 1000):  # where the decoder stops varies with the stack
        body = ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, '
                '"guided_json": ' + '{"items": ' * depth + "{}" + "}" * depth + "}")
        status, _, raw = http(server, "POST", "/v1/chat/completions", data=body,
                              headers={"Content-Type": "application/json"})
        assert status == 400, (depth, raw[:300])
        assert json.loads(raw)["error"]["param"] in ("guided_json", None), raw[:300]


def _until(condition, limit: float = 30.0) -> None:
    """Polls condition() every 10 ms (a loaded CPU wakes a thread late); fails the test
    after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the condition was never reached"
        time.sleep(0.01)


def test_grammar_not_compiled_in_time_is_400_and_past_the_cap_503(held_json_schemas, tiny):
    """--grammar-compile-timeout: a grammar that has not compiled in time is a 400 naming
    its field (a 5,000-property schema held a compile thread and its client for ~10 min);
    while two such compilations run on, a new grammar is a 503 with Retry-After, and
    requests without one are served. A compilation that ends late is cached: its retry is
    served without compiling again. (On conftest's tiny random Llama with the default
    tokenizer: what is timed is the compilation, for the tokenizer alone.)"""
    from live_server import LiveServer

    release, calls = held_json_schemas
    param = "response_format.json_schema.schema"

    def ask(i: int | None) -> tuple[int, dict, dict]:
        body = {"messages": ASK, "max_tokens": 4}
        if i is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"title": "held", "type": "object", "properties": {f"p{i}": {}}}}}
        status, headers, raw = http(srv, "POST", "/v1/chat/completions", json=body)
        return status, headers, json.loads(raw)

    srv = LiveServer(model=tiny, load_format="dummy", max_model_len=256,
                     grammar_compile_timeout=0.5).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both compile threads
            replies = list(pool.map(ask, (201, 202)))
        for status, _, body in replies:
            err = body["error"]
            assert status == 400 and err["param"] == param, err
            assert err["message"] == (f"{param}: the grammar did not compile within 0.5 s; "
                                      "simplify the schema"), err
        _until(lambda: srv.engine.grammars._threads._overdue == 2)  # both past their deadline
        status, headers, body = ask(203)
        assert status == 503 and "Retry-After" in headers, body
        assert "grammar compiler busy" in body["error"]["message"] and calls[203] == 0, body
        status, _, body = ask(None)
        assert status == 200 and body["choices"][0]["message"]["content"], body
        release[201].set()
        _until(lambda: srv.engine.grammars._threads._overdue == 1)  # 201 compiled, cached
        status, _, body = ask(201)
        assert status == 200 and calls[201] == 1, body
    finally:
        srv.close()


def test_keyword_names_as_property_names_are_fine(random_client):
    """Only keywords are refused: properties named like them ("not", "if") are data."""
    schema = {"type": "object", "properties": {"not": {"type": "boolean"}, "if": {"enum": [
        1, 2]}}, "required": ["not", "if"], "additionalProperties": False}
    text, finish = _chat(random_client, False, messages=ASK, max_tokens=20, temperature=0,
                         extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(text), schema)


def test_sized_arrays_and_objects_of_any_items(client, server):
    """An array with minItems/maxItems and no items (or an object with min/maxProperties and
    no properties) takes any items, as JSON Schema says: xgrammar's strict mode read it as
    "no items" (a 400 for minItems 1; maxItems alone allowed only []). Tools' parameters:
    tests/test_tool_parsers.py."""
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "minItems": 1, "maxItems": 2},
        "meta": {"type": "object", "minProperties": 1, "maxProperties": 1}},
        "required": ["tags", "meta"], "additionalProperties": False}
    status, _, raw = http(server, "POST", "/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 80, "temperature": 0, "guided_json": schema})
    assert status == 200, raw
    jsonschema.validate(json.loads(json.loads(raw)["choices"][0]["message"]["content"]), schema)


def _streamed_message(stream):
    """The assistant message a client assembles from a stream, and the finish reason. The
    calls come before the chunk that finishes, as OpenAI streams them (the SDK's stream
    helper fires tool_calls.function.arguments.done only for a call it saw before)."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert not (chunk.choices[0].finish_reason and delta.tool_calls), chunk
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": tc.id, "type": "function",
                                            "function": {"name": "", "arguments": ""}})
            c["function"]["name"] += tc.function.name or ""
            c["function"]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert list(calls) == list(range(len(calls)))
    msg = openai.types.chat.ChatCompletionMessage(
        role="assistant", content=content or None,
        tool_calls=[calls[i] for i in sorted(calls)] or None)
    return msg, finish


def _whole_and_stream_state(client, kw: dict):
    """The chat completion for `kw` and the openai SDK's stream state fed the same request
    streamed, both requests made at once (the server batches them)."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    def streamed():
        state = ChatCompletionStreamState()
        for chunk in client.chat.completions.create(**kw, stream=True):
            state.handle_chunk(chunk)
        return state

    return at_once(lambda: client.chat.completions.create(**kw), streamed)


def _check_call(call, tool: dict) -> dict:
    assert call.type == "function" and call.id
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


class TreeNode(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=8)
    children: list["TreeNode"] = pydantic.Field(default=[], max_length=2)


def test_tool_of_a_recursive_pydantic_model(random_client):
    """pydantic writes a recursive model as {"$defs": {...}, "$ref": "#/$defs/TreeNode"}: an
    object schema whose "type" sits in its definition. As a tool's parameters it is served
    (it was refused as 'got type None', as if it were a string or array schema)."""
    schema = TreeNode.model_json_schema()
    assert "type" not in schema and schema["$ref"] == "#/$defs/TreeNode"
    tool = {"type": "function", "function": {"name": "make_tree", "parameters": schema}}
    r = random_client.chat.completions.create(
        model=None, messages=[{"role": "user", "content": "Make a tree of two nodes."}],
        tools=[tool], tool_choice="required", max_tokens=30, temperature=0)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    if finish == "tool_calls":
        _check_call(msg.tool_calls[0], tool)
    else:  # the model nests children until max_tokens cuts the call, under the grammar:
        # the cut call is a call with the arguments written so far (cut_calls.py)
        assert finish == "length" and msg.content is None, msg
        assert [c.function.name for c in msg.tool_calls] == ["make_tree"], msg
        assert msg.tool_calls[0].function.arguments.startswith("{"), msg


ROUND_TRIP_ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
ROUND_TRIP_CHOICES = ("required", "named", "auto")


@pytest.fixture(scope="module")
def first_turns(client) -> dict:
    """test_tool_call_round_trip's first turns, choice -> (message, finish), the three
    requests made at once (the server batches them; one after another they took ~25 s of a
    2-core CPU). "required" is streamed: delta.tool_calls fragments with their index."""
    def first_turn(choice: str):
        tool_choice = {"named": {"type": "function", "function": {"name": "get_weather"}},
                       }.get(choice, choice)
        kw = dict(model=None, messages=ROUND_TRIP_ASK, tools=[TIME, WEATHER],
                  tool_choice=tool_choice, max_tokens=100,
                  temperature=0)  # room for two calls: the model makes two
        if choice == "required":
            return _streamed_message(client.chat.completions.create(stream=True, **kw))
        r = client.chat.completions.create(**kw)
        return r.choices[0].message, r.choices[0].finish_reason

    answers = at_once(*(lambda c=c: first_turn(c) for c in ROUND_TRIP_CHOICES))
    return dict(zip(ROUND_TRIP_CHOICES, answers))


@pytest.mark.parametrize("choice", ROUND_TRIP_CHOICES)
def test_tool_call_round_trip(client, first_turns, choice):
    ask = ROUND_TRIP_ASK
    msg, finish = first_turns[choice]
    if choice == "auto" and not msg.tool_calls:  # the model chose to answer: fine for auto
        assert finish in ("stop", "length") and msg.content
        return
    # a forced named call finishes "stop", as OpenAI and vLLM answer it
    assert finish == ("stop" if choice == "named" else "tool_calls") and msg.tool_calls, msg
    if choice == "named":  # one call of that function, as vLLM and SGLang answer
        assert len(msg.tool_calls) == 1, msg
    call = msg.tool_calls[0]
    tool = WEATHER if call.function.name == "get_weather" else TIME
    _check_call(call, tool)
    history = ask + [msg.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    r = client.chat.completions.create(model=None, messages=history, tools=[TIME, WEATHER],
                                       tool_choice="none", max_tokens=8, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_a_streamed_call_sends_no_empty_chunk_and_builds_the_whole_message(random_server):
    """A call is streamed as it is written, as vLLM streams it: a fragment with its index,
    id, type and name (arguments "") once the name is written, then its arguments in
    fragments (index and arguments only), one fragment a call in each chunk; no chunk says
    nothing (a {"content": ""} chunk came for each token the parser held back). The message
    the SDK's stream state builds is the non-streamed one: the same call, its arguments byte
    for byte, the same finish; its content is the role chunk's "", as vLLM's stream builds it
    (the whole answer's is null, as vLLM's); the stream ends with its finish chunk (of its
    own) and [DONE]."""
    from live_server import sse_events
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    body = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 100, "temperature": 0}
    (status, _, raw), (stream_status, _, stream_raw) = at_once(
        lambda: http(random_server, "POST", "/v1/chat/completions", json=body),
        lambda: http(random_server, "POST", "/v1/chat/completions",
                     json={**body, "stream": True}))
    assert status == 200, raw
    whole = json.loads(raw)["choices"][0]
    assert whole["message"]["content"] is None and whole["message"]["tool_calls"], whole
    assert stream_status == 200, stream_raw
    events = sse_events(stream_raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert choices[-1]["finish_reason"]
    for ch in choices[1:-1]:  # each says something
        assert ch["delta"].get("content") or ch["delta"].get("tool_calls"), ch
    frags = [f for ch in choices for f in ch["delta"].get("tool_calls", [])]
    assert all(len(ch["delta"].get("tool_calls", [])) <= 1 for ch in choices), choices
    [call] = whole["message"]["tool_calls"]
    assert frags[0] == {"index": 0, "id": frags[0]["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
    assert all(f.keys() == {"index", "function"} and f["function"].keys() == {"arguments"}
               for f in frags[1:]), frags
    assert len(frags) > 2  # the arguments came in pieces, as the tokens came
    assert "".join(f["function"]["arguments"] for f in frags) == call["function"]["arguments"]
    assert "tool_calls" not in choices[-1]["delta"] and choices[-2]["finish_reason"] is None
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    built = state.get_final_completion().choices[0]
    assert built.finish_reason == whole["finish_reason"] == "tool_calls"
    assert built.message.content == ""
    assert [(c.function.name, c.function.arguments) for c in built.message.tool_calls] == [
        (c["function"]["name"], c["function"]["arguments"])
        for c in whole["message"]["tool_calls"]]


CUT_CHOICES = {"required": "required", "named": NAMED}


@pytest.fixture(scope="module")
def cut_calls(client) -> dict:
    """test_a_call_cut_by_max_tokens_is_a_cut_call_streamed_or_not's answers, choice ->
    (chat completion, the SDK's stream state of the same request streamed): the four
    requests made at once (the server batches them)."""
    def both(choice) -> tuple:
        kw = dict(model=None, messages=[{"role": "user", "content": "Weather in Paris?"}],
                  tools=[WEATHER], tool_choice=choice, max_tokens=22, temperature=0)
        return _whole_and_stream_state(client, kw)

    answers = at_once(*(lambda c=c: both(c) for c in CUT_CHOICES.values()))
    return dict(zip(CUT_CHOICES, answers))


@pytest.mark.parametrize("choice", list(CUT_CHOICES))
def test_a_call_cut_by_max_tokens_is_a_cut_call_streamed_or_not(cut_calls, choice):
    """A call max_tokens cuts ends with finish_reason "length" (not "tool_calls": it is not
    complete) as a call whose arguments are the text written so far, as OpenAI answers it;
    the call's markup ('<tool_call>', the name) is no content. Its text stayed in content,
    under a tool_choice that allows calls only. Streamed and not, the message is the same
    (but for the content the stream builds: "", as from vLLM)."""
    r, state = cut_calls[choice]
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    assert finish == "length" and msg.content is None, msg
    [call] = msg.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments.startswith("{")
    with pytest.raises(ValueError):  # cut: no JSON yet
        json.loads(call.function.arguments)
    built = state.current_completion_snapshot.choices[0]  # the final one raises on "length"
    # content: the role chunk's "", as vLLM's stream opens (the whole answer's null)
    assert built.finish_reason == "length" and built.message.content == "", built
    assert [(c.function.name, c.function.arguments) for c in built.message.tool_calls] == [
        (call.function.name, call.function.arguments)]


@pytest.mark.parametrize("stop,arguments", [('"arguments"', ""), ('"city"', "{")])
def test_a_call_a_stop_string_cuts_is_a_cut_call_streamed_or_not(random_client, stop,
                                                                 arguments):
    """A stop string inside a forced call ends the output there, as it ends any output; what
    was written is a call cut like one max_tokens cuts (its arguments as written, no markup
    in content), with finish_reason "stop", not "tool_calls": it is not complete. Its text
    ('<tool_call>\n{"name": "get_weather", ') came back as content. Streamed and not alike
    (but for the content the stream builds: "", as from vLLM)."""
    kw = dict(model=None, messages=[{"role": "user", "content": "Weather in Paris?"}],
              tools=[WEATHER], tool_choice="required", max_tokens=60, temperature=0, stop=[stop])
    r, state = _whole_and_stream_state(random_client, kw)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    assert finish == "stop" and msg.content is None, msg
    assert [(c.function.name, c.function.arguments.strip()) for c in msg.tool_calls] == [
        ("get_weather", arguments)], msg
    built = state.current_completion_snapshot.choices[0]
    assert built.finish_reason == "stop" and built.message.content == "", built
    assert [(c.function.name, c.function.arguments) for c in built.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in msg.tool_calls]


@pytest.mark.parametrize("choice,stop", [("required", "<tool"), (NAMED, "\n")],
                         ids=["in-marker", "after-marker"])
def test_a_stop_string_before_a_forced_calls_name_streamed_or_not(random_client, choice,
                                                                  stop):
    """A stop string that ends a forced output before a call's name is written (inside its
    marker "<tool_call>", or the newline after it) ends it there: stop strings apply to the
    whole output whatever grammar holds it, as vLLM matches them on the raw text. The answer
    says so plainly: finish_reason "stop" naming the string, whole and streamed alike, never
    an error. "required" reads no call from it (content "", the markup written is no
    content), as vLLM does; a named tool_choice is the named call whatever was written, its
    arguments "" (vLLM answers a named choice with the call and the output as arguments),
    as when max_tokens cuts it there."""
    kw = dict(model=None, messages=[{"role": "user", "content": "Weather in Paris?"}],
              tools=[WEATHER], tool_choice=choice, max_tokens=20, temperature=0, stop=[stop])
    calls = [] if choice == "required" else [("get_weather", "")]
    content = "" if choice == "required" else None
    whole, state = _whole_and_stream_state(random_client, kw)
    r = whole.choices[0]
    assert (r.finish_reason, r.stop_reason) == ("stop", stop), r
    assert r.message.content == content, r
    assert [(c.function.name, c.function.arguments) for c in r.message.tool_calls or []] == \
        calls, r
    built = state.get_final_completion().choices[0]
    # the role chunk's "", as vLLM's stream opens, where the whole answer's is null too
    assert built.finish_reason == "stop" and built.message.content == "", built
    assert [(c.function.name, c.function.arguments)
            for c in built.message.tool_calls or []] == calls, built


@pytest.mark.parametrize("tools", [{"tools": [WEATHER], "tool_choice": "none"}, {}])
def test_past_tool_calls_are_in_the_prompt_without_tool_choice(client, tools):
    """The follow-up turn (tool_choice "none", or no tools sent at all) still shows the model
    the call it made: a template that knows no tool_calls gets them as the assistant's text."""
    call = {"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}

    def prompt_tokens(assistant: dict) -> int:
        r = client.chat.completions.create(model=None, messages=[*ask, assistant, answer],
                                           max_tokens=1, **tools)
        return r.usage.prompt_tokens

    without = prompt_tokens({"role": "assistant", "content": ""})
    assert prompt_tokens({"role": "assistant", "content": None, "tool_calls": [call]}) > without + 10


def test_required_answers_with_calls_only(client):
    """"required" ends after the calls (it ran on as free text to max_tokens), and a tool
    without parameters gets closed arguments (the model wrote whitespace into `{` forever)."""
    ping = {"type": "function", "function": {"name": "ping-now"}}
    r = client.chat.completions.create(model=None, messages=ASK, tools=[ping, TIME],
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content, choice
    [call] = choice.message.tool_calls
    assert call.function.name in ("ping-now", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)


def test_min_tokens_past_the_grammars_end_is_400(server):
    status, _, raw = http(server, "POST", "/generate", json={"inputs": "x", "parameters": {
        "max_new_tokens": 8, "min_new_tokens": 4, "guided_grammar": 'root ::= "a"'}})
    err = json.loads(raw)["error"]
    assert status == 417 and err["param"] == "parameters.min_new_tokens", err
    assert "min_new_tokens (4)" in err["message"], err


def test_min_tokens_past_the_grammars_end_names_min_new_tokens_in_a_stream(server):
    """/generate_stream finds it only once the grammar's end is reached, after the first
    token went out: the stream's error event quoted min_tokens (3), SamplingParams' name and
    value, with param "min_tokens", where /generate says min_new_tokens (4), as sent."""
    from live_server import sse_events

    status, _, raw = http(server, "POST", "/generate_stream", json={
        "inputs": "x", "parameters": {"max_new_tokens": 8, "min_new_tokens": 4,
                                      "guided_grammar": 'root ::= "a"'}})
    err = json.loads(sse_events(raw)[-1])["error"]
    assert status == 200 and err["param"] == "parameters.min_new_tokens", err
    assert "min_new_tokens (4)" in err["message"], err


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "min_tokens": 1,
                         "allowed_token_ids": [2]}, "min_tokens"),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 4, "min_new_tokens": 3,
                                                 "allowed_token_ids": [2]}},
     "parameters.min_new_tokens"),
])
def test_min_tokens_that_ban_every_allowed_token_is_400(server, path, body, param):
    """allowed_token_ids that allow only eos (2), under min_tokens, which bans eos: no token
    is left. The sampler then drew token 0, which allowed_token_ids forbid, with a null
    logprob, and the request went on as if it were allowed (finish_reason stop, HTTP 200)."""
    status, _, raw = http(server, "POST", path, json=body)
    err = json.loads(raw)["error"]
    assert status == refused_status(path) and err["param"] == param, (status, raw)
    assert "allowed_token_ids" in err["message"], err
    if path == "/generate":  # quoted as sent
        assert "min_new_tokens (3)" in err["message"], err


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "added"])
def test_call_marker_that_is_a_special_token_is_parsed(server, tmp_path, listed):
    """Mistral's [TOOL_CALLS] is a special token: the output keeps it for the parser (text
    without special tokens lost every call). A tiny random model with the default tokenizer
    plus that token, its chat template naming it (so the mistral parser is chosen); a logit
    bias makes the model open the call with the token rather than spell it. The token is
    listed among the special tokens, or only added as a special one (no list names it, and
    decoding skips it all the same)."""
    import tokenizers

    from live_server import tiny_server

    def add(tok):
        if listed:
            tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
        else:
            tok.add_tokens([tokenizers.AddedToken("[TOOL_CALLS]", special=True)])

    srv, tok = tiny_server(server, tmp_path, add, "[TOOL_CALLS]")
    marker = tok.convert_tokens_to_ids("[TOOL_CALLS]")
    try:
        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"q": {"enum": ["a", "b"]}}, "required": ["q"],
            "additionalProperties": False}}}
        status, _, raw = http(srv, "POST", "/v1/chat/completions", json={
            "messages": ASK, "tools": [tool], "tool_choice": "required", "max_tokens": 200,
            "temperature": 0, "logit_bias": {str(marker): 100}, "logprobs": True,
            "parallel_tool_calls": False})
        choice = json.loads(raw)["choices"][0]
        assert choice["logprobs"]["content"][0]["token"] == "[TOOL_CALLS]", choice
        assert choice["message"].get("tool_calls"), choice["message"]
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "f" and json.loads(call["function"]["arguments"])
    finally:
        srv.close()


def test_format_lengths_that_cannot_bind_are_accepted():
    """pydantic's URL fields carry {"format": "uri", "minLength": 1, "maxLength": 2083}: a uri
    is never empty and no generated one nears 2,083 characters, so the schema is accepted;
    lengths that could bind beside a format stay refused (the grammar drops them)."""
    from aiollm.engine.grammar_check import check_schema
    from aiollm.errors import InvalidRequest

    class Page(pydantic.BaseModel):
        url: pydantic.HttpUrl
        title: str

    check_schema(Page.model_json_schema(), "response_format")
    for bound in ({"maxLength": 100}, {"minLength": 5}):
        with pytest.raises(InvalidRequest, match="'format' with"):
            check_schema({"type": "string", "format": "uri", **bound}, "guided_json")
    # uri-reference matches the empty string: its minLength 1 binds
    with pytest.raises(InvalidRequest, match="'format' with"):
        check_schema({"type": "string", "format": "uri-reference", "minLength": 1}, "guided_json")


def test_tool_choice_none_shows_the_tools_and_reads_no_calls(server, monkeypatch):
    """tool_choice "none" shows the model the tools, as vLLM renders them by default (and
    OpenAI's model sees them: it just makes no call); they were left out of the prompt. No
    call is read from the output (no parser runs under "none"). vLLM's
    --exclude-tools-when-tool-choice-none leaves them out."""
    ask = [{"role": "user", "content": "Weather in Paris?"}]

    def prompt_tokens(**body) -> int:
        status, _, raw = http(server, "POST", "/v1/chat/completions", json={
            "messages": ask, "max_tokens": 1, "temperature": 0, **body})
        assert status == 200, raw
        out = json.loads(raw)
        assert "tool_calls" not in out["choices"][0]["message"], out
        return out["usage"]["prompt_tokens"]

    # the prompt of a request with tools (under "auto"), as /tokenize renders it
    shown = len(json.loads(http(server, "POST", "/tokenize", json={
        "messages": ask, "tools": [WEATHER]})[2])["tokens"])
    bare = prompt_tokens()
    assert shown > bare + 20
    assert prompt_tokens(tools=[WEATHER], tool_choice="none") == shown
    # the server's switch, read by each request (a server of its own loads the model again)
    monkeypatch.setattr(server.engine.config, "exclude_tools_when_tool_choice_none", True)
    assert prompt_tokens(tools=[WEATHER], tool_choice="none") == bare


@pytest.mark.parametrize("schema", [
    {"type": "integer", "multipleOf": 7, "minimum": 10},
    {"type": "integer", "multipleOf": 7, "maximum": 1000},
    {"type": "integer", "multipleOf": 7, "exclusiveMinimum": 0},
    {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 10000},  # 10,001 integers
    {"type": "integer", "multipleOf": 1025},
])
def test_an_integer_multiple_of_the_grammar_drops_is_refused(schema):
    """xgrammar drops an integer's multipleOf beside a one-sided range, over a range of more
    than 10,000 integers, or above 1024 (it logs a warning and compiles the rest): the output
    then held 632 for multipleOf 7 with maximum 1000. Refused naming the keyword."""
    from aiollm.engine.grammar_check import check_schema
    from aiollm.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="'multipleOf'") as e:
        check_schema({"type": "object", "properties": {"n": schema}}, "guided_json")
    assert e.value.param == "guided_json" and "/properties/n" in str(e.value)


@pytest.mark.parametrize("schema", [
    {"type": "integer", "multipleOf": 7},
    {"type": "integer", "multipleOf": 1024},
    {"type": "integer", "multipleOf": 7, "minimum": 1, "maximum": 10000},
    {"type": "integer", "multipleOf": 7, "exclusiveMinimum": 0, "exclusiveMaximum": 10001},
    {"type": "integer", "multipleOf": 7, "minimum": 10.0, "maximum": 100.0},
    {"type": "integer", "multipleOf": 1, "minimum": 0},  # a multiple of 1: nothing dropped
])
def test_an_integer_multiple_of_the_grammar_enforces_is_accepted(schema):
    """What stays accepted is what the grammar holds: twice the multiple passes, one more
    does not."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    from aiollm.engine.grammar_check import compilable
    from aiollm.sampling_params import GrammarSpec

    grammar = xgr.Grammar.from_json_schema(
        compilable(GrammarSpec("json_schema", json.dumps(schema), "guided_json")))
    twice = 2 * schema["multipleOf"]
    assert _is_grammar_accept_string(grammar, str(twice))
    assert _is_grammar_accept_string(grammar, str(twice + 1)) == (schema["multipleOf"] == 1)


@pytest.mark.parametrize("fmt", ["date", "email", "uri", "uuid"])
def test_a_pattern_beside_a_format_is_refused(fmt):
    """xgrammar writes a string of a format it knows by the format alone and drops a pattern
    beside it: {"format": "date", "pattern": "^2"} took "1999-01-01". Refused naming both, as a
    format's lengths are."""
    from aiollm.engine.grammar_check import check_schema
    from aiollm.errors import InvalidRequest

    schema = {"type": "object", "properties": {"d": {
        "type": "string", "format": fmt, "pattern": "^2"}}}
    with pytest.raises(InvalidRequest, match="'pattern' with 'format'") as e:
        check_schema(schema, "guided_json")
    assert e.value.param == "guided_json" and "/properties/d" in str(e.value)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "Hi"})])
def test_response_format_structural_tag_in_both_of_vllms_forms(server, path, body):
    """vLLM's response_format of type structural_tag, in its first form (structures and
    triggers) and in xgrammar's (format): it was a 400 ('response_format.type must be
    "text", "json_object" or "json_schema"'). Free text until a trigger. A tag of the
    wrong shape is a 400 naming response_format."""
    schema = {"type": "object", "properties": {"city": NAME}, "required": ["city"]}
    legacy = {"type": "structural_tag", "triggers": ["<w="], "structures": [
        {"begin": "<w=", "schema": schema, "end": "</w>"}]}
    current = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [
        "<w="], "tags": [{"type": "tag", "begin": "<w=", "end": "</w>", "content": {
            "type": "json_schema", "json_schema": schema}}]}}
    for tag in (legacy, current):
        status, _, raw = http(server, "POST", path, json={
            **body, "response_format": tag, "max_tokens": 4, "temperature": 0})
        assert status == 200, raw
    for bad in ({**legacy, "triggers": None}, {"type": "structural_tag"}):
        status, _, raw = http(server, "POST", path, json={
            **body, "response_format": bad, "max_tokens": 4})
        assert status == 400, raw
        assert json.loads(raw)["error"]["param"] == "response_format", raw

