"""/v1/responses beside its text.format: vLLM's structured_outputs and logit_bias served,
chat's min_tokens, bad_words and allowed_token_ids served, chat's
response_format and guided_* refused, and a tool's schema the grammar refuses named
by its place, through the real server and the openai SDK.

The server is the session's tiny random Llama server (conftest's random_server: one layer,
dummy weights, the default tokenizer and chat template, the shared server's limits): each
check is derived from the answer the same server gives without the field (its stop string,
its banned word), or is what a grammar, a bias or a refusal forces, which holds for any
model's words; the default model's 30 layers cost ~0.1 s of a 2-core CPU a token."""

from __future__ import annotations

import json

import openai
import pytest
from live_server import http
from test_responses_api import ASK, WEATHER


@pytest.fixture(scope="module")
def server(random_server):
    """The module's server (conftest's `client` asks it): the tiny random Llama's."""
    return random_server


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def answer(client, stream: bool, **kw):
    """The Response of responses.create(**kw), streamed or in one piece."""
    if not stream:
        return client.responses.create(**kw)
    with client.responses.stream(**kw) as s:
        list(s)
        return s.get_final_response()


@pytest.mark.parametrize("stream", [False, True])
def test_vllms_structured_outputs_and_logit_bias_shape_the_output(server, client, model,
                                                                  stream):
    """vLLM's Responses API takes `structured_outputs` (and `logit_bias`) beside `text`: they
    were unknown fields here, ignored, and the output free text."""
    kw = dict(model=model, input=ASK, max_output_tokens=20, temperature=0,
              extra_body={"structured_outputs": {"choice": ["mauve", "teal"]}})
    r = answer(client, stream, **kw)
    assert r.output_text in ("mauve", "teal") and r.status == "completed", r.output_text
    tid = first_token(server, model, "teal")
    r = client.responses.create(**{**kw, "extra_body": {
        "structured_outputs": {"choice": ["mauve", "teal"]}, "logit_bias": {str(tid): 100}}})
    assert r.output_text == "teal", r.output_text


def first_token(server, model, text: str) -> int:
    """The first token id of `text` (the server's /tokenize)."""
    status, _, raw = http(server, "POST", "/tokenize", json={
        "model": model, "prompt": text, "add_special_tokens": False})
    assert status == 200, raw
    return json.loads(raw)["tokens"][0]


@pytest.mark.parametrize("body, param", [
    # vLLM refuses both at once, naming structured_outputs
    ({"text": {"format": {"type": "json_object"}}, "structured_outputs": {"regex": "a+"}},
     "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "(["}}, "structured_outputs.regex"),
    # chat's fields, not the Responses API's (text.format, structured_outputs): they were
    # ignored, the output left free
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"guided_choice": ["a"]}, "guided_choice"),
])
def test_constraints_on_responses_are_served_or_refused(client, model, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=ASK, max_output_tokens=4, extra_body=body)
    assert e.value.param == param, e.value.body


def test_a_tools_schema_the_grammar_refuses_is_named(client, model):
    """xgrammar's refusal of one tool's parameters names that tool (in the Responses API's
    words), not the whole of `tools`."""
    bad = {**WEATHER, "name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "frobnicate"}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=ASK, max_output_tokens=4,
                                tools=[WEATHER, bad], tool_choice="required")
    assert e.value.param == "tools[1].parameters", e.value.body
    assert "frobnicate" in e.value.message, e.value.body


@pytest.mark.parametrize("stream", [False, True])
def test_include_stop_str_in_output_keeps_the_stop_string(client, model, stream):
    """vLLM's Responses API takes include_stop_str_in_output (as chat does): the text ends
    after the stop string, not before it. It was an unknown field here, ignored."""
    free = client.responses.create(model=model, input=ASK, max_output_tokens=12,
                                   temperature=0).output_text
    assert len(free) > 4, free
    stop = free[2:4]
    cut = free[:free.index(stop)]
    for include, text in ((True, cut + stop), (False, cut)):
        kw = dict(model=model, input=ASK, max_output_tokens=12, temperature=0,
                  extra_body={"stop": [stop], "include_stop_str_in_output": include})
        r = answer(client, stream, **kw)
        assert (r.output_text, r.status) == (text, "completed"), (include, stop, free)


@pytest.mark.parametrize("stream", [False, True])
def test_min_tokens_holds_off_a_stop_string(client, model, stream):
    """chat's min_tokens, which vLLM's Responses API ignores, is served here as chat serves
    it (it was a 400): no stop string ends the output before min_tokens tokens."""
    kw = dict(model=model, input=ASK, max_output_tokens=12, temperature=0)
    free = client.responses.create(**kw).output_text
    assert len(free) > 4, free
    stop = free[2:4]
    cut = answer(client, stream, **kw, extra_body={"stop": [stop]})
    assert cut.output_text == free[:free.index(stop)] and cut.usage.output_tokens < 6, free
    held = answer(client, stream, **kw, extra_body={"stop": [stop], "min_tokens": 6})
    assert held.usage.output_tokens >= 6, (held.output_text, free)
    assert held.output_text.startswith(cut.output_text + stop), (held.output_text, free)


@pytest.mark.parametrize("stream", [False, True])
def test_bad_words_are_never_generated(client, model, stream):
    """chat's bad_words, served here too (they were a 400)."""
    kw = dict(model=model, input=ASK, max_output_tokens=3, temperature=0)
    word = client.responses.create(**kw).output_text.split()[0]
    banned = answer(client, stream, **kw, extra_body={"bad_words": [word]})
    assert banned.output_text and word not in banned.output_text, (word, banned.output_text)


@pytest.mark.parametrize("stream", [False, True])
def test_allowed_token_ids_restrict_the_output(server, client, model, stream):
    """chat's allowed_token_ids, served here too (they were a 400): the one id allowed is
    every token of the output."""
    r = answer(client, stream, model=model, input=ASK, max_output_tokens=3, temperature=0,
               extra_body={"allowed_token_ids": [314]})
    status, _, raw = http(server, "POST", "/detokenize", json={"tokens": [314] * 3})
    assert status == 200, raw
    assert (r.output_text, r.usage.output_tokens) == (json.loads(raw)["prompt"], 3)


@pytest.mark.parametrize("body, param", [
    ({"min_tokens": "3"}, "min_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"bad_words": "blue"}, "bad_words"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
    ({"allowed_token_ids": "1"}, "allowed_token_ids"),
])
def test_their_bad_values_are_400s_naming_them(client, model, body, param):
    """Checked as chat checks them, the error naming the field."""
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=ASK, max_output_tokens=4, extra_body=body)
    assert e.value.param == param, e.value.body


def test_min_tokens_past_max_output_tokens_is_named_in_this_apis_words(client, model):
    """Chat's check, its max_tokens told as this body's max_output_tokens."""
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input=ASK, max_output_tokens=2,
                                extra_body={"min_tokens": 5})
    assert e.value.param == "min_tokens", e.value.body
    assert "max_output_tokens" in e.value.message, e.value.body
    assert "max_tokens" not in e.value.message, e.value.body
