"""LightLLM's routes besides /generate and /generate_stream, as its clients call them:
/liveness, /readiness, /get_model_name, /tokens, and POST / (its generate with a `stream`
flag); and the fields of /generate's answer that LightLLM's clients read."""

from __future__ import annotations

import json
import re

import pytest
from live_server import http, sse_events

PARIS = "The capital of France is"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["/liveness", "/readiness"])
def test_probes_answer_ok(server, path, method):
    status, _, raw = http(server, method, path)
    assert status == 200 and json.loads(raw) == {"status": "ok"}, raw


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_get_model_name_names_the_served_model(server, method):
    _, _, models = http(server, "GET", "/v1/models")
    status, _, raw = http(server, method, "/get_model_name")
    assert status == 200, raw
    assert json.loads(raw) == {"model_name": json.loads(models)["data"][0]["id"]}


def test_tokens_counts_the_text_as_generate_reads_it(server):
    _, _, tok = http(server, "POST", "/tokenize", json={"prompt": PARIS})
    status, _, raw = http(server, "POST", "/tokens", json={"text": PARIS, "parameters": {}})
    assert status == 200, raw
    assert json.loads(raw) == {"ntokens": json.loads(tok)["count"]}
    status, _, raw = http(server, "POST", "/tokens", json={"text": 3})
    err = json.loads(raw)["error"]
    assert status == 417 and err["param"] == "text", raw


def test_tokens_checks_the_parameters_as_generate_does(server):
    """LightLLM's /tokens builds and verifies the SamplingParams of its `parameters` as
    /generate does (api_http.py), and answers a value /generate refuses with its 417: a
    client counting the prompt of the /generate request it is about to send learns then
    that the request is refused. Here they were not checked (a temperature of -1 was
    counted). Valid ones, and null (taken as none), are counted; add_special_tokens, the
    one that changes a count, is read (this model's tokenizer adds none:
    tests/test_api_letters_vocab.py counts one that does)."""
    _, _, want = http(server, "POST", "/tokens", json={"text": PARIS})
    for parameters in ({"temperature": 0.5, "max_new_tokens": 3, "top_k": 4, "n": 2},
                       {"add_special_tokens": False}, None):
        status, _, raw = http(server, "POST", "/tokens", json={"text": PARIS,
                                                               "parameters": parameters})
        assert status == 200 and json.loads(raw) == json.loads(want), (parameters, raw)
    # (temperature and top_k are read with do_sample alone, as LightLLM reads them)
    for parameters, param in (({"do_sample": True, "temperature": -1},
                               "parameters.temperature"),
                              ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
                              ({"do_sample": True, "top_k": 0}, "parameters.top_k"),
                              ({"min_new_tokens": 5, "max_new_tokens": 2},
                               "parameters.min_new_tokens"),
                              ({"n": 2, "best_of": 3}, "parameters.best_of"),
                              ({"guided_json": {"type": "object"}, "regular_constraint": "a"},
                               "parameters.regular_constraint"),
                              ({"temperature": "hot"}, "parameters.temperature")):
        status, _, raw = http(server, "POST", "/tokens", json={"text": PARIS,
                                                               "parameters": parameters})
        out = json.loads(raw)
        assert status == 417 and out["error"]["param"] == param, (parameters, raw)
        assert out["message"] == out["error"]["message"], out
        _, _, generate = http(server, "POST", "/generate", json={"inputs": PARIS,
                                                                 "parameters": parameters})
        assert json.loads(generate)["message"] == out["message"], (generate, raw)
    # a text past the context is still counted: only /generate refuses it
    status, _, raw = http(server, "POST", "/tokens", json={
        "text": "hello " * 600, "parameters": {"max_new_tokens": 3}})
    assert status == 200 and json.loads(raw)["ntokens"] > 512, raw


def test_tokens_refuses_images_as_generate_does(server):
    """LightLLM's /tokens counts an image's tokens too; here, where /generate refuses
    images, /tokens refuses them naming the field (it counted the text alone, a count the
    request that /generate then refused did not have)."""
    body = {"text": PARIS, "multimodal_params": {"images": [{"type": "url", "data": "x"}]}}
    status, _, raw = http(server, "POST", "/tokens", json=body)
    assert status == 417, raw
    assert json.loads(raw)["error"]["param"] == "multimodal_params.images", raw


def test_tokens_counts_an_empty_text(server):
    """An empty text has a count, as LightLLM's /tokens and vLLM's /tokenize answer it
    (this model's tokenizer adds no token of its own): it was a 400 naming a field, prompt,
    that the body does not have."""
    status, _, raw = http(server, "POST", "/tokens", json={"text": ""})
    assert status == 200 and json.loads(raw) == {"ntokens": 0}, raw


