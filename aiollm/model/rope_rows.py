"""Which row of the rotary table each token reads: LongRoPE's long prompts.

transformers rotates a LongRoPE model's forward pass by one set of frequencies chosen by the
sequence's length (its dynamic_rope_update, longrope_frequency_update): the short factors
while the sequence fits in original_max_position_embeddings n, the long factors once it does
not. So a prompt longer than n is rotated entirely by the long factors, its first keys too,
and so is every token it generates, while a sequence that grows past n while decoding keeps
the short-factor keys in its cache and rotates each later token by the long factors.

aiollm computes both, per request. A LongRoPE model served past n (long_prompts not None)
has a rotary table of 2 x max_len rows (rope.cos_sin_cache): the by-position rows (short
factors below n, long ones from n on: transformers' cached decode of a prompt within n),
then the all-long rows. A request whose prompt is longer than n is "long": its tokens, prompt
and generated, read row position + max_len; every other token reads row position. The rows
are computed once per step from one offset per request (offsets()), where the positions are
(ForwardBatch.build, the decode graphs' staged inputs, the tensor-parallel step message).
Other models have neither the second half of the table nor the offsets: their tokens read
row position, as before.

A long request's keys differ from a short one's for the same tokens at the same positions,
so the prefix cache shares KV within each kind only (engine/prefix_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiollm.model.rope_config import RopeConfig


@dataclass(frozen=True, slots=True)
class LongPrompts:
    """A LongRoPE model served past its original context: prompts longer than `original`
    tokens read the all-long rows, from row `offset` (the table's max_len) on."""

    original: int  # original_max_position_embeddings, tokens
    offset: int  # the served length max_len: the first all-long row of the rotary table

    def is_long(self, prompt_len: int) -> bool:
        """Whether a request with a prompt of prompt_len tokens is rotated by the long
        factors at every position (transformers' choice for a sequence longer than n)."""
        return prompt_len > self.original

    def offsets(self, prompt_lens: np.ndarray) -> np.ndarray:
        """[B] int64 row offsets of requests with prompts of prompt_lens [B] tokens: offset
        for a long one, 0 for another. A token's rotary row is its position plus its
        request's offset."""
        return np.where(np.asarray(prompt_lens) > self.original, self.offset, 0).astype(np.int64)


def long_prompts(rope: RopeConfig, max_len: int) -> LongPrompts | None:
    """LongPrompts of a model with rotary `rope` served up to max_len tokens, None where no
    prompt can be long: a rope other than longrope, or max_len within the original context."""
    if rope.type != "longrope" or max_len <= rope.original_max_position:
        return None
    return LongPrompts(rope.original_max_position, max_len)
