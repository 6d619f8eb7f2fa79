"""Logprobs through the real server under --logprobs-mode: raw_logprobs (the default, vLLM
V1's) reports the model's own distribution whatever the request's penalties, logit_bias,
allowed_token_ids or grammar did to the draw; processed_logprobs the distribution the token
was drawn from. The tokens are the same under both; streams agree with whole answers; a
bad value is refused naming the option."""

from __future__ import annotations

import json
import math

import pytest
from live_server import LiveServer, at_once, http, sse_events

from aiollm.cli import build_parser
from aiollm.engine import Engine
from aiollm.vllm_names import engine_options

# the fault's reproduction: "Hi" is one token, which a repetition penalty of 0.01 makes the
# greedy choice three times over; its processed logprob was 0.0, the runner-up's -1469
REPRO = {"prompt": "Hi", "max_tokens": 3, "repetition_penalty": 0.01, "logprobs": 2,
         "temperature": 0}
PARIS = "The capital of France is"
CHAT = [{"role": "user", "content": "Give me a JSON object"}]
# what OpenAI's API and vLLM's server report for a token the request made impossible
IMPOSSIBLE = -9999.0


@pytest.fixture(scope="module")
def processed():
    srv = LiveServer(logprobs_mode="processed_logprobs").start()
    yield srv
    srv.close()


def post(server, path: str, body: dict) -> dict:
    status, _, raw = http(server, "POST", path, json={"model": None, **body})
    assert status == 200, raw
    return json.loads(raw)


def completion_logprobs(server, body: dict) -> dict:
    return post(server, "/v1/completions", body)["choices"][0]["logprobs"]


def streamed_logprobs(server, body: dict) -> dict:
    status, _, raw = http(server, "POST", "/v1/completions",
                          json={"model": None, **body, "stream": True})
    assert status == 200, raw
    joined: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
    for event in sse_events(raw):
        if event != "[DONE]" and (choices := json.loads(event)["choices"]):
            for key in joined:
                joined[key] += choices[0]["logprobs"][key]
    return joined


def model_scores(server, ids: list[int], n_top: int) -> dict:
    """The model's own logprobs of each token of `ids` after the ones before it (prompt
    scoring: echo with max_tokens 0), tokens named by id."""
    return completion_logprobs(server, {"prompt": ids, "max_tokens": 0, "echo": True,
                                        "logprobs": n_top, "return_tokens_as_token_ids": True})


def possible(top: dict) -> dict:
    """A {token: logprob} list's tokens that could be drawn: without the impossible ones,
    reported at -9999.0 (JSON has no -inf), which tie and so come in any order."""
    return {tok: lp for tok, lp in top.items() if lp != IMPOSSIBLE}


def assert_tops_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for tok, lp in want.items():
        assert got[tok] == pytest.approx(lp, abs=1e-3, rel=1e-5), tok


def test_repro_reports_the_penalised_tokens_raw_logprob(server, processed):
    body = {**REPRO, "echo": True, "return_tokens_as_token_ids": True}
    raw, proc = at_once(lambda: completion_logprobs(server, body),
                        lambda: completion_logprobs(processed, body))
    assert raw["tokens"] == proc["tokens"]  # the mode changes no token
    ids = [int(t.removeprefix("token_id:")) for t in raw["tokens"]]
    scores = model_scores(server, ids, 2)
    n_prompt = len(ids) - REPRO["max_tokens"]
    for j in range(n_prompt, len(ids)):
        assert raw["token_logprobs"][j] == pytest.approx(scores["token_logprobs"][j], abs=1e-3)
        assert_tops_close(raw["top_logprobs"][j], scores["top_logprobs"][j])
        # the model's distribution: the penalised token is unlikely, its runner-ups likely
        assert raw["token_logprobs"][j] < -5
        assert max(raw["top_logprobs"][j].values()) > -2
        # processed (today's value before the option): the penalised row's, a certainty
        assert proc["token_logprobs"][j] == pytest.approx(0.0, abs=1e-3)
        assert min(proc["top_logprobs"][j].values()) < -100
    # LightLLM's per-token logprob is the raw one too. Its repetition penalty is at least 1
    # (it refuses 0.01): 1e6 over the prompt and the output (input_penalty) keeps every
    # token seen from being drawn, so that the tokens drawn are not the model's likeliest
    events = [json.loads(e) for e in sse_events(http(server, "POST", "/generate_stream", json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 3, "repetition_penalty": 1e6,
                                       "input_penalty": True}})[2])]
    got = [e["token"]["logprob"] for e in events]
    scores = model_scores(server, ids[:n_prompt] + [e["token"]["id"] for e in events], 2)
    assert got == pytest.approx(scores["token_logprobs"][n_prompt:], abs=1e-3)
    assert any(lp < max(top.values()) - 0.1
               for lp, top in zip(got, scores["top_logprobs"][n_prompt:])), (got, scores)


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_streams_report_what_whole_answers_do(server, processed, mode):
    srv = server if mode == "raw" else processed
    for body in (REPRO, {"prompt": PARIS, "max_tokens": 4, "logprobs": 3, "temperature": 0.8,
                         "top_k": 5, "seed": 7}):
        whole, streamed = at_once(lambda: completion_logprobs(srv, body),
                                  lambda: streamed_logprobs(srv, body))
        assert streamed["tokens"] == whole["tokens"]
        assert streamed["token_logprobs"] == pytest.approx(whole["token_logprobs"], abs=1e-4)
        for got, want in zip(streamed["top_logprobs"], whole["top_logprobs"]):
            assert_tops_close(got, want)


