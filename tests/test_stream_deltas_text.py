"""engine/stream.deltas' tokens and text, driven by a stand-in for the loop (it appends a
request's tokens and wakes it): a token with no text of its own goes out in the delta of
its step, and each delta's tokens' texts join to its text, also where the end releases
text (an incomplete character's U+FFFD) after the tokens before the stop token went out."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from aiollm.engine.output_text import OutputText
from aiollm.engine.stream import deltas
from aiollm.model import load_tokenizer
from aiollm.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def _request(params: SamplingParams) -> SimpleNamespace:
    return SimpleNamespace(
        event=asyncio.Event(), failed=False, error=None, output_ids=[], done=False,
        last_is_stop_token=False, params=params, logprobs=None, finish_reason=None,
        prompt_ids=[1], cached_tokens=0, prompt_logprobs=None, stop_reason=None)


def _steps(tokenizer, steps: list[list[int]], stop_token: int | None,
           stop_with_last: bool = False) -> list:
    """The deltas of a request whose steps bring these tokens, then ends: with
    `stop_token` (eos: not part of the text; in a step of its own, or with the last step's
    tokens where stop_with_last) or at its length."""
    params = SamplingParams(max_tokens=64)
    req = _request(params)
    out = OutputText.of_request(tokenizer, req.prompt_ids, params)

    def finish(r, reason):
        r.done, r.finish_reason = True, reason

    async def go():
        gen = deltas(req, out, finish)
        got = []
        if stop_token is None:
            all_steps = steps
        elif stop_with_last:
            all_steps = steps[:-1] + [steps[-1] + [stop_token]]
        else:
            all_steps = steps + [[stop_token]]
        for k, ids in enumerate(all_steps):
            req.output_ids += ids
            if k == len(all_steps) - 1:  # the last step ends it
                req.done, req.finish_reason = True, "stop" if stop_token else "length"
                req.last_is_stop_token = stop_token is not None
            req.event.set()
            # a step whose token is held back yields nothing: told, not waited on
            got.append(await asyncio.wait_for(anext(gen), 5))
        return got

    return asyncio.run(go())


def test_a_token_of_no_text_is_in_its_steps_delta(tokenizer):
    ids = tokenizer.encode("🚀 a", add_special_tokens=False)  # 🚀: three tokens
    got = _steps(tokenizer, [[t] for t in ids], None)
    assert [(d.text, d.token_ids, d.token_texts) for d in got] == [
        ("", [ids[0]], [""]), ("", [ids[1]], [""]), ("🚀", [ids[2]], ["🚀"]),
        (" a", [ids[3]], [" a"])]


def test_a_character_the_stop_token_cuts_is_dropped(tokenizer):
    """A character cut by the eos: its first bytes' tokens went out with no text; the
    U+FFFD the end decoded them to came with the eos's delta. It is dropped, as vLLM's
    detokenizer drops it: the output's text is its whole characters."""
    ids = tokenizer.encode("a🚀", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    got = _steps(tokenizer, [[ids[0]], [ids[1]]], eos)
    assert all("".join(d.token_texts) == d.text for d in got), got
    assert [d.token_ids for d in got] == [[ids[0]], [ids[1]], [eos]]
    assert got[-1].text == "" and got[-1].finish_reason == "stop"
    assert "".join(d.text for d in got) == "a"


@pytest.mark.parametrize("steps", [[[0], [1]], [[0, 1]]])
def test_text_the_end_releases_is_the_stop_tokens_however_the_steps_fall(tokenizer, steps):
    """Each token's text is the same whether the eos came in a step of its own or with the
    tokens before it (the loop ran ahead of a slow reader): a character the eos cut is no
    token's text (its U+FFFD was the eos's, and once the last token's when the two came
    together; now it is dropped, as in vLLM)."""
    ids = tokenizer.encode("a🚀", add_special_tokens=False)[:2]
    eos = tokenizer.eos_token_id
    got = _steps(tokenizer, [[ids[i] for i in step] for step in steps], eos,
                 stop_with_last=True)
    texts = [t for d in got for t in d.token_texts]
    assert [t for d in got for t in d.token_ids] == [ids[0], ids[1], eos]
    assert texts == ["a", "", ""], got
    assert all("".join(d.token_texts) == d.text for d in got), got
