"""The text of LightLLM's /generate and /generate_stream: the stop sequence that ended an
output is in it (LightLLM matches stop sequences on the tokens and detokenizes every
token it generated), and an eos token's text is not, unless print_eos_token."""

from __future__ import annotations

import json

import pytest
from live_server import http, sse_events

PARIS = "The capital of France is"  # greedy: " Paris" (7042), ".", "\n", ...
EOS = 2


def texts(server, parameters: dict) -> tuple[str, str]:
    """/generate's generated_text and the join of /generate_stream's token texts."""
    body = {"inputs": PARIS, "parameters": parameters}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    status, _, sraw = http(server, "POST", "/generate_stream", json=body)
    assert status == 200, sraw
    streamed = "".join(json.loads(e)["token"]["text"] for e in sse_events(sraw))
    return json.loads(raw)["generated_text"][0], streamed


@pytest.mark.parametrize("stop", [" Paris", [7042]], ids=["string", "token-id"])
def test_the_stop_sequence_stays_in_the_text(server, stop):
    got = texts(server, {"max_new_tokens": 6, "stop_sequences": [stop]})
    assert got == (" Paris", " Paris"), got


# the test tokenizer's eos (id 2) is <|im_end|>
@pytest.mark.parametrize("print_eos,want", [(False, ""), (True, "<|im_end|>")])
def test_eos_text_is_printed_only_when_asked(server, print_eos, want):
    """LightLLM's detokenizer gives an eos token no text unless print_eos_token (refused
    before); with special tokens skipped it has none either way."""
    parameters = {"max_new_tokens": 3, "allowed_token_ids": [EOS], "ignore_eos": True,
                  "skip_special_tokens": False, "print_eos_token": print_eos}
    assert texts(server, parameters) == (want * 3, want * 3)
    parameters["skip_special_tokens"] = True
    assert texts(server, parameters) == ("", "")


def test_the_eos_that_ends_an_output_is_printed_when_asked(server):
    """LightLLM detokenizes every token it made, the eos that ends the output too: with
    print_eos_token (and special tokens kept) that eos's text ends the text."""
    parameters = {"max_new_tokens": 3, "allowed_token_ids": [EOS],
                  "skip_special_tokens": False, "print_eos_token": True}
    assert texts(server, parameters) == ("<|im_end|>", "<|im_end|>")
    parameters["print_eos_token"] = False
    assert texts(server, parameters) == ("", "")