def test_logit_bias_and_allowed_token_ids(server, processed):
    plain = completion_logprobs(server, {"prompt": PARIS, "max_tokens": 1, "logprobs": 5,
                                         "temperature": 0, "return_tokens_as_token_ids": True})
    model = plain["top_logprobs"][0]  # the model's five most likely first tokens
    third, fourth = (int(t.removeprefix("token_id:")) for t in list(model)[2:4])
    biased = {"prompt": PARIS, "max_tokens": 1, "logprobs": 5, "temperature": 0,
              "return_tokens_as_token_ids": True, "logit_bias": {str(third): 100}}
    allowed = {**biased, "logit_bias": None, "allowed_token_ids": [third, fourth]}
    raw_b, proc_b, raw_a, proc_a = at_once(
        lambda: completion_logprobs(server, biased), lambda: completion_logprobs(processed, biased),
        lambda: completion_logprobs(server, allowed),
        lambda: completion_logprobs(processed, allowed))
    name = f"token_id:{third}"
    assert raw_b["tokens"] == proc_b["tokens"] == raw_a["tokens"] == proc_a["tokens"] == [name]
    # raw: the model's logprob of the biased token, and its own top five around it
    assert raw_b["token_logprobs"][0] == pytest.approx(model[name], abs=1e-3)
    assert_tops_close(raw_b["top_logprobs"][0], model)
    assert proc_b["token_logprobs"][0] == pytest.approx(0.0, abs=1e-3)
    # allowed_token_ids: raw lists the tokens it forbids with their logprobs; processed the
    # two allowed ones, then three it forbids at -9999.0, as vLLM reports them
    assert_tops_close(raw_a["top_logprobs"][0], model)
    top = proc_a["top_logprobs"][0]
    assert len(top) == 5 and set(possible(top)) == {name, f"token_id:{fourth}"}
    assert sum(2.718281828 ** lp for lp in possible(top).values()) == \
        pytest.approx(1.0, abs=1e-3)


def test_json_grammar(server, processed):
    """A grammar's forbidden tokens are out of the raw row too: vLLM V1's model runner
    masks a grammar before its sampler takes the raw logprobs. So greedy with nothing else
    on the row, raw reports what processed does; ours reported the unconstrained row."""
    def chat(srv, **extra):
        return post(srv, "/v1/chat/completions", {
            "messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True,
            "top_logprobs": 3, **extra})["choices"][0]["logprobs"]["content"]
    fmt = {"type": "json_object"}
    free, raw, proc = at_once(lambda: chat(server), lambda: chat(server, response_format=fmt),
                              lambda: chat(processed, response_format=fmt))
    assert [t["token"] for t in raw] == [t["token"] for t in proc]
    assert raw[0]["token"] != free[0]["token"]  # the grammar changed the first token
    # both: only what the grammar allows, so the chosen token is more likely than the
    # model alone says
    unconstrained = next(t["logprob"] for t in free[0]["top_logprobs"]
                         if t["token"] == raw[0]["token"])
    assert proc[0]["logprob"] > unconstrained + 1
    for r, p in zip(raw, proc):
        assert r["logprob"] == pytest.approx(p["logprob"], abs=1e-3)
        assert len(r["top_logprobs"]) == len(p["top_logprobs"]) == 3
        assert possible({t["token"]: t["logprob"] for t in r["top_logprobs"]}) == \
            pytest.approx(possible({t["token"]: t["logprob"] for t in p["top_logprobs"]}),
                          abs=1e-3)
    assert free[0]["token"] not in possible(
        {t["token"]: t["logprob"] for t in raw[0]["top_logprobs"]})


