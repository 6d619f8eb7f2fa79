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

encode_split: a text with special tokens split as plain text, what the stretch encoding
encodes, by another copy of the backend: the shared backend's flag is never flipped.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Tokenizer

from aiollm.model.serving_tokenizer import splitting_copy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_MARK = "\ue000"  # opens each stand-in; a text holding it is left to the stretch encoding
_lock = threading.Lock()
# tokenizer -> (its backend, the backend's size then, what _stand_in_copy made of it)
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# tokenizer -> (its backend, its size then, a copy that splits special tokens): made only
# where a prompt's stretches are encoded apart with a backend (encode_split)
_plain: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encode_in_one_pass(tokenizer: PreTrainedTokenizerBase, text: str,
                       cuts: list[tuple[int, int]]) -> list[int] | None:
    """Token ids of `text` with the special tokens at `cuts` ([start, end) character ranges,
    in order, not overlapping) real and any other special-token text encoded as plain
    text, as the tokenizer encodes it with split_special_tokens; None where that cannot be
    done in one pass (a tokenizer without a `tokenizers` backend, or whose vocabulary has a
    gap in its ids; a cut that is no special token of it, or whose stand-in the copy does
    not match where it stands; a text that holds a stand-in's private-use character)."""
    copy = _cached(_copies, tokenizer, _stand_in_copy)
    if copy is None or copy[0] is None or _MARK in text:
        return None
    splitting, stand_in, back = copy
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
    # a stand-in the copy matched nowhere (a normalized control token under a Prepend("▁")
    # normalizer is matched only after a "▁") stayed private-use text: no one pass then
    if sum(i in back for i in ids) != len(cuts):
        return None
    return [back.get(i, i) for i in ids]


def encode_split(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text` with every special token's text encoded as plain text (as
    split_special_tokens=True encodes it), no special tokens added. Where the tokenizer has a
    `tokenizers` backend it is a copy of that backend that encodes: transformers sets the
    flag on the one backend every request shares for each encode, so an encode on another
    worker thread between that set and its own encode read it flipped (an ordinary
    prompt's control tokens as text, or a client's control-token text as control tokens)."""
    splitting = _cached(_plain, tokenizer, _splitting_copy)
    if splitting is None:
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    return splitting.encode_batch([text], add_special_tokens=False)[0].ids


def _cached(cache: weakref.WeakKeyDictionary, tokenizer: Any, make: Any) -> Any:
    """make(backend) for `tokenizer`'s `tokenizers` backend, made once per backend and
    vocabulary size (tokens added since make it anew); None without such a backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return None
    with _lock:
        try:
            entry = cache.get(tokenizer)
        except TypeError:  # neither hashable nor weakly referable: made per call
            entry = None
        size = backend.get_vocab_size(with_added_tokens=True)
        if entry is not None and entry[0] is backend and entry[1] == size:
            return entry[2]
        value = make(backend)
        try:
            cache[tokenizer] = (backend, size, value)
        except TypeError:
            pass
        return value


def _splitting_copy(backend: Tokenizer) -> Tokenizer:
    splitting = splitting_copy(backend)
    # tokenizer.json's own settings, which transformers turns off for each encode
    splitting.no_truncation()
    splitting.no_padding()
    return splitting


def _stand_in_copy(backend: Tokenizer) -> tuple:
    """(a splitting copy with a stand-in for each special token, or None where a stand-in
    would take a word's id; control-token text -> stand-in; stand-in id -> id)."""
    splitting = _splitting_copy(backend)
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
    return splitting, stand_in, back
