"""vLLM's stop_reason in the OpenAI responses, through the real server: each completion and
chat choice (whole, and the final chunk of a streamed one) says which stop string or stop
token id ended it; null for the model's eos and for the length limit."""

from __future__ import annotations

import json

import pytest
from live_server import at_once, http, sse_events

EOS = 2  # the default model's <|im_end|>
NEWLINE = 198  # "\n"
# logit_bias makes the first token all but certain: "\n", or the eos
FORCE_NEWLINE = {"logit_bias": {str(NEWLINE): 100}, "temperature": 0, "max_tokens": 3}
CASES = [  # (fields, finish_reason, stop_reason)
    ({**FORCE_NEWLINE, "stop": ["zzq", "\n"]}, "stop", "\n"),
    ({**FORCE_NEWLINE, "stop_token_ids": [7, NEWLINE]}, "stop", NEWLINE),
    ({**FORCE_NEWLINE, "max_tokens": 1}, "length", None),
    ({"logit_bias": {str(EOS): 100}, "temperature": 0, "max_tokens": 3}, "stop", None),
    # more than 16 stop strings and 8 stop ids (were 400s): the one that ends it is the last
    ({**FORCE_NEWLINE, "stop": [f"zz{i}" for i in range(39)] + ["\n"]}, "stop", "\n"),
    ({**FORCE_NEWLINE, "stop_token_ids": [*range(100, 119), NEWLINE]}, "stop", NEWLINE),
]
ENDPOINTS = [("/v1/completions", {"prompt": "The capital of France is"}),
             ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})]


def _whole(server, path: str, body: dict) -> dict:
    status, _, raw = http(server, "POST", path, json=body)
    assert status == 200, raw
    return json.loads(raw)["choices"][0]


def _chunks(server, path: str, body: dict) -> list[dict]:
    """The choice of each streamed chunk that has one."""
    status, _, raw = http(server, "POST", path, json={**body, "stream": True})
    assert status == 200, raw
    return [c for e in sse_events(raw) if e != "[DONE]" for c in json.loads(e)["choices"]]


@pytest.mark.parametrize("path, base", ENDPOINTS, ids=["completions", "chat"])
def test_stop_reason_says_which_stop_ended_the_choice(server, path, base):
    """stop_reason was missing from every choice (vLLM clients read it to know which stop
    string or stop token ended the output: finish_reason "stop" alone does not say)."""
    calls = []
    for fields, _, _ in CASES:
        body = {**base, **fields}
        calls += [lambda b=body: _whole(server, path, b), lambda b=body: _chunks(server, path, b)]
    results = at_once(*calls)
    for (fields, finish, reason), whole, chunks in zip(CASES, results[::2], results[1::2]):
        assert (whole["finish_reason"], whole["stop_reason"]) == (finish, reason), (fields, whole)
        *before, last = chunks
        assert (last["finish_reason"], last["stop_reason"]) == (finish, reason), (fields, last)
        # the other chunks: null (completions, as vLLM sends every field) or left out (chat)
        assert all(c["finish_reason"] is None and c.get("stop_reason") is None
                   for c in before), (fields, before)
        if path == "/v1/completions":
            assert all("stop_reason" in c for c in before), before


# -- the model's other end-of-sequence ids -----------------------------------------------------

TINY = {  # tiny random weights of a Qwen2 shape, on the default model's tokenizer (eos 2)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 49152,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "eos_token_id": EOS,
}
END_OF_TURN = 0  # listed beside the eos as Llama 3's <|eot_id|> is in its generation_config


@pytest.fixture(scope="module")
def two_eos(tmp_path_factory):
    from live_server import LiveServer

    from aiollm.model import load_tokenizer

    d = tmp_path_factory.mktemp("two-eos")
    (d / "config.json").write_text(json.dumps(TINY))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, END_OF_TURN]}))
    load_tokenizer(None).save_pretrained(str(d))
    srv = LiveServer(model=str(d), load_format="dummy", max_model_len=256,
                     kv_tokens=1024).start()
    yield srv
    srv.close()


