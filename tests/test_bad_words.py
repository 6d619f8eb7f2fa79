"""bad_words on the host: the ids each step bans follow the output token by token, for words
of many tokens too (aiollm/engine/bad_words.py through engine/grammar.py's Grammars)."""

from __future__ import annotations

import numpy as np
import torch

from aiollm.engine.grammar import Grammars


class Tok:
    """What Grammars reads of a tokenizer without a grammar."""

    name_or_path, eos_token_id = "tiny", 0

    def __len__(self) -> int:
        return 100


def banned_after(grammars: Grammars, words: list[tuple[int, ...]], output: list[int]) -> set:
    state = grammars.start(None, words)
    for t in output:
        grammars.accept([state], np.asarray([t]))
    mask = grammars.masks([state])
    if mask.bias_ids is None:
        return set()
    return {int(t) for t, b in zip(mask.bias_ids[0], mask.bias[0]) if b == float("-inf")}


def test_a_words_last_token_is_banned_only_after_the_rest_of_it():
    """A long word's last token is banned once the output ends with all its other tokens,
    also after more output than the word is long (the output kept was cut to half the
    longest word's length once the output passed it: a 6-token word was never banned)."""
    g = Grammars(Tok(), 100, [0], torch.device("cpu"))
    words = [(10, 11, 12, 13, 14, 15), (20, 21), (30,)]
    assert banned_after(g, words, []) == {30}
    assert banned_after(g, words, [20]) == {30, 21}
    assert banned_after(g, words, [10, 11, 12, 13, 14]) == {30, 15}
    assert banned_after(g, words, [1, 2, 3, 10, 11, 12, 13, 14]) == {30, 15}
    assert banned_after(g, words, [10, 11, 12, 13, 14, 20, 1]) == {30}
