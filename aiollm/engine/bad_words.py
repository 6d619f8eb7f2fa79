"""bad_words (vLLM's SamplingParams field): words a request must never generate, as token id
sequences, and the ids each step bans.

A word is tokenized twice, as given and after a space: BPE vocabularies spell a word that
starts the text and one that follows a space with different tokens. A sequence's last token
is banned at every step whose output so far ends with the rest of the sequence (a word of one
token: at every step), so the sequence is never completed. Only the output counts, as in
vLLM: a prompt that ends with the start of a word does not ban its completion. The ids are
found on the host per step, a few list compares per word; the sampler applies them as logit
biases of -inf (engine/logit_bias.py's step_biases, model/logit_masks.py's
apply_constraints).
"""

from __future__ import annotations

from collections.abc import Sequence

from aiollm.errors import InvalidRequest


def bad_word_ids(tokenizer, words: Sequence[str], vocab_size: int) -> list[tuple[int, ...]]:
    """The distinct token id sequences of `words` (checked by SamplingParams: non-blank
    strings), each as given and after a space, without special tokens. Raises
    InvalidRequest naming bad_words when a word's tokens fall outside the model's
    vocabulary (a tokenizer larger than the model's output)."""
    seqs: dict[tuple[int, ...], None] = {}
    for i, word in enumerate(words):
        word = word.strip()
        for text in (word, " " + word):
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if any(not 0 <= t < vocab_size for t in ids):
                raise InvalidRequest(f"bad_words[{i}] ({word!r}) has a token outside the "
                                     f"model's vocabulary of {vocab_size}", param="bad_words")
            if ids:
                seqs[ids] = None
    return list(seqs)


def banned_ids(seqs: Sequence[tuple[int, ...]], output: Sequence[int]) -> list[int]:
    """The ids the next token must not be: the last of each sequence whose other ids end
    `output` (the request's latest output ids, at least the longest sequence's length - 1
    of them where there are that many)."""
    banned = []
    for seq in seqs:
        n = len(seq) - 1
        if n == 0 or (len(output) >= n and tuple(output[len(output) - n:]) == seq[:-1]):
            banned.append(seq[-1])
    return banned