def test_root_generates_or_streams_by_its_stream_flag(server):
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 3}}
    _, _, want = http(server, "POST", "/generate", json=body)
    status, _, raw = http(server, "POST", "/", json=body)
    got, want = json.loads(raw), json.loads(want)
    del got["prompt_cache_len"], want["prompt_cache_len"]  # the second reuses the first's
    assert status == 200 and got == want, raw
    status, headers, raw = http(server, "POST", "/", json={**body, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), raw
    events = [json.loads(e) for e in sse_events(raw)]
    assert "".join(e["token"]["text"] for e in events) == want["generated_text"][0]
    assert events[-1]["finished"] and events[-1]["finish_reason"] == "length"
    # null is no stream, as LightLLM pops it and as /v1/completions reads it (was a 400)
    status, _, raw = http(server, "POST", "/", json={**body, "stream": None})
    got = json.loads(raw)
    del got["prompt_cache_len"]
    assert status == 200 and got == want, raw
    status, _, raw = http(server, "POST", "/", json={**body, "stream": "yes"})
    assert status == 417 and json.loads(raw)["error"]["param"] == "stream", raw


def test_details_tokens_carry_lightllm_s_fields(server):
    """With return_details, each of LightLLM's token entries also carries the output's
    count so far, the prompt's length and the mean logprob so far (cumlogprob), as its
    stream events carry the first two: a client reading them got a KeyError."""
    body = {"inputs": PARIS, "parameters": {"max_new_tokens": 3, "ignore_eos": True,
                                            "return_details": True}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    out = json.loads(raw)
    assert status == 200, raw
    tokens = out["tokens"]
    assert [t["count_output_tokens"] for t in tokens] == [1, 2, 3]
    assert all(t["prompt_tokens"] == out["prompt_tokens"] for t in tokens)
    for k, t in enumerate(tokens, 1):
        mean = sum(u["logprob"] for u in tokens[:k]) / k
        assert t["cumlogprob"] == pytest.approx(mean, abs=1e-6), tokens


LOAD_FIELDS = {"current_load", "logical_max_load", "dynamic_max_load"}


def test_token_load_of_an_idle_server_is_zero(server):
    """LightLLM's GET /token_load (what its PD master and routers poll): fractions of the KV
    pool, one number each with a single data-parallel rank. Idle, nothing is held nor
    predicted: cached prefixes no request uses are free, as LightLLM counts them. It was a
    404."""
    server.wait_idle()
    status, _, raw = http(server, "GET", "/token_load")
    assert status == 200, raw
    load = json.loads(raw)
    assert load == {name: 0.0 for name in LOAD_FIELDS}, load
    assert all(isinstance(v, float) for v in load.values()), load


def test_token_load_of_a_running_request(server, client):
    """While one request of ignore_eos runs (its length is known: max_tokens), the
    predicted peak is its prompt and all its output; the KV held now lies between its
    prompt and that peak. logical_max_load is dynamic_max_load, as in LightLLM."""
    server.wait_idle()
    capacity = server.stats()["kv_total"]
    prompt = "One two three four five six seven"
    n_prompt = len(server.engine.tokenizer.encode(prompt))
    stream = client.completions.create(model=client.models.list().data[0].id, prompt=prompt,
                                       max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True})
    try:
        next(iter(stream))
        status, _, raw = http(server, "GET", "/token_load")
    finally:
        stream.close()
    load = json.loads(raw)
    assert status == 200 and set(load) == LOAD_FIELDS, raw
    assert load["logical_max_load"] == load["dynamic_max_load"]
    assert abs(load["dynamic_max_load"] * capacity - (n_prompt + 400)) <= 2, (load, capacity)
    assert n_prompt <= load["current_load"] * capacity < n_prompt + 400, (load, capacity)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_get_score_says_no_reward_model_is_served(server, method):
    """LightLLM's /get_score answers a reward model's score of a conversation; the models
    served here generate text and have no score head, so it is a 404 saying so rather than
    the router's bare "no such route"."""
    status, _, raw = http(server, method, "/get_score", json={"chat": "Hi"})
    err = json.loads(raw)["error"]
    assert status == 404 and "reward model" in err["message"], raw


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/", "/tokens"])
@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain"])
def test_json_sent_under_another_content_type_is_read(server, path, ctype):
    """LightLLM parses every body as JSON whatever its Content-Type (`await request.json()`),
    so `curl URL -d '{"inputs": ...}'`, which sends a form's Content-Type, is served: it was
    a 415 here. The answer is the one a JSON Content-Type gets (but for the prompt cache's
    hit, which the first request made)."""
    body = ({"text": PARIS} if path == "/tokens" else
            {"inputs": PARIS, "parameters": {"max_new_tokens": 2, "do_sample": False}})
    want = http(server, "POST", path, json=body)
    got = http(server, "POST", path, data=json.dumps(body).encode(),
               headers={"Content-Type": ctype})
    assert got[0] == want[0] == 200, got
    cached = re.compile(rb'"prompt_cache_len": ?\d+')
    assert cached.sub(b"", got[2]) == cached.sub(b"", want[2])


def test_a_page_s_form_post_stays_refused(server):
    """A browser's cross-site form or text/plain POST needs no CORS preflight, so a page of
    any site could drive the server through it: with an Origin header (browsers send one)
    the Content-Type must be JSON, as on every route."""
    body = json.dumps({"inputs": PARIS, "parameters": {"max_new_tokens": 1}}).encode()
    status, _, raw = http(server, "POST", "/generate", data=body, headers={
        "Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status == 415 and "Content-Type" in json.loads(raw)["error"]["message"], raw


@pytest.mark.parametrize("ctype,data", [
    ("application/x-www-form-urlencoded", b"inputs=Hi"),  # curl -d inputs=Hi
    ("multipart/form-data; boundary=b",  # curl -F inputs=Hi
     b'--b\r\nContent-Disposition: form-data; name="inputs"\r\n\r\nHi\r\n--b--\r\n')])
def test_a_form_s_fields_are_told_the_body_is_read_as_json(server, ctype, data):
    """A form's fields under a form's Content-Type are no JSON: the 417 says the body is
    read as JSON whatever its Content-Type, naming the type sent; it said only where the
    JSON broke ("invalid character (byte 0)"), leaving the client to guess why."""
    status, _, raw = http(server, "POST", "/generate", data=data, headers={"Content-Type": ctype})
    msg = json.loads(raw)["message"]
    assert status == 417 and "not valid JSON" in msg and ctype.split(";")[0] in msg, raw
