"""Reasoning tokens and the reasoning item's status with --reasoning-parser
(aiollm/api/reasoning.py's ReasoningTokens): the count on made-up token texts (a tag split
over tokens, a token that straddles the end tag), then through the server: chat's
usage.completion_tokens_details.reasoning_tokens (whole, streamed, n > 1), the Responses
API's output_tokens_details.reasoning_tokens (whole and streamed) and its reasoning item
cut by max_output_tokens (incomplete, as OpenAI marks it)."""

from __future__ import annotations

import json

import pytest

from live_server import at_once, post_ok
from aiollm.api.reasoning import ReasoningTokens, reasoning_tokens, split, splitter_for

ASK = [{"role": "user", "content": "Think about the sky, then name a colour."}]
THINK = r"<think>[a-z ]{3,24}</think>\n\n[A-Z][a-z]{2,8}"  # a forced thinking answer


@pytest.mark.parametrize("parser,tail,tokens,count", [
    # up to and including the token that completes </think>, the leading <think> too
    ("deepseek_r1", "", ["<think>", "ab", "c", "</think>", "\n\n", "x"], 4),
    ("deepseek_r1", "", ["ab", "</", "think", ">", "x", "y"], 4),  # the tag over 3 tokens
    ("deepseek_r1", "", ["ab", "</think>\n\nx", "y"], 2),  # straddles: reasoning
    ("deepseek_r1", "", ["ab", "</think", ">\n\n", "x"], 3),  # completes it: reasoning
    ("deepseek_r1", "", ["ab", "</think>", "", "x"], 2),  # an empty token after: content
    ("deepseek_r1", "", ["ab", "cd", ""], 3),  # never closed: all (the stop token too)
    ("qwen3", "", ["<", "think", ">", "a", "</think>", "b"], 5),
    ("qwen3", "", ["plain", " answer", "</think>"], 0),  # never entered: none
    ("qwen3", "", ["<thi"], 0),
    ("qwen3", "<think>\n\n</think>\n\n", ["<think>", "x", "</think>"], 0),  # prompt closed it
    ("qwen3", "<think>\n", ["x", "</think>", "y"], 2),  # prompt opened it
    ("qwen3", "", [], 0),
])
def test_count(parser, tail, tokens, count):
    """Whole, and streamed one token a delta and in two deltas at every cut: the same count;
    a stream's count so far never goes past the final one."""
    whole = splitter_for(parser, tail, shaped=False)
    split(whole, "".join(tokens))
    assert reasoning_tokens(whole, tokens) == count
    cuts = [[tokens[:i], tokens[i:]] for i in range(len(tokens) + 1)] + [[[t] for t in tokens]]
    for deltas in cuts:
        s = splitter_for(parser, tail, shaped=False)
        counter = ReasoningTokens(s)
        for d in deltas:
            s.feed("".join(d))
            assert counter.add(d) <= count
        s.finish()
        assert counter.add([]) == count, deltas


# -- through the server ---------------------------------------------------------------------



def _stream_chunks(srv, body: dict) -> list[dict]:
    """The chunks (not [DONE]) of a chat stream."""
    from live_server import http, sse_events

    status, _, raw = http(srv, "POST", "/v1/chat/completions", json={**body, "stream": True})
    assert status == 200, raw
    return [json.loads(e) for e in sse_events(raw)[:-1]]


def _stream_usage(srv, body: dict) -> list[dict]:
    """The usage of each chunk of a chat stream that has one."""
    return [c["usage"] for c in _stream_chunks(srv, body) if c.get("usage")]


def _completing(logprobs: dict, tag: str = "</think>") -> int:
    """How many tokens it takes for the text of the first ones to hold the whole `tag`."""
    text = ""
    for i, t in enumerate(logprobs["content"]):
        text += bytes(t["bytes"]).decode()
        if tag in text:
            return i + 1
    raise AssertionError(f"no {tag} in {text!r}")


