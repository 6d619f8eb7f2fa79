"""The vocabulary as xgrammar sees it: an xgrammar TokenizerInfo of the served tokenizer.

xgrammar's public reader, TokenizerInfo.from_huggingface, takes transformers' fast
tokenizer: its vocabulary, its eos and, from its serialized `tokenizers` backend, the
vocabulary's type (byte-level BPE's "Ġ" spelling, sentencepiece's byte fallback "<0x0A>",
raw) and whether a space is prepended; where the vocabulary's own spelling contradicts that
JSON's decoder, it trusts the vocabulary and detects the prefix space by encoding.

A ServingTokenizer (aiollm/model/serving_tokenizer.py) is no transformers tokenizer, and its
backend is the tokenizer.json itself. Loading the directory's transformers tokenizer for
from_huggingface held the first grammar request 0.5-1.1 s on a 2-core CPU; even transformers'
fast tokenizer around the backend copies it in one call that holds the GIL ~75 ms, which a
GPU server (whose start imports xgrammar: engine/warm_up.py) feels as the first grammar
request's worst event-loop stall (~80 ms against ~30: bench/grammar_first_lag.py). So the
info is built as from_huggingface builds it, without transformers: xgrammar's constructor
over the backend's vocabulary, with the type and prefix space of xgrammar's own detection
(its private TokenizerInfo._detect_metadata_from_hf and _detect_vocab_type_from_vocab, in
every xgrammar from 0.2.8). Where they disagree, or an xgrammar lacks them, from_huggingface
of the fast tokenizer decides. tests/test_grammar_vocab.py checks both routes against
from_huggingface of the directory's transformers tokenizer: the decoded vocabulary, the
metadata and a grammar's masks, for byte-level and byte-fallback vocabularies.
"""

from __future__ import annotations

import logging

from aiollm.model.serving_tokenizer import ServingTokenizer

log = logging.getLogger(__name__)


def tokenizer_info(tokenizer, vocab_size: int, stop_ids: list[int]):
    """The xgrammar TokenizerInfo of `tokenizer` (a ServingTokenizer or a transformers
    tokenizer) over ids [0, vocab_size), ended by `stop_ids` (empty: the tokenizer's eos,
    else what xgrammar detects). Blocking, ~0.1 s for a ServingTokenizer of 49k tokens:
    call it off the event loop. Raises xgrammar's ValueError for a tokenizer it cannot
    read."""
    import xgrammar as xgr

    if not isinstance(tokenizer, ServingTokenizer):
        return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stop_ids or None)
    eos = tokenizer.eos_token_id
    stops = stop_ids or ([eos] if eos is not None else None)
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    detected = _detected(xgr.TokenizerInfo, backend.to_str(), vocab)
    if detected is None:
        from transformers import PreTrainedTokenizerFast

        # transformers copies the backend: the served one is left to the other threads
        fast = PreTrainedTokenizerFast(tokenizer_object=backend)
        return xgr.TokenizerInfo.from_huggingface(fast, vocab_size=vocab_size,
                                                  stop_token_ids=stops)
    # ids the tokenizer lacks (none in a tokenizer.json; any below vocab_size) stay "", as
    # from_huggingface leaves them
    encoded = [""] * vocab_size
    for token, i in vocab.items():
        if i < vocab_size:
            encoded[i] = token
    vocab_type, add_prefix_space = detected
    return xgr.TokenizerInfo(encoded, vocab_type, vocab_size=vocab_size, stop_token_ids=stops,
                             add_prefix_space=add_prefix_space)


def _detected(info_class, backend_json: str, vocab: dict[str, int]) -> tuple | None:
    """(vocab type, add_prefix_space) as from_huggingface reads them from the backend's
    JSON, where the vocabulary's own spelling agrees with it (or tells nothing); None where
    from_huggingface must decide: a disagreement (it then detects the prefix space by
    encoding), or an xgrammar whose private detection is gone or changed shape."""
    try:
        metadata = info_class._detect_metadata_from_hf(backend_json)
        by_vocab = info_class._detect_vocab_type_from_vocab(vocab)
        vocab_type, add_prefix_space = metadata["vocab_type"], metadata["add_prefix_space"]
    except (AttributeError, KeyError, TypeError) as e:
        log.warning("xgrammar's vocabulary detection is not where aiollm reads it (%s): its "
                    "TokenizerInfo comes from from_huggingface, ~0.1 s slower", e)
        return None
    return (vocab_type, add_prefix_space) if by_vocab in (None, vocab_type) else None
