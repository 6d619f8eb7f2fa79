"""Which row of the rotary table each token reads: LongRoPE's long prompts.

transformers rotates a LongRoPE model's forward pass by one set of frequencies chosen by the
sequence's length (its dynamic_rope_update, longrope_frequency_update): the short factors
while the sequence fits in original_max_position_embeddings n, the long factors once it does
not. So a prompt longer than n is rotated entirely by the long factors, its first keys too,
and so is every token it generates, while a sequence that grows past n while decoding keeps
the short-factor keys in its cache and rotates each later token by the long factors. (That is
its forward with a KV cache, the tests' reference; Phi3ForCausalLM's generate() drops the
cache when the sequence first passes n, prepare_inputs_for_generation, and recomputes it all
by the long factors: aiollm does not, so from there on a short prompt's ids may differ.)

aiollm computes both, per request. The table's rows 0..max_len are by position (short factors
below n, long ones from n on: transformers' cached decode of a prompt within n). A request
whose prompt is longer than n is "long": its tokens at positions p < n read row max_len + p,
the long factors' rotation of position p, which a LongRoPE model served past n
(long_prompts not None) has as n more rows (rope.cos_sin_cache); its other tokens are at
positions from n on, whose rows are the long factors' already. So only prompt steps of long
requests read other rows than their positions (ForwardBatch.build computes them from each
request's kind, in the numpy that computes the positions); a decode batch never does: each
token it feeds is its request's last known one, at position prompt length - 1 >= n or later
for a long request. Other models have neither the extra rows nor any of this work.

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
    tokens rotate positions p < original by row `first_row` + p (first_row: the served
    length max_len, where the table's by-position rows end)."""

    original: int  # original_max_position_embeddings, tokens
    first_row: int  # max_len: the row of position 0 under the long factors

    def is_long(self, prompt_len: int) -> bool:
        """Whether a request with a prompt of prompt_len tokens is rotated by the long
        factors at every position (transformers' choice for a sequence longer than n)."""
        return prompt_len > self.original

    def long_requests(self, prompt_lens) -> np.ndarray:
        """[B] bool: which of requests with prompts of prompt_lens [B] tokens are long."""
        return np.asarray(prompt_lens) > self.original

    def rows(self, positions: np.ndarray, long: np.ndarray) -> np.ndarray | None:
        """[T] int64 rotary table rows of tokens at positions [T] int64 whose requests are
        long where long [T] bool is set; None where every row is the token's position."""
        moved = long & (positions < self.original)
        if not moved.any():
            return None
        return np.where(moved, positions + self.first_row, positions)


def long_prompts(rope: RopeConfig, max_len: int) -> LongPrompts | None:
    """LongPrompts of a model with rotary `rope` served up to max_len tokens, None where no
    prompt can be long: a rope other than longrope, or max_len within the original context."""
    if rope.type != "longrope" or max_len <= rope.original_max_position:
        return None
    return LongPrompts(rope.original_max_position, max_len)
