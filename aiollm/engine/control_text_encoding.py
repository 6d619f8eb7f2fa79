"""encode_in_one_pass: a rendered chat text encoded whole, the template's own control tokens
real and every other control-token text (a client's, typed in a message) plain text.

Encoding the stretches that hold a client's control-token text apart from the rest
(chat_template._encode_spans) is what the tokenizer gives only where its encoding of a
stretch does not depend on where the stretch stands: a Metaspace pre-tokenizer that
prepends "▁" to the first word of the input alone (prepend_scheme "first": Mistral's and
Llama 2's tokenizer.json) gave such a stretch a "▁" it has after a control token in no
other prompt, and a control token that strips the whitespace beside it (lstrip, rstrip)
left that whitespace to the stretch. So where the tokenizer has a `tokenizers` backend,
the template's control tokens are swapped for stand-ins (private-use text registered in a
copy of the backend as non-special added tokens, with each control token's own flags), the
copy encodes the whole text with special tokens split as plain text, and the stand-ins' ids
are swapped back: one pass, as apply_chat_template's own encoding goes.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_MARK = "\ue000"  # opens each stand-in; a text holding it is left to the stretch encoding
_lock = threading.Lock()
# tokenizer -> (its backend, the copy, control-token text -> stand-in, stand-in id -> id,
# the backend's size then: tokens added to it since make a new copy)
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encode_in_one_pass(tokenizer: PreTrainedTokenizerBase, text: str,
                       cuts: list[tuple[int, int]]) -> list[int] | None:
    """Token ids of `text` with the special tokens at `cuts` ([start, end) character ranges,
    in order, not overlapping) real and any other special-token text encoded as plain
    text, as the tokenizer encodes it with split_special_tokens; None where that cannot be
    done in one pass (a tokenizer without a `tokenizers` backend, or whose vocabulary has a
    gap in its ids; a cut that is no special token of it, a text that holds a stand-in's
    private-use character)."""
    copy = _copy_of(tokenizer)
    if copy is None or copy[1] is None or _MARK in text:
        return None
    _, splitting, stand_in, back, _ = copy
    pieces, done = [], 0
    for start, end in cuts:
        token = stand_in.get(text[start:end])
        if token is None:
            return None
        pieces += [text[done:start], token]
        done = end
    pieces.append(text[done:])
    # the batch call releases the GIL while it runs, as ServingTokenizer.encode's does
    ids = splitting.encode_batch(["".join(pieces)], add_special_tokens=False)[0].ids
    return [back.get(i, i) for i in ids]


def _copy_of(tokenizer: Any) -> tuple | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return None
    with _lock:
        try:
            copy = _copies.get(tokenizer)
        except TypeError:  # neither hashable nor weakly referable: made per call
            copy = None
        size = backend.get_vocab_size(with_added_tokens=True)
        if copy is not None and copy[0] is backend and copy[4] == size:
            return copy
        splitting = Tokenizer.from_str(backend.to_str())
        splitting.encode_special_tokens = True
        # tokenizer.json's own settings, which transformers turns off for each encode
        splitting.no_truncation()
        splitting.no_padding()
        stand_in, real, added = {}, {}, []
        for i, token in backend.get_added_tokens_decoder().items():
            if token.special and token.content:
                s = stand_in[token.content] = f"{_MARK}{i}\ue001"
                real[s] = i
                added.append(AddedToken(s, single_word=token.single_word, lstrip=token.lstrip,
                                        rstrip=token.rstrip, normalized=token.normalized,
                                        special=False))
        splitting.add_tokens(added)
        back = {splitting.token_to_id(s): i for s, i in real.items()}
        # ids are given by count: a vocabulary with a gap in its ids gives a stand-in a word's
        # id, which would turn the typed word into the control token (no one pass then)
        if any(backend.id_to_token(i) is not None for i in back):
            splitting = None
        copy = (backend, splitting, stand_in, back, size)
        try:
            _copies[tokenizer] = copy
        except TypeError:
            pass
        return copy
