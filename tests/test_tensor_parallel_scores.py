"""Prompt logprobs under tensor parallelism on the CPU (gloo, 2 ranks, fp32, a vocabulary the
ranks split unevenly): the same prompt scores as one rank through the Engine (chunked
prefill, batched beside requests that ask for none) and over HTTP (prompt_logprobs on
completions and chat, echo with logprobs as lm-eval-harness asks), and nothing leaks."""

from __future__ import annotations

import asyncio
import json
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from test_tensor_parallel import PROMPTS, tiny_model  # noqa: F401 - the module's fixture
from test_vocab_parallel_logprobs import KS, VOCABS, boundary_targets, int_case, score_on_rank

from aiollm.engine import Engine
from aiollm.model.prompt_logprobs import PromptScoring
from aiollm.sampling_params import SamplingParams

# 40 tokens over a step budget of 16: scored in three chunks, each in the step computing it
LONG = [(7 * i) % 160 + 1 for i in range(40)]
# the top of the vocabulary (160, 159) lies in rank 1's part, next to its padding row; 80
# and 81 are the last token of rank 0's part (0-80) and the first of rank 1's (81-160)
TAIL = PROMPTS[1] + [160, 159, 3, 80, 81, 80]


def _scores(out) -> list:
    """A RequestOutput's prompt logprobs as plain tuples (None for the first token)."""
    if out.prompt_logprobs is None:
        return None
    return [None if lp is None else (lp.token_id, lp.logprob, lp.rank, lp.top)
            for lp in out.prompt_logprobs]


async def _engine_scores(model: str, tp: int) -> tuple[list, list, dict]:
    """(generated ids, prompt scores) of a batch that mixes scored and unscored requests,
    and the engine's stats once they are done."""
    greedy = dict(temperature=0, ignore_eos=True)
    batch = [(LONG, SamplingParams(max_tokens=3, prompt_logprobs=5, **greedy)),
             (PROMPTS[1], SamplingParams(max_tokens=6, **greedy)),
             (PROMPTS[0], SamplingParams(max_tokens=0, prompt_logprobs=0)),
             (TAIL, SamplingParams(max_tokens=4, prompt_logprobs=2, temperature=1.0, seed=3,
                                   ignore_eos=True)),
             (PROMPTS[2], SamplingParams(max_tokens=2, prompt_logprobs=20, **greedy))]
    async with Engine(model, device="cpu", tensor_parallel_size=tp, kv_tokens=1024,
                      max_model_len=256, max_prefill_tokens=16) as engine:
        outs = await asyncio.gather(*(engine.generate(p, sp) for p, sp in batch))
        stats = {**engine.stats(), "free_rows": engine.req_to_token.n_free_rows,
                 "rows": engine.req_to_token.rows}
    return [o.token_ids for o in outs], [_scores(o) for o in outs], stats


def _assert_same_scores(got: list, want: list) -> None:
    """Equal token ids, ranks and top-k ids; logprobs equal to float tolerance (two ranks
    sum the row-parallel layers' partial products in another order than one)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert (g[0], g[2], [t for t, _ in g[3]]) == (w[0], w[2], [t for t, _ in w[3]])
        assert g[1] == pytest.approx(w[1], abs=1e-4)
        assert [v for _, v in g[3]] == pytest.approx([v for _, v in w[3]], abs=1e-4)


def test_tp2_prompt_logprobs_equal_tp1(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """Rank 0 scored the prompt on its own part of the vocabulary's logits, so prompt
    logprobs were refused under tensor parallelism. Every scored position's logits are now
    gathered over the ranks: the scores equal one rank's, whichever step (a chunk of a long
    prompt, a step shared with requests that ask for none) computes them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ids1, scores1, _ = asyncio.run(_engine_scores(tiny_model, 1))
    ids2, scores2, stats = asyncio.run(_engine_scores(tiny_model, 2))
    assert scores1[1] is None and [len(s) for s in scores1[::2]] == [40, 5, 2]
    # not degenerate: the prompt tokens rank variously, and some are not the first choice
    ranks = [s[2] for s in scores1[0][1:]]
    assert len(set(ranks)) > 3 and len(scores1[0][1][3]) == 5
    assert len(scores1[4][1][3]) == 20
    assert ids2 == ids1
    assert scores2[1] is None
    for got, want in zip(scores2[::2] + scores2[3:4], scores1[::2] + scores1[3:4]):
        _assert_same_scores(got, want)
    assert (stats["kv_used"], stats["table_used"], stats["running"], stats["waiting"]) == \
        (0, 0, 0, 0)
    assert stats["free_rows"] == stats["rows"]
    assert list(tmp_path.iterdir()) == []


