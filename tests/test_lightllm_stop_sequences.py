"""LightLLM's stop_sequences on /generate and /generate_stream are matched as LightLLM
matches them: on the output's token ids (a string as the tokenizer encodes it, without
special tokens), not on its text. Text that only looks like a stop string (other tokens
making it, or a part of one token) ends nothing, and an output always ends with a whole
token."""

from __future__ import annotations

import json

import pytest
from live_server import http, sse_events

PARIS = "The capital of France is"  # greedy: " Paris" (7042), "." (30), "\n", ...
PARIS_ID, DOT = 7042, 30
PA, RIS = 13947, 4593  # " Pa" and "ris": their text is " Paris", their ids are not 7042


def both(server, parameters: dict) -> list[tuple]:
    """(text, count, finish_reason) of /generate and of /generate_stream."""
    body = {"inputs": PARIS, "parameters": parameters}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    status, _, sraw = http(server, "POST", "/generate_stream", json=body)
    assert status == 200, sraw
    out = json.loads(raw)
    events = [json.loads(e) for e in sse_events(sraw)]
    return [(out["generated_text"][0], out["count_output_tokens"], out["finish_reason"]),
            ("".join(e["token"]["text"] for e in events),
             events[-1]["token"]["count_output_tokens"], events[-1]["finish_reason"])]


@pytest.mark.parametrize("stop", [
    "s.",  # " Paris" "." holds it as text; it encodes to "s" "."
    " Par",  # a part of the token " Paris"
    [PA, RIS],  # the text " Paris" of other tokens
], ids=["across-tokens", "inside-a-token", "ids-of-the-same-text"])
def test_text_that_only_looks_like_the_stop_sequence_ends_nothing(server, stop):
    """Matched on the text, each ended the output at its first token or two (" Par" cut
    the text inside a token); LightLLM generates on."""
    free = both(server, {"max_new_tokens": 4})[0]
    got = both(server, {"max_new_tokens": 4, "stop_sequences": [stop]})
    assert got == [free, free] and free[2] == "length" and free[1] == 4, (got, free)


@pytest.mark.parametrize("stop", [" Paris.", [PARIS_ID, DOT]], ids=["string", "ids"])
def test_the_tokens_of_the_stop_sequence_end_the_output(server, stop):
    for got in both(server, {"max_new_tokens": 6, "stop_sequences": ["zzz", stop]}):
        assert got == (" Paris.", 2, "stop"), got


def test_a_stop_sequence_of_one_id_ends_the_output_whatever_min_new_tokens(server):
    """LightLLM's min_new_tokens holds back eos alone: a stop sequence ends the output from
    its first token (as vLLM's stop_token_ids, [7042] was banned under min_tokens, and the
    output went on to other tokens)."""
    for got in both(server, {"max_new_tokens": 6, "min_new_tokens": 4,
                             "stop_sequences": [[PARIS_ID]]}):
        assert got == (" Paris", 1, "stop"), got


def test_the_last_token_ending_a_stop_sequence_is_a_stop(server):
    """LightLLM checks the stop sequences before the length: the max_new_tokens-th token
    completing one ends the output with "stop"."""
    for got in both(server, {"max_new_tokens": 2, "stop_sequences": [[PARIS_ID, DOT]]}):
        assert got == (" Paris.", 2, "stop"), got


def test_stop_sequences_of_no_token_are_dropped(server):
    """LightLLM drops "" and [] (no token to match): served as if not sent, where they were
    refused."""
    free = both(server, {"max_new_tokens": 3})
    assert both(server, {"max_new_tokens": 3, "stop_sequences": ["", []]}) == free
    assert both(server, {"max_new_tokens": 3, "stop_sequences": ""}) == free


@pytest.mark.parametrize("stop,says", [
    (["x" * 1024, "z" * 1024], "stop_sequences[1] encodes to 512 token ids, more than the 256"),
    ([[5], [5] * 257], "stop_sequences[1] has 257 token ids, more than the 256"),
    (["a"] * 65, "at most 64 stop_sequences, got 65"),
    # each within its bounds (256 tokens); all together 17 * 1024 characters to encode on
    # the event loop (64 of them took 20 ms a request), past the OpenAI routes' 16 * 1024
    (["x" * 1024] * 17, "the stop_sequences' strings have 17408 characters in all, more "
                        "than the 16384"),
])
def test_stop_sequences_past_the_bounds_are_refused(server, stop, says):
    """A stop sequence holds at most 256 token ids, as in LightLLM ("x" * 1024 is 256
    tokens, "z" * 1024 is 512)."""
    status, _, raw = http(server, "POST", "/generate", json={
        "inputs": PARIS, "parameters": {"max_new_tokens": 2, "stop_sequences": stop}})
    err = json.loads(raw)["error"]
    assert status == 417 and err["param"] == "parameters.stop_sequences", err
    assert says in err["message"], err
