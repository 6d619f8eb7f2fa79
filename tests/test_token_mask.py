"""A constrained step's bitmask (engine/token_mask.py's BitmaskBuffers) and its grammars' part,
which raw logprobs see: vLLM V1 masks a grammar before its sampler and allowed_token_ids
after, so a row with both has a grammar part without its allowed ids."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
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
    mask, part = buf.fill(4, [0, 1], [0, 2], states, GrammarBatch())
    assert allowed_ids(mask, 0) == {20, 21}
    assert allowed_ids(mask, 1) == set(grammar) and allowed_ids(mask, 2) == set(ids)
    assert allowed_ids(mask, 3) == set(range(VOCAB))
    assert allowed_ids(part, 0) == allowed_ids(part, 1) == set(grammar)
    assert allowed_ids(part, 2) == allowed_ids(part, 3) == set(range(VOCAB))
    # no row with allowed ids: the grammar part is the bitmask itself (no copy)
    mask, part = buf.fill(2, [1], [], states, GrammarBatch())
    assert part is mask and allowed_ids(mask, 1) == set(grammar)
    # no grammar: no part (raw logprobs see no mask)
    assert buf.fill(3, [], [2], states, GrammarBatch())[1] is None
