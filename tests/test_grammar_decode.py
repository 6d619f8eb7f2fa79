"""Constrained decoding through the Engine on a tiny random model whose logits are wider than
its tokenizer (65,536 logits, the default model's 49,152-token tokenizer), as an 8B model's
are: the grammar's bitmask must disallow every id past the tokenizer, and a greedy step
under a mask (the decode batch's argmax path) must pick what full sampling picks."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from aiollm import Engine, SamplingParams
from aiollm.errors import InvalidRequest
from aiollm.sampling_params import Constraint, GrammarSpec

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "kind": {"enum": ["cat", "dog", "owl"]}}, "required": ["name", "age", "kind"],
    "additionalProperties": False}
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 65536,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
}
PROMPTS = [[5 + 7 * i + j for j in range(12)] for i in range(4)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("padded")
    (d / "config.json").write_text(json.dumps(CONFIG))
    loop = asyncio.new_event_loop()
    eng = Engine(str(d), load_format="dummy", kv_tokens=2048, max_running_requests=8, seed=0)
    loop.run_until_complete(eng.start())
    yield eng, loop
    loop.run_until_complete(eng.stop())
    loop.close()


def _params(**kw) -> SamplingParams:
    c = Constraint(GrammarSpec("json_schema", json.dumps(SCHEMA)))
    return SamplingParams(**{"max_tokens": 64, "temperature": 0, "constraint": c, **kw})


def _check(out, vocab: int) -> None:
    assert out.finish_reason == "stop", out
    assert max(out.token_ids) < vocab, out.token_ids  # never a padding id
    jsonschema.validate(json.loads(out.text), SCHEMA)


def test_greedy_masked_argmax_matches_sampling(engine):
    eng, loop = engine
    vocab = len(eng.tokenizer)

    async def go():
        # alone: every decode step is greedy under a mask (the argmax path); with logprobs
        # the same request takes the full sampling path
        fast = [await eng.generate(p, _params()) for p in PROMPTS[:2]]
        full = [await eng.generate(p, _params(logprobs=0)) for p in PROMPTS[:2]]
        plain = await eng.generate(PROMPTS[3], SamplingParams(max_tokens=16, temperature=0))
        # together: constrained and unconstrained greedy rows in one decode batch
        both = await asyncio.gather(
            *(eng.generate(p, _params()) for p in PROMPTS[:3]),
            eng.generate(PROMPTS[3], SamplingParams(max_tokens=16, temperature=0)))
        return fast, full, plain, both

    fast, full, plain, both = loop.run_until_complete(go())
    for a, b in zip(fast, full):
        _check(a, vocab)
        assert a.token_ids == b.token_ids
    assert [o.token_ids for o in both[:2]] == [o.token_ids for o in fast]
    _check(both[2], vocab)
    assert both[3].token_ids == plain.token_ids
    # unconstrained, this model picks ids past the tokenizer: the mask is what keeps them out
    assert max(plain.token_ids) >= vocab


def test_seeded_sampling_under_grammar_reproducible(engine):
    eng, loop = engine
    vocab = len(eng.tokenizer)

    async def go():
        p = _params(temperature=1.0, seed=7)
        alone = await eng.generate(PROMPTS[0], p)
        batch = await asyncio.gather(eng.generate(PROMPTS[0], p),
                                     eng.generate(PROMPTS[1], _params()),
                                     eng.generate(PROMPTS[2], _params(temperature=0.7, seed=3)))
        return alone, batch

    alone, batch = loop.run_until_complete(go())
    _check(alone, vocab)
    assert batch[0].token_ids == alone.token_ids
    for o in batch[1:]:
        _check(o, vocab)


def test_deferred_sampling_with_joins_and_aborts(engine):
    """A constrained step samples after its forward, once the step before's tokens have
    advanced the grammars (Engine._step): requests that join a running constrained batch
    (their first token under the grammar's first mask, in a mixed step) and one whose stream
    closes mid-run change nothing for the others, and nothing leaks."""
    eng, loop = engine
    vocab = len(eng.tokenizer)

    async def go():
        solo = [await eng.generate(p, _params()) for p in PROMPTS]
        plain = await eng.generate(PROMPTS[0], SamplingParams(max_tokens=24, temperature=0))

        async def closed_early():
            stream = eng.stream(PROMPTS[3], _params())
            n = 0
            async for _ in stream:
                n += 1
                if n == 3:
                    break
            await stream.aclose()
            return n

        first = [asyncio.ensure_future(eng.generate(p, _params())) for p in PROMPTS[:2]]
        first.append(asyncio.ensure_future(closed_early()))
        await asyncio.sleep(0.05)  # the batch is decoding when the others join
        later = [eng.generate(PROMPTS[2], _params()),
                 eng.generate(PROMPTS[0], SamplingParams(max_tokens=24, temperature=0))]
        rest = await asyncio.gather(*first, *later)
        return solo, plain, rest

    solo, plain, rest = loop.run_until_complete(go())
    a, b, n_closed, c, d = rest
    assert n_closed == 3
    for got, want in ((a, solo[0]), (b, solo[1]), (c, solo[2])):
        _check(got, vocab)
        assert got.token_ids == want.token_ids
    assert d.token_ids == plain.token_ids
    stats = eng.stats()
    assert stats["table_used"] == 0 and stats["kv_used"] == 0 and stats["running"] == 0, stats


def test_constraints_that_leave_the_grammar_no_token_are_the_requests_error(engine):
    """min_tokens past the grammar's end, allowed_token_ids outside what the grammar allows,
    or bad_words banning every token it allows, leave no token: an InvalidRequest naming the
    field (was a RequestFailed, an HTTP 500, saying a token was sampled against the grammar,
    which the openai client retried twice in vain)."""
    eng, loop = engine
    choice = Constraint(GrammarSpec("choice", json.dumps(["ok"])))
    ok_ids = eng.tokenizer.encode("ok", add_special_tokens=False)
    cases = [
        (SamplingParams(max_tokens=8, min_tokens=5, constraint=choice), "min_tokens"),
        (SamplingParams(max_tokens=8, constraint=Constraint(
            GrammarSpec("choice", json.dumps(["ok"])),
            allowed_token_ids=[t for t in range(100, 110) if t not in ok_ids])),
         "allowed_token_ids"),
        (SamplingParams(max_tokens=8, bad_words=["a"], constraint=Constraint(
            GrammarSpec("choice", json.dumps(["a"])))), "bad_words"),
        (SamplingParams(max_tokens=8, bad_words=["a"], constraint=Constraint(
            allowed_token_ids=eng.tokenizer.encode("a", add_special_tokens=False))),
         "allowed_token_ids"),
    ]
    for params, field in cases:
        with pytest.raises(InvalidRequest, match=field) as e:
            loop.run_until_complete(eng.generate(PROMPTS[0], params))
        assert e.value.param == field
    assert eng.stats()["running"] == 0 and eng.stats()["table_used"] == 0
