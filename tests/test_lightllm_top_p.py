"""/generate's top-p counts the whole distribution's mass (LightLLM's sampler), where
/v1/completions renormalises over the top-k set (vLLM's); and a slot a /generate request
used serves the next OpenAI request as if it were fresh (the request table's
top_p_joint, penalty and length-penalty columns are the new request's)."""

from __future__ import annotations

import json
import math

from live_server import http

PROMPTS = ("The weather today is", "My favourite colour is", "I went to the", "Once upon a")


def top_two(server, prompt: str) -> tuple[str, float, float]:
    """The greedy first token of `prompt` and the probabilities of its two most likely
    first tokens (raw, temperature 1)."""
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 2}
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw
    top = sorted(json.loads(raw)["choices"][0]["logprobs"]["top_logprobs"][0].values(),
                 reverse=True)
    return prompt, math.exp(top[0]), math.exp(top[1])


def split_top_p(server) -> tuple[str, float, float]:
    """A prompt whose second token is likely enough to be drawn often, and a top_p that
    keeps it when top-p counts the whole distribution's mass (p1 < top_p) but not when it
    counts the top-2 set's renormalised (p1 / (p1 + p2) > top_p); and p2 / (p1 + p2)."""
    prompt, p1, p2 = max((top_two(server, p) for p in PROMPTS), key=lambda t: t[2] / t[1])
    assert p2 / (p1 + p2) > 0.1, (prompt, p1, p2)
    return prompt, (p1 + p1 / (p1 + p2)) / 2, p2 / (p1 + p2)


def generate_firsts(server, prompt: str, top_p: float, seed: int) -> set[str]:
    body = {"inputs": prompt, "parameters": {
        "do_sample": True, "temperature": 1.0, "top_k": 2, "top_p": top_p, "n": 16,
        "best_of": 16, "seed": seed, "max_new_tokens": 1}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    return set(json.loads(raw)["generated_text"])


def completions(server, prompt: str, top_p: float, **extra) -> list:
    body = {"prompt": prompt, "n": 16, "seed": 7, "temperature": 1.0, "top_k": 2,
            "top_p": top_p, "max_tokens": 3, "logprobs": 1, **extra}
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw
    return sorted((c["index"], c["text"], c["logprobs"]["token_logprobs"],
                   c["logprobs"]["tokens"][0], c["finish_reason"])
                  for c in json.loads(raw)["choices"])


def test_generate_top_p_counts_the_whole_distribution(server):
    """top_k 2 and a top_p between p1 and p1 / (p1 + p2): /generate draws both tokens
    (over 32 draws, each the second with probability p2 / (p1 + p2) > 0.1), while
    /v1/completions, vLLM's cut, draws the first alone."""
    prompt, top_p, _ = split_top_p(server)
    drawn = generate_firsts(server, prompt, top_p, 1) | generate_firsts(server, prompt, top_p, 2)
    assert len(drawn) == 2, drawn
    firsts = {c[1] for c in completions(server, prompt, top_p, max_tokens=1)}
    assert len(firsts) == 1, firsts


def test_a_slot_after_generate_serves_openai_as_fresh(server):
    """An OpenAI request gets the same tokens and logprobs before and after /generate
    requests with LightLLM's options (top_p_joint, input_penalty, a length penalty) ran
    in the same slots (the table hands a freed slot out again, last freed first)."""
    prompt, top_p, _ = split_top_p(server)
    before = completions(server, prompt, top_p, max_tokens=2)
    body = {"inputs": prompt, "parameters": {
        "do_sample": True, "temperature": 1.0, "top_k": 2, "top_p": top_p, "n": 16,
        "best_of": 16, "seed": 3, "max_new_tokens": 3, "input_penalty": True,
        "repetition_penalty": 1.5, "exponential_decay_length_penalty": [1, 1e6]}}
    status, _, raw = http(server, "POST", "/generate", json=body)
    assert status == 200, raw
    after = completions(server, prompt, top_p, max_tokens=2)
    assert after == before
    # as a fresh slot serves it (which `before` may not have had, after other tests):
    # vLLM's top-p cut, one first token; no length penalty (its eos certain at the 2nd)
    assert len({c[3] for c in after}) == 1, after
    assert {c[4] for c in after} == {"length"}, after
