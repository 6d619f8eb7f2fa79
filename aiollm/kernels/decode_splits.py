"""The rule for how many KV splits a decode attention launch takes (decode_attention.py).

One split when the batch's (request, KV head) programs fill the GPU; more for few requests
with long contexts (split-K), capped at MAX_SPLITS; and, where the rule gives one split,
long-only splits offered to a context far longer than the batch's others (long_splits).
The numbers behind each rule are in its docstring (bench/decode_splits.py measures them).
"""

from __future__ import annotations

import triton

MAX_SPLITS = 64
# long_splits: at most this many splits for a long context in a launch of one split
LONG_SPLITS = 4
LONG_SPLIT_TOKENS = 2048


def num_kv_splits(batch: int, num_kv_heads: int, max_seq_len: int, num_sms: int,
                  split_tokens: int) -> int:
    """How many splits to cut each context into: the rule that picks the variant.

    One split once batch x KV heads gives every SM a program of its own; below that, aim for
    about four programs per SM, but never give a split fewer than `split_tokens` tokens: below
    that its fixed cost (q load, partial write, merge) stops paying.

    The four-per-SM target alone split serving batches too (H200, `bench/decode_splits.py`,
    2026-12-02, 32 query heads of 128): at 48-128 requests of 1-2k tokens, with 4 or 8 KV
    heads, one split took 4-30% less time than the rule's two or three (96 requests, 4 KV
    heads, ~1,100 tokens: 0.071 against 0.080 ms), losing once by 6% (32 requests, 8 KV heads,
    1.8-2k tokens). On an H100 at 4k tokens two splits had won at batch 64 with 8 KV heads
    (0.380 ms against 0.394 for one).
    """
    if batch * num_kv_heads >= num_sms:
        return 1
    by_length = triton.cdiv(max_seq_len, split_tokens)
    by_occupancy = triton.cdiv(4 * num_sms, batch * num_kv_heads)
    return max(1, min(by_length, by_occupancy, MAX_SPLITS))


def long_splits(max_seq_len: int) -> int:
    """Where num_kv_splits gives one split, the splits a launch still offers to a context far
    longer than the others' (a long conversation among short ones), which one program per KV
    head would otherwise read alone: up to LONG_SPLITS, one per LONG_SPLIT_TOKENS of the
    longest context the launch allows (a CUDA graph's bound); 1 (no long-only launch) below
    four, where too few splits are on offer to pay for the empty programs. The kernel splits
    only contexts over twice the batch's mean length (decode_attention_kernel._long_split_len;
    a graph's padding rows, of one token, lower that mean); the others run whole and write
    their output directly.

    H200, `bench/decode_splits.py --long / --bound`, 2026-12-02, 32 query heads, 4 or 8 KV
    heads, 48 or 96 requests of 1-2k tokens: with one context of 32,768 tokens one split took
    1.02-1.06 ms, long-only launches of 8 splits 0.20-0.29 ms, even splits of 4 0.30-0.41;
    with one of 8,192, 0.24-0.33 ms against 0.12-0.22 for long-only 4. With no long context
    the empty programs cost: at a bound of 8,192 (4 splits offered) 0-7% over one split
    (48-256 requests), at 32,768 with 8 offered 4-16%; hence at most four."""
    n = max_seq_len // LONG_SPLIT_TOKENS
    return min(LONG_SPLITS, n) if n >= 4 else 1
