"""The vocabulary as xgrammar sees it: an xgrammar TokenizerInfo of the served tokenizer.

A transformers tokenizer goes to xgrammar's TokenizerInfo.from_huggingface, which reads its
vocabulary, its eos and, from the serialized `tokenizers` backend, the vocabulary's type
(byte-level BPE's "Ġ" spelling, sentencepiece's byte fallback "<0x0A>", raw) and whether a
space is prepended; for a transformers v5 tokenizer rebuilt from a sentencepiece model, whose
serialized backend may not describe its vocabulary, it trusts the vocabulary itself.

A ServingTokenizer (aiollm/model/serving_tokenizer.py) is no transformers tokenizer, and
building one for it (ServingTokenizer.hf_tokenizer) cost 0.5-1.1 s of the first grammar
request on a 2-core CPU, holding the GIL long enough to stall the event loop 0.1-0.3 s
(bench/grammar_first_lag.py). Its backend is the saved tokenizer.json itself, so the
serialized backend describes it: the TokenizerInfo is built from its vocabulary with
xgrammar's constructor, and the type and prefix space from xgrammar's own detection of that
JSON (the C++ DetectMetadataFromHF that from_huggingface runs on a fast tokenizer), in
0.1 s; where xgrammar's reading of the vocabulary itself disagrees with the JSON's (a
decoder that does not describe the vocabulary), from_huggingface decides, as above.
tests/test_grammar_vocab.py checks both against from_huggingface of the transformers
tokenizer: the decoded vocabulary, the metadata and a grammar's masks, for byte-level BPE
and byte-fallback vocabularies.
"""

from __future__ import annotations

from aiollm.model.serving_tokenizer import ServingTokenizer


def tokenizer_info(tokenizer, vocab_size: int, stop_ids: list[int]):
    """The xgrammar TokenizerInfo of `tokenizer` (a ServingTokenizer or a transformers
    tokenizer) over ids [0, vocab_size), ended by `stop_ids` (empty: the tokenizer's eos,
    else what xgrammar detects). Blocking, ~0.1 s for a ServingTokenizer of 49k tokens and
    more for a transformers one: call it off the event loop. Raises xgrammar's ValueError
    for a tokenizer it cannot read."""
    import xgrammar as xgr

    if not isinstance(tokenizer, ServingTokenizer):
        return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stop_ids or None)
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    metadata = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())
    # xgrammar >= 0.2.9 trusts the vocabulary's own spelling where the JSON's decoder says
    # otherwise (and then detects the prefix space by encoding): that case is left to it whole
    by_vocab = getattr(xgr.TokenizerInfo, "_detect_vocab_type_from_vocab", lambda _: None)
    if by_vocab(vocab) not in (None, metadata["vocab_type"]):
        return xgr.TokenizerInfo.from_huggingface(tokenizer.hf_tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stop_ids or None)
    # ids the tokenizer lacks (none in a tokenizer.json; any below vocab_size) stay "", as
    # from_huggingface leaves them
    encoded = [""] * vocab_size
    for token, i in vocab.items():
        if i < vocab_size:
            encoded[i] = token
    eos = tokenizer.eos_token_id
    stops = stop_ids or ([eos] if eos is not None else None)
    return xgr.TokenizerInfo(encoded, metadata["vocab_type"], vocab_size=vocab_size,
                             stop_token_ids=stops, add_prefix_space=metadata["add_prefix_space"])
