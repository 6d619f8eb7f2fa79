"""SamplingParams.stop_token_sequences through the Engine API: LightLLM's stop sequences,
matched on the output's token ids from its first token, whatever min_tokens, the matched
tokens kept in the output and its text."""

from __future__ import annotations

import re

import pytest

from aiollm import SamplingParams
from aiollm.errors import InvalidRequest
from conftest import run
from test_engine_lifecycle import engine  # noqa: F401  (the default model's Engine)

PROMPT = "The capital of France is"


def test_the_output_ends_with_the_sequence(loop, engine):
    ref = run(loop, engine.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0,
                                                           ignore_eos=True)))
    seq = ref.token_ids[1:3]
    absent = next(t for t in range(10, 100) if t not in ref.token_ids)
    for min_tokens in (0, 6):  # min_tokens holds back eos and stop_token_ids alone
        out = run(loop, engine.generate(PROMPT, SamplingParams(
            max_tokens=8, temperature=0, ignore_eos=True, min_tokens=min_tokens,
            stop_token_sequences=[[absent], seq])))
        assert (out.token_ids, out.finish_reason) == (ref.token_ids[:3], "stop"), out
        # the matched tokens' text stays, whatever include_stop_str_in_output
        assert out.text == "".join(ref.token_texts[:3]) and out.stop_reason is None, out
    # the output's ids, but never one after the other in its tokens: no match
    apart = [ref.token_ids[0], ref.token_ids[2]]
    assert all(ref.token_ids[i:i + 2] != apart for i in range(len(ref.token_ids)))
    out = run(loop, engine.generate(PROMPT, SamplingParams(
        max_tokens=8, temperature=0, ignore_eos=True, stop_token_sequences=[apart])))
    assert out.token_ids == ref.token_ids and out.finish_reason == "length", out
    s = engine.stats()
    assert s["kv_used"] == 0 and s["table_used"] == 0, s


@pytest.mark.parametrize("seqs,says", [
    ([[]], "non-empty lists"), ([[1, -1]], "[0, 2**31)"), ([[1]] + [[2]] * 3, None),
    ([[5] * 257], "stop_token_sequences[0] has 257 token ids"),
    ([[i] for i in range(65)], "at most 64 distinct stop token sequences"),
])
def test_the_sequences_are_checked(seqs, says):
    if says is None:  # repeats are one sequence
        assert SamplingParams(stop_token_sequences=seqs).stop_token_sequences == [(1,), (2,)]
        return
    with pytest.raises(InvalidRequest, match=re.escape(says)) as e:
        SamplingParams(stop_token_sequences=seqs)
    assert e.value.param == "stop_token_sequences"


def test_ids_past_the_vocabulary_are_refused(loop, engine):
    vocab = engine.model_config.vocab_size
    with pytest.raises(InvalidRequest, match=str(vocab)) as e:
        run(loop, engine.generate(PROMPT, SamplingParams(stop_token_sequences=[[1, vocab]])))
    assert e.value.param == "stop_token_sequences"


def test_none_is_no_sequence():
    """As stop and stop_token_ids take None (vLLM's default) for none, so does
    stop_token_sequences; it was refused as not a list."""
    assert SamplingParams(stop_token_sequences=None).stop_token_sequences == []