def test_a_models_other_eos_id_is_its_stop_reason(two_eos):
    """generation_config.json's eos ids other than the tokenizer's eos (Llama 3's
    <|eot_id|>) end a request as stop ids do in vLLM, which reports the id; aiollm said
    null, as for the eos. With ignore_eos they end nothing (vLLM's rule too)."""
    def forced(token: int, **fields) -> dict:
        return {"prompt": "Hi", "logit_bias": {str(token): 100}, "temperature": 0,
                "max_tokens": 2, **fields}

    other, eos, ignored, stream = at_once(
        lambda: _whole(two_eos, "/v1/completions", forced(END_OF_TURN)),
        lambda: _whole(two_eos, "/v1/completions", forced(EOS)),
        lambda: _whole(two_eos, "/v1/completions", forced(END_OF_TURN, ignore_eos=True)),
        lambda: _chunks(two_eos, "/v1/completions", forced(END_OF_TURN)))
    assert (other["finish_reason"], other["stop_reason"]) == ("stop", END_OF_TURN), other
    assert (eos["finish_reason"], eos["stop_reason"]) == ("stop", None), eos
    assert (ignored["finish_reason"], ignored["stop_reason"]) == ("length", None), ignored
    assert (stream[-1]["finish_reason"], stream[-1]["stop_reason"]) == ("stop", END_OF_TURN)


def test_many_stop_ids_beside_the_models_eos_ids(two_eos):
    """A request's stop ids past the 8 that the request table holds are checked on the host;
    with generation_config.json's eos ids they all end a request, and min_tokens bans them
    all (eos ids and every stop id) until it is reached."""
    ids = list(range(100, 120))  # the 18th is forced below: one of the host's

    def forced(token: int, **fields) -> dict:
        return {"prompt": "Hi", "logit_bias": {str(token): 100}, "temperature": 0,
                "max_tokens": 4, "stop_token_ids": ids, **fields}

    other, own, held = at_once(
        lambda: _whole(two_eos, "/v1/completions", forced(END_OF_TURN)),
        lambda: _whole(two_eos, "/v1/completions", forced(117)),
        lambda: http(two_eos, "POST", "/v1/completions",
                     json=forced(117, min_tokens=2, return_token_ids=True)))
    assert (other["finish_reason"], other["stop_reason"]) == ("stop", END_OF_TURN), other
    assert (own["finish_reason"], own["stop_reason"]) == ("stop", 117), own
    assert held[0] == 200, held[2]
    c = json.loads(held[2])["choices"][0]
    assert (c["finish_reason"], c["stop_reason"]) == ("stop", 117), c
    tokens = c["token_ids"]
    assert len(tokens) == 3 and not {EOS, END_OF_TURN, *ids} & set(tokens[:2]), tokens


# -- the token that completes a stop string ----------------------------------------------------

PARIS_ID = 7042  # " Paris", the default model's greedy first token after PARIS
PARIS = "The capital of France is"
ONLY_PARIS = {"logit_bias": {str(PARIS_ID): 100}, "temperature": 0, "max_tokens": 3,
              "stop": [" Par"]}


