"""/v1/completions with n > 1 scores each prompt once: its first choice asks the engine for
the prompt's logprobs (prompt_logprobs, echo with logprobs), the others repeat them. Each
of the n choices scored the prompt anew (a full prefill without the prefix cache, and
top-k over every prompt position): n times the work, for the same numbers."""

from __future__ import annotations

import json

import pytest
from live_server import http, sse_events

PROMPTS = ["The capital of France is", "Once upon a time"]


def _asked(server, monkeypatch) -> list:
    """Records the prompt_logprobs of every request the API submits to the engine."""
    asked = []
    engine = server.engine
    for name in ("generate", "stream"):
        real = getattr(engine, name)

        def spy(prompt, params, *args, _real=real, **kwargs):
            asked.append(params.prompt_logprobs)
            return _real(prompt, params, *args, **kwargs)
        monkeypatch.setattr(engine, name, spy)
    return asked


def _whole(server, body: dict) -> list[dict]:
    status, _, raw = http(server, "POST", "/v1/completions", json=body)
    assert status == 200, raw[:300]
    return json.loads(raw)["choices"]


def _streamed(server, body: dict) -> dict[int, list[dict]]:
    """Each choice's chunks, in order."""
    status, _, raw = http(server, "POST", "/v1/completions", json={**body, "stream": True})
    assert status == 200, raw[:300]
    chunks: dict[int, list[dict]] = {}
    for e in sse_events(raw):
        if e != "[DONE]":
            for c in json.loads(e)["choices"]:
                chunks.setdefault(c["index"], []).append(c)
    return chunks


@pytest.mark.parametrize("fields", [{"prompt_logprobs": 2},
                                    {"echo": True, "logprobs": 2},
                                    {"echo": True, "logprobs": 1, "prompt_logprobs": 3}])
def test_n_choices_share_their_prompts_scores(server, monkeypatch, fields):
    n = 3
    body = {"prompt": PROMPTS, "max_tokens": 3, "temperature": 1.0, "seed": 5, **fields}
    alone = [_whole(server, {**body, "prompt": p, "n": 1})[0] for p in PROMPTS]
    asked = _asked(server, monkeypatch)
    whole = _whole(server, {**body, "n": n})
    # the first choice of each prompt asks for the scores, the others do not
    k = fields.get("prompt_logprobs", 0) or 0
    scoring = max(k, fields.get("logprobs", 0)) if fields.get("echo") else k
    assert asked == [scoring, None, None] * len(PROMPTS), asked
    asked.clear()
    chunks = _streamed(server, {**body, "n": n})
    assert asked == [scoring, None, None] * len(PROMPTS), asked
    assert sorted(chunks) == list(range(n * len(PROMPTS)))
    for i, one in enumerate(alone):
        for j in range(n):
            c, first = whole[i * n + j], chunks[i * n + j][0]
            if "prompt_logprobs" in fields:
                assert c["prompt_logprobs"] == one["prompt_logprobs"]
                assert first["prompt_logprobs"] == one["prompt_logprobs"]
                assert all("prompt_logprobs" not in later or later["prompt_logprobs"] is None
                           for later in chunks[i * n + j][1:])
                assert one["prompt_logprobs"][0] is None and len(one["prompt_logprobs"]) > 2
            if fields.get("echo"):  # the echoed prompt's tokens and logprobs lead
                m = len(one["logprobs"]["tokens"]) - 3
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    assert c["logprobs"][key][:m] == one["logprobs"][key][:m], key
                    assert first["logprobs"][key][:m] == one["logprobs"][key][:m], key
                assert c["text"].startswith(PROMPTS[i]) and first["text"].startswith(PROMPTS[i])


def test_prompt_scoring_alone_scores_every_choice(server, monkeypatch):
    """max_tokens 0 (lm-eval's log-likelihood call) asks nothing else of a choice: each of
    n is scored, and all answer alike."""
    asked = _asked(server, monkeypatch)
    whole = _whole(server, {"prompt": PROMPTS[0], "max_tokens": 0, "n": 2, "echo": True,
                            "logprobs": 1})
    assert asked == [1, 1]
    # alike up to the CPU matmul's rounding, which may differ between rows of one batch
    # (AMD EPYC: 4e-6 between the two choices' last logprob)
    a, b = whole[0]["logprobs"], whole[1]["logprobs"]
    assert (a["tokens"], a["text_offset"]) == (b["tokens"], b["text_offset"])
    assert a["token_logprobs"][1:] == pytest.approx(b["token_logprobs"][1:], abs=1e-4, rel=0)
    assert [list(t) for t in a["top_logprobs"][1:]] == [list(t) for t in b["top_logprobs"][1:]]
    assert all(x == pytest.approx(y, abs=1e-4, rel=0)
               for x, y in zip(a["top_logprobs"][1:], b["top_logprobs"][1:]))
    assert whole[0]["text"] == PROMPTS[0]