def test_a_grammar_beside_allowed_token_ids(server, processed):
    """A step mixing a grammar row and an allowed_token_ids row, both reporting raw
    logprobs, masks each raw row with the grammars' part of its bitmask alone: the grammar
    request reports what processed does (greedy, nothing else on its row), the other the
    model's own logprobs, as each does alone. (The part is taken only for raw logprobs: a
    mixed step without them copied it too.)"""
    chat = {"messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True,
            "top_logprobs": 3, "response_format": {"type": "json_object"}}
    ids = {"prompt": PARIS, "max_tokens": 3, "temperature": 0, "logprobs": 3,
           "allowed_token_ids": [28, 30]}

    def tops(content: list) -> list:
        return [possible({t["token"]: t["logprob"] for t in c["top_logprobs"]})
                for c in content]

    def ask(srv, body):
        if "messages" in body:
            return tops(post(srv, "/v1/chat/completions", body)["choices"][0]["logprobs"][
                "content"])
        return completion_logprobs(srv, body)["top_logprobs"]
    want = at_once(lambda: ask(processed, chat), lambda: ask(server, ids))
    for _ in range(3):  # the two in one step (they come together; asked a few times)
        got = at_once(lambda: ask(server, chat), lambda: ask(server, ids))
        for g, w in zip(got, want):
            assert len(g) == len(w)
            for a, b in zip(g, w):
                assert a == pytest.approx(b, abs=1e-3)


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_top_logprobs_are_numbers_where_a_constraint_leaves_fewer_tokens(server, processed,
                                                                         mode):
    """A constraint that leaves fewer tokens possible than top_logprobs asks for filled the
    list with forbidden tokens whose logprob, -inf, went out as JSON null: OpenAI's schema
    has a number there (typed clients, e.g. Rust's and Go's, fail to parse the response).
    The list is as long as asked, the tokens that cannot be sampled at -9999.0 (they were
    left out; vLLM lists them so, as OpenAI does): processed, and raw under a grammar
    (vLLM masks a grammar before it takes raw logprobs); under allowed_token_ids raw lists
    the model's top tokens, forbidden ones too, each with its finite logprob, as vLLM does
    (moved here from test_api_outputs.py when raw became the default). Chat and
    completions, streamed or not."""
    srv = server if mode == "raw" else processed
    chat = {"messages": [{"role": "user", "content": "yes or no?"}], "max_tokens": 4,
            "temperature": 0, "guided_choice": ["yes", "no"], "logprobs": True,
            "top_logprobs": 5}
    for stream in (False, True):
        status, _, raw = http(srv, "POST", "/v1/chat/completions",
                              json={**chat, "stream": stream})
        assert status == 200, raw
        entries = ([json.loads(raw)["choices"][0]["logprobs"]] if not stream else
                   [json.loads(e)["choices"][0]["logprobs"] for e in sse_events(raw)
                    if e != "[DONE]"])
        content = [c for lp in entries if lp for c in lp["content"]]
        assert content and all(1 <= len(c["top_logprobs"]) <= 5 for c in content)
        for c in content:
            assert all(isinstance(t["logprob"], float) for t in c["top_logprobs"]), c
        assert all(len(c["top_logprobs"]) == 5 for c in content), content
        # past its first token the answer has one way on, its end: by any of the model's
        # end-of-generation tokens (llama.cpp's set for the default GGUF: <|im_end|>,
        # <|endoftext|>, <reponame>), each other token impossible
        last = content[-1]["top_logprobs"]
        ends = [t for t in last if t["logprob"] > IMPOSSIBLE]
        assert 1 <= len(ends) <= 3 and all(t["token"].startswith("<") for t in ends), content
        assert [t["logprob"] for t in last[len(ends):]] == [IMPOSSIBLE] * (5 - len(ends))
        for c in content:
            assert c["top_logprobs"][0]["token"] == c["token"]  # greedy: the most likely
    # two tokens allowed, five alternatives asked for
    body = {"prompt": PARIS, "max_tokens": 3, "temperature": 0, "logprobs": 5,
            "allowed_token_ids": [28, 30]}
    for lp in (completion_logprobs(srv, body), streamed_logprobs(srv, body)):
        assert len(lp["top_logprobs"]) == 3
        for top in lp["top_logprobs"]:
            assert all(isinstance(v, float) for v in top.values()), top
            assert 5 <= len(top) <= 6, top
            if mode == "processed":
                assert 1 <= len(possible(top)) <= 2, top
                assert all(v == IMPOSSIBLE for v in top.values() if v not in
                           possible(top).values()), top