def test_chat_counts_reasoning_tokens(thinker):
    """A forced <think>..</think> answer: reasoning_tokens is the tokens up to the one that
    completes </think> (found from the logprobs' bytes), fewer than all; the same in the
    last chunk of a stream (include_usage) and, growing to it, in continuous usage stats;
    summed over the choices of n > 1."""
    body = {"messages": ASK, "temperature": 0, "max_tokens": 40, "guided_regex": THINK}
    # the five requests at once (greedy: each answers as alone), in one batch of steps
    r, ends, continuous, both, chunks = at_once(
        lambda: post_ok(thinker, {**body, "logprobs": True}),
        lambda: _stream_usage(thinker, {**body, "stream_options": {"include_usage": True}}),
        lambda: _stream_usage(thinker, {**body, "stream_options": {
            "include_usage": True, "continuous_usage_stats": True}}),
        lambda: post_ok(thinker, {**body, "n": 2})["usage"],
        lambda: _stream_chunks(thinker, {**body, "n": 2, "stream_options": {
            "include_usage": True, "continuous_usage_stats": True}}))
    n = _completing(r["choices"][0]["logprobs"])
    usage = r["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": n}
    assert 0 < n < usage["completion_tokens"]
    [last] = ends
    for key in ("completion_tokens", "completion_tokens_details"):
        assert last[key] == usage[key]
    counts = [u["completion_tokens_details"]["reasoning_tokens"] for u in continuous]
    assert counts == sorted(counts) and counts[0] < n and counts[-1] == n, counts
    assert both["completion_tokens_details"] == {"reasoning_tokens": 2 * n}
    # streamed with n = 2, a choice's chunks count its own reasoning tokens (as vLLM's),
    # the last chunk both choices'
    last = {c["choices"][0]["index"]: c["usage"]["completion_tokens_details"]
            for c in chunks if c["choices"]}
    assert last == {0: {"reasoning_tokens": n}, 1: {"reasoning_tokens": n}}, last
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2 * n}


def test_chat_without_reasoning(thinker):
    """No reasoning in the output (a grammar that writes the answer from the first token):
    0 reasoning tokens, the details still there as with a parser vLLM sends them."""
    r = post_ok(thinker, {"messages": ASK, "max_tokens": 10, "guided_regex": r"[A-Z][a-z]{2,8}"})
    assert r["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_no_parser_no_details(server):
    """Without --reasoning-parser chat's usage has no completion_tokens_details."""
    r = post_ok(server, {"messages": ASK, "max_tokens": 4})
    assert "completion_tokens_details" not in r["usage"]


def test_responses_count_and_cut_reasoning(thinker):
    """A free output cut by max_output_tokens: deepseek_r1 reads it all as reasoning (its
    reasoning never closed), so every output token is a reasoning token and the reasoning
    item, like the Response, is incomplete; qwen3 reads it as the answer: none. Streamed:
    the same usage and items in response.completed, and output_item.done says so too."""
    import openai

    client = openai.OpenAI(base_url=thinker.base + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=client.models.list().data[0].id, input=ASK[0]["content"],
              max_output_tokens=8, temperature=0)

    def stream_it():
        with client.responses.stream(**kw) as stream:
            done = [e.item for e in stream if e.type == "response.output_item.done"]
            return done, stream.get_final_response()

    whole, (done, streamed) = at_once(lambda: client.responses.create(**kw), stream_it)
    cut_inside = thinker.engine.config.reasoning_parser == "deepseek_r1"
    for r in (whole, streamed):
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
        assert r.usage.output_tokens == 8
        assert r.usage.output_tokens_details.reasoning_tokens == (8 if cut_inside else 0)
        assert [(i.type, i.status) for i in r.output] == (
            [("reasoning", "incomplete")] if cut_inside else [("message", "incomplete")])
    assert [(i.type, i.status) for i in done] == [(i.type, i.status) for i in whole.output]
    assert (streamed.usage.output_tokens, streamed.usage.output_tokens_details) == (
        whole.usage.output_tokens, whole.usage.output_tokens_details)


def test_responses_output_sent_back(thinker):
    """A multi-turn client sends the output items back as input: the reasoning item is the
    turn's reasoning_content, so the input is the prompt chat renders for the same
    conversation with that reasoning in the assistant message."""
    import openai

    client = openai.OpenAI(base_url=thinker.base + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    first = client.responses.create(model=model, input=ASK[0]["content"],
                                    max_output_tokens=8, temperature=0)
    items = [i.model_dump(exclude_none=True) for i in first.output]
    again = client.responses.create(model=model, max_output_tokens=1, input=[
        ASK[0], *items, {"role": "user", "content": "And?"}])
    thought = [i.content[0].text for i in first.output if i.type == "reasoning"]
    said = {"role": "assistant", "content": first.output_text,
            **({"reasoning_content": thought[0]} if thought else {})}
    ids = post_ok(thinker, {"messages": [ASK[0], said, {"role": "user", "content": "And?"}]},
                "/tokenize")["tokens"]
    assert again.usage.input_tokens == len(ids)


def test_responses_output_logprobs_are_refused_under_a_reasoning_parser(thinker):
    """The output's tokens would be split between the reasoning item and the message (and
    the logprobs of the tags belong to neither): include's output text logprobs is a 400
    naming include, before anything is generated, where chat serves them whole."""
    import openai

    client = openai.OpenAI(base_url=thinker.base + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=model, input=ASK[0]["content"], stream=stream,
                                    max_output_tokens=4, top_logprobs=1,
                                    include=["message.output_text.logprobs"])
        assert e.value.param == "include" and "--reasoning-parser" in e.value.message
    assert client.responses.create(model=model, input=ASK[0]["content"], max_output_tokens=4,
                                   top_logprobs=1).status in ("completed", "incomplete")
