"""The special tokens a tokenizer adds around the text it encodes (`add_special_tokens`: its
post-processor's, e.g. a Llama tokenizer's BOS before, BERT's [CLS] before and [SEP] after;
none for most chat models'), put around ids that were encoded without them, and kept when a
prompt is truncated to its last tokens (vLLM's truncate_prompt_tokens).

vLLM truncates a text prompt with its Hugging Face tokenizer (truncation_side "left",
max_length k): the tokens the tokenizer adds are kept and the text's own tokens are cut
from the left to fill the rest of the k, so a Llama prompt keeps its BOS. Token ids a
client sent, and a conversation the chat template rendered (its BOS written by the
template, not added), are cut as they are: their last k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(before, after): the ids of the special tokens `tokenizer` adds before and after the
    text it encodes with add_special_tokens, read off one short text encoded with and
    without them. A post-processor that changes the text's own tokens gives what it adds
    to no text, before."""
    bare = list(tokenizer.encode("a", add_special_tokens=False))
    full = list(tokenizer.encode("a", add_special_tokens=True))
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return list(tokenizer.encode("", add_special_tokens=True)), []


def with_special_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int],
                        keep_last: int | None = None) -> list[int]:
    """`ids` (encoded without special tokens, or rendered by a chat template) with the
    special tokens `tokenizer` adds to any text around them: what encoding their text with
    add_special_tokens gives (vLLM's chat add_special_tokens adds them on top of what the
    template wrote). keep_last: at most that many tokens in all, the special tokens kept and
    `ids` cut from the left to the room they leave (fewer than the special tokens: their
    last keep_last)."""
    before, after = special_tokens_around(tokenizer)
    if keep_last is not None:
        room = max(0, keep_last - len(before) - len(after))
        ids = ids[max(0, len(ids) - room):]
        return (before + ids + after)[-keep_last:]
    return before + ids + after


def encode_kept(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = True,
                keep_last: int | None = None) -> list[int]:
    """Token ids of `text`; keep_last (vLLM's truncate_prompt_tokens, a count of tokens):
    only that many, the tokenizer's special tokens kept and the text's own tokens cut from
    the left (with_special_tokens), as vLLM's tokenizer truncates a text prompt."""
    ids = list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    if not keep_last or len(ids) <= keep_last:
        return ids
    if not add_special_tokens:
        return ids[-keep_last:]
    own = list(tokenizer.encode(text, add_special_tokens=False))
    return with_special_tokens(tokenizer, own, keep_last)
