"""A constrained step's bitmask (engine/token_mask.py's BitmaskBuffers) and its grammars' part,
which raw logprobs see: vLLM V1 masks a grammar before its sampler and allowed_token_ids
after, so a row with both has a grammar part without its allowed ids."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aiollm.engine.token_mask import BitmaskBuffers

VOCAB, WORDS = 96, 3


def bits(ids) -> np.ndarray:
    """[WORDS] int32 with bit t % 32 of word t // 32 set for each t in ids."""
    out = np.zeros(WORDS, dtype=np.uint32)
    for t in ids:
        out[t // 32] |= np.uint32(1 << (t % 32))
    return out.view(np.int32)


class GrammarBatch:
    """xgrammar's BatchGrammarMatcher as BitmaskBuffers calls it: each matcher (here the
    token ids its grammar allows) fills its row."""

    def batch_fill_next_token_bitmask(self, matchers, out: torch.Tensor, rows) -> None:
        for m, r in zip(matchers, rows):
            out[r] = torch.from_numpy(bits(m))


def allowed_ids(mask: torch.Tensor, row: int) -> set[int]:
    words = mask[row].numpy().view(np.uint32)
    return {t for t in range(VOCAB) if words[t // 32] >> np.uint32(t % 32) & 1}


def test_the_grammar_part_leaves_out_allowed_token_ids():
    buf = BitmaskBuffers(4, WORDS, WORDS, VOCAB, torch.device("cpu"))
    grammar, ids = range(10, 40), [5, 20, 21, 60]
    states = [SimpleNamespace(matcher=list(grammar), allowed=bits(ids)),  # both
              SimpleNamespace(matcher=list(grammar), allowed=None),  # a grammar alone
              SimpleNamespace(matcher=None, allowed=bits(ids)),  # allowed_token_ids alone
              None]
    mask, part = buf.fill(4, [0, 1], [0, 2], states, GrammarBatch(), part=True)
    assert allowed_ids(mask, 0) == {20, 21}
    assert allowed_ids(mask, 1) == set(grammar) and allowed_ids(mask, 2) == set(ids)
    assert allowed_ids(mask, 3) == set(range(VOCAB))
    assert allowed_ids(part, 0) == allowed_ids(part, 1) == set(grammar)
    assert allowed_ids(part, 2) == allowed_ids(part, 3) == set(range(VOCAB))
    # no row with allowed ids: the grammar part is the bitmask itself (no copy)
    mask, part = buf.fill(2, [1], [], states, GrammarBatch(), part=True)
    assert part is mask and allowed_ids(mask, 1) == set(grammar)
    # no grammar: no part (raw logprobs see no mask)
    assert buf.fill(3, [], [2], states, GrammarBatch(), part=True)[1] is None


def mixed_states():
    grammar, ids = range(10, 40), [5, 20, 21, 60]
    return [SimpleNamespace(matcher=list(grammar), allowed=None),
            SimpleNamespace(matcher=None, allowed=bits(ids))]


def test_a_step_without_raw_logprobs_takes_no_grammar_part():
    """The grammars' part is for raw logprobs alone: a step mixing a grammar row and an
    allowed-ids row copied its rows each step, with no row asking for logprobs too."""
    buf = BitmaskBuffers(4, WORDS, WORDS, VOCAB, torch.device("cpu"))
    mask, part = buf.fill(2, [0], [1], mixed_states(), GrammarBatch())
    assert part is None and allowed_ids(mask, 1) == {5, 20, 21, 60}
    assert buf.fill(1, [0], [], mixed_states(), GrammarBatch())[1] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA stream to queue behind")
def test_a_mixed_steps_grammar_part_queues_behind_the_running_step():
    """The part's copy goes from page-locked memory, so the host queues it behind the step
    running on the device (the loop runs one step ahead) instead of waiting for that step:
    it was a copy from pageable memory, which CUDA may make wait."""
    vocab = 128 * 1024
    words = vocab // 32
    states = [SimpleNamespace(matcher=np.full(words, -1, np.int32), allowed=None),
              SimpleNamespace(matcher=None, allowed=np.zeros(words, np.int32))] * 32

    class Fill:
        def batch_fill_next_token_bitmask(self, matchers, out, rows) -> None:
            for m, r in zip(matchers, rows):
                out[r] = torch.from_numpy(m)

    buf = BitmaskBuffers(64, words, words, vocab, torch.device("cuda"))
    grammar_rows = list(range(0, 64, 2))
    buf.fill(64, grammar_rows, list(range(1, 64, 2)), states, Fill(), part=True)  # warm
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)  # about half a second of device work ahead
    t = time.perf_counter()
    mask, part = buf.fill(64, grammar_rows, list(range(1, 64, 2)), states, Fill(),
                          part=True)
    waited = time.perf_counter() - t
    assert not torch.cuda.current_stream().query()  # the sleep is still running
    assert waited < 0.1, waited
    assert (part[0] == -1).all() and (part[1] == -1).all() and (mask[1] == 0).all()