def test_the_token_that_completes_a_stop_string_is_counted(server):
    """Stop " Par" with a first token " Paris": the text is "" and the output ends, but the
    model generated that token. vLLM keeps it in token_ids, usage.completion_tokens (OpenAI
    bills every generated token) and the logprobs; aiollm dropped it with the stop string's
    text (completion_tokens 0, no logprobs). Its logprobs entry stands for its share of the
    text, as a stop token's does: "" in completions' tokens (they join to the text), chat's
    token " Paris" with the bytes of the content it holds (none)."""
    usage = {"stream_options": {"include_usage": True}}
    cmpl = {"prompt": PARIS, **ONLY_PARIS, "logprobs": 1}
    chat = {"messages": [{"role": "user", "content": "Hi"}], **ONLY_PARIS,
            "logprobs": True, "top_logprobs": 1}
    lightllm = {"inputs": PARIS, "parameters": {
        "max_new_tokens": 3, "stop_sequences": [" Par"], "allowed_token_ids": [PARIS_ID],
        "return_details": True}}
    whole_c, stream_c, whole_h, stream_h, gen, gen_stream = at_once(
        lambda: http(server, "POST", "/v1/completions", json=cmpl),
        lambda: http(server, "POST", "/v1/completions", json={**cmpl, "stream": True, **usage}),
        lambda: http(server, "POST", "/v1/chat/completions", json=chat),
        lambda: http(server, "POST", "/v1/chat/completions",
                     json={**chat, "stream": True, **usage}),
        lambda: http(server, "POST", "/generate", json=lightllm),
        lambda: http(server, "POST", "/generate_stream", json=lightllm))
    for status, _, raw in (whole_c, stream_c, whole_h, stream_h, gen, gen_stream):
        assert status == 200, raw

    out = json.loads(whole_c[2])
    c = out["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == ("", "stop", " Par"), c
    assert out["usage"]["completion_tokens"] == 1, out["usage"]
    assert c["logprobs"]["tokens"] == [""] and c["logprobs"]["text_offset"] == [0], c
    # raw logprobs (the default): the model's own, not the certainty allowed_token_ids made
    assert -30 < c["logprobs"]["token_logprobs"][0] < -0.01
    events = [json.loads(e) for e in sse_events(stream_c[2]) if e != "[DONE]"]
    chunks = [ch for e in events for ch in e["choices"]]
    assert "".join(ch["text"] for ch in chunks) == ""
    assert [t for ch in chunks if ch["logprobs"] for t in ch["logprobs"]["tokens"]] == [""]
    assert events[-1]["usage"]["completion_tokens"] == 1, events[-1]

    out = json.loads(whole_h[2])
    c = out["choices"][0]
    assert (c["message"]["content"] or "", c["finish_reason"]) == ("", "stop"), c
    assert out["usage"]["completion_tokens"] == 1, out["usage"]
    (entry,) = c["logprobs"]["content"]
    assert (entry["token"], entry["bytes"]) == (" Paris", []), entry
    events = [json.loads(e) for e in sse_events(stream_h[2]) if e != "[DONE]"]
    chunks = [ch for e in events for ch in e["choices"]]
    entries = [x for ch in chunks if ch.get("logprobs") for x in ch["logprobs"]["content"]]
    assert [(x["token"], x["bytes"]) for x in entries] == [(" Paris", [])], entries
    assert events[-1]["usage"]["completion_tokens"] == 1, events[-1]

    # LightLLM's /generate matches its stop sequences on the token ids: " Par" (its own
    # token) is no part of " Paris" there, and the output runs to its length
    out = json.loads(gen[2])
    assert out["generated_text"] == [" Paris" * 3] and out["count_output_tokens"] == 3, out
    assert [(t["id"], t["text"]) for t in out["tokens"]] == [(PARIS_ID, " Paris")] * 3, out
    events = [json.loads(e) for e in sse_events(gen_stream[2])]
    assert [e["token"]["id"] for e in events] == [PARIS_ID] * 3, events
    assert events[-1]["finish_reason"] == "length", events


def test_a_gguf_models_end_of_generation_ids_through_each_api(server):
    """The default model (SmolLM2's GGUF file) ends where llama.cpp ends (gguf_eog.py): at its
    eos <|im_end|> (2: no stop_reason, as vLLM reports the tokenizer's eos) and at
    <|endoftext|> (0) and <reponame> (4), which are stop ids as vLLM counts a generation
    config's other eos ids (stop_reason the id); ignore_eos turns all three off, and
    min_tokens bans all three until it is reached."""
    calls = []
    for token in (0, EOS, 4):
        for fields in ({}, {"ignore_eos": True}, {"min_tokens": 2}):
            body = {"logit_bias": {str(token): 100}, "temperature": 0, "max_tokens": 3,
                    "return_token_ids": True, **fields}
            calls.append(lambda b=body: _whole(server, "/v1/completions", {"prompt": "Hi", **b}))
            calls.append(lambda b=body: _chunks(server, "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Hi"}], **b})[-1])
        calls.append(lambda t=token: json.loads(http(server, "POST", "/generate", json={
            "inputs": "Hi", "parameters": {"max_new_tokens": 3, "allowed_token_ids": [t]}})[2]))
    results = iter(at_once(*calls))
    for token in (0, EOS, 4):
        reason = None if token == EOS else token
        for fields, finish, stop in (({}, "stop", reason), ({"ignore_eos": True}, "length", None),
                                     ({"min_tokens": 2}, "stop", reason)):
            whole, last = next(results), next(results)
            assert (whole["finish_reason"], whole["stop_reason"]) == (finish, stop), (token, whole)
            assert (last["finish_reason"], last["stop_reason"]) == (finish, stop), (token, last)
            ids = whole["token_ids"]
            if "min_tokens" in fields:
                assert len(ids) == 3 and not {0, EOS, 4} & set(ids[:2]), (token, ids)
        generated = next(results)
        assert generated["finish_reason"] == "stop", (token, generated)