def _assert_close_json(got, want, path: str = "") -> None:
    """Equal JSON values but for floats, which agree to 1e-4 (two ranks sum the row-parallel
    layers' partial products in another order than one)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-4), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (path, got, want)
        for k in want:
            _assert_close_json(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close_json(g, w, f"{path}[{i}]")
    else:
        assert got == want, (path, got, want)


TEXT = "w3 w17 w150 w99 w160 w42 w8 w159 w1 w80 w81"
BODIES = [
    # lm-eval-harness's log-likelihood: the prompt echoed with its tokens' logprobs
    ("/v1/completions", {"prompt": TEXT, "echo": True, "logprobs": 1, "max_tokens": 0}),
    ("/v1/completions", {"prompt": TEXT, "echo": True, "logprobs": 3, "max_tokens": 1,
                         "temperature": 0}),
    ("/v1/completions", {"prompt": TEXT, "prompt_logprobs": 4, "max_tokens": 3,
                         "temperature": 0}),
    ("/v1/completions", {"prompt": "w5 w6 w7", "max_tokens": 5, "temperature": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": TEXT}],
                              "prompt_logprobs": 2, "logprobs": True, "top_logprobs": 2,
                              "max_tokens": 3, "temperature": 0}),
]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} w2 {% endfor %}"


def _serve_all(model: str, tp: int) -> tuple[list, dict]:
    """Each of BODIES' answers from a server of `tp` ranks, the requests
    made at the same time, and the server's stats once idle."""
    from live_server import LiveServer, at_once, http

    server = LiveServer(model=model, device="cpu", tensor_parallel_size=tp, max_model_len=256,
                        kv_tokens=1024, chat_template=CHAT_TEMPLATE).start()
    try:
        def post(path, body):
            return lambda: http(server, "POST", path, json=body)

        answers = at_once(*(post(p, b) for p, b in BODIES))
        for status, _, raw in answers:
            assert status == 200, raw
        # the answers but for their ids and times
        return ([{k: v for k, v in json.loads(raw).items() if k not in ("id", "created")}
                 for _, _, raw in answers], server.wait_idle())
    finally:
        server.close()


def test_tp2_http_prompt_scores_equal_tp1(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """Over HTTP: prompt_logprobs on /v1/completions and /v1/chat/completions, and echo with
    logprobs on /v1/completions (max_tokens 0 and 1: how lm-eval-harness computes
    log-likelihoods) were answered 400 under tensor parallelism; they now answer what one
    rank answers, batched beside a request that asks for none."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    want, _ = _serve_all(tiny_model, 1)
    got, idle = _serve_all(tiny_model, 2)
    echo = want[0]["choices"][0]["logprobs"]
    assert echo["token_logprobs"][0] is None and len(echo["tokens"]) == 11
    assert len(want[2]["choices"][0]["prompt_logprobs"]) == 11
    assert len(want[4]["prompt_logprobs"]) > 11  # the chat template's words too
    _assert_close_json(got, want)
    assert idle["kv_used"] == 0 and idle["free_rows"] == idle["rows"]


def test_ranks_combine_parts_into_one_ranks_scores(tmp_path):
    """PromptScoring on a gloo group of 2, each rank holding its shard of the LM head
    (padded as the model's, the padding rows random): two blocks of positions, targets at
    every part's edges, top-k 0 to 20 (more than a part of a 29-token vocabulary holds),
    logits with many ties. Rank 0's results are one rank's: equal ranks and top-k ids (ties
    in ascending token id), logprobs to float rounding."""
    out, ranks = str(tmp_path / "scores.pt"), 2
    mp.spawn(score_on_rank, args=(ranks, str(tmp_path / "init"), out), nprocs=ranks)
    got = torch.load(out)
    assert len(got) == len(VOCABS)
    for vocab, case in zip(VOCABS, got):
        h, w, targets = int_case(vocab, positions=300, seed=vocab)
        targets = boundary_targets(targets, vocab, ranks)
        assert len(set(targets[:10].tolist())) > 4  # the edges, several
        for k, (lp, rk, ids, top) in zip(KS, case):
            one = PromptScoring(torch.arange(len(h)), targets, k, [])
            one.compute(h, w)
            assert torch.equal(rk, one.ranks)
            assert torch.allclose(lp, one.logprobs, atol=1e-5, rtol=0)
            if k:
                assert ids.shape == (300, k) and torch.equal(ids, one.top_ids)
                assert torch.allclose(top, one.top_logprobs, atol=1e-5, rtol=0)
            else:
                assert ids is None and top is None