def test_a_bad_mode_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "M", "--logprobs-mode", "processed"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--logprobs-mode" in err and "raw_logprobs" in err and "'processed'" in err
    args = build_parser().parse_args(["serve", "M", "--logprobs-mode", "processed_logits"])
    assert args.logprobs_mode == "processed_logits"
    assert build_parser().parse_args(["serve", "M"]).logprobs_mode == "raw_logprobs"
    with pytest.raises(ValueError, match="logprobs_mode must be one of .* got 'raw'"):
        Engine(logprobs_mode="raw")
    # vLLM's LLM(logprobs_mode=...) keyword is EngineConfig's field, passed as it is
    assert engine_options({"logprobs_mode": "raw_logits"})[0] == {"logprobs_mode": "raw_logits"}


def test_processed_logprobs_of_a_truncated_draw_are_its_distribution(server, processed):
    """Sampled with a temperature and top_k 3, 20 alternatives asked for: processed lists
    the 3 tokens the draw could take, their probabilities summing to 1 (the temperature
    included), the chosen one among them, then 17 it could not at -9999.0 (vLLM's and
    OpenAI's number for them; they were left out); raw lists 20 (up to 21 in completions)
    of the model's. Streams list the same tokens (seeded); the tokens are the same under
    both modes."""
    body = {"prompt": PARIS, "max_tokens": 4, "temperature": 0.7, "top_k": 3, "seed": 5,
            "logprobs": 20, "return_tokens_as_token_ids": True}
    got = {name: completion_logprobs(srv, body) for name, srv in
           (("raw", server), ("processed", processed))}
    assert got["raw"]["tokens"] == got["processed"]["tokens"]
    streamed = streamed_logprobs(processed, body)
    assert streamed["tokens"] == got["processed"]["tokens"]
    for tops, want in zip(streamed["top_logprobs"], got["processed"]["top_logprobs"]):
        assert len(tops) == len(want)
        assert_tops_close(possible(tops), possible(want))
    for tok, lp, top in zip(*(got["processed"][k] for k in
                              ("tokens", "token_logprobs", "top_logprobs"))):
        assert isinstance(lp, float) and -1e30 < lp <= 0, lp
        assert len(top) == 20 and tok in possible(top), top
        assert 1 <= len(possible(top)) <= 3, top
        assert sorted(set(top.values()) - set(possible(top).values())) == [IMPOSSIBLE], top
        assert sum(math.exp(v) for v in possible(top).values()) == \
            pytest.approx(1, abs=1e-4), top
        assert top[tok] == pytest.approx(lp)
    assert all(20 <= len(top) <= 21 for top in got["raw"]["top_logprobs"])
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0.7, "top_k": 3, "seed": 5, "logprobs": True, "top_logprobs": 20}
    for entry in post(processed, "/v1/chat/completions", chat)["choices"][0]["logprobs"][
            "content"]:
        values = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(values) == 20 and all(isinstance(v, float) for v in values)
        n = sum(v > IMPOSSIBLE for v in values)
        assert 1 <= n <= 3 and values[n:] == [IMPOSSIBLE] * (20 - n), values
