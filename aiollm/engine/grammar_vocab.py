"""The vocabulary as xgrammar sees it: an xgrammar TokenizerInfo of the served tokenizer.

xgrammar reads a tokenizer through TokenizerInfo.from_huggingface, which takes transformers'
fast tokenizer: its vocabulary, its eos and, from its `tokenizers` backend, the vocabulary's
type (byte-level BPE's "Ġ" spelling, sentencepiece's byte fallback "<0x0A>", raw) and
whether a space is prepended, with its own rules for backends that misdescribe their
vocabulary. A ServingTokenizer (aiollm/model/serving_tokenizer.py) is no transformers
tokenizer; loading the one of its directory (ServingTokenizer.hf_tokenizer) cost 0.5-1.1 s of
the first grammar request on a 2-core CPU and stalled the event loop ~140 ms
(bench/grammar_first_lag.py). Its backend is the tokenizer.json transformers would load, so
transformers' fast tokenizer is made around a copy of that backend instead (~0.1 s) and
xgrammar reads that, by its public API and all of its rules.

Reading the backend with xgrammar's private detection instead (TokenizerInfo's
_detect_metadata_from_hf) stalls the loop ~30 ms rather than ~75 ms, but the import of
xgrammar before it stalls it 70-90 ms: measured around a whole first request, 78 against
83 ms (median of 8), for a copy of xgrammar's rules kept in step with its releases.
tests/test_grammar_vocab.py checks the info against from_huggingface of the directory's
transformers tokenizer: the decoded vocabulary, the metadata and a grammar's masks.
"""

from __future__ import annotations

from aiollm.model.serving_tokenizer import ServingTokenizer


def tokenizer_info(tokenizer, vocab_size: int, stop_ids: list[int]):
    """The xgrammar TokenizerInfo of `tokenizer` (a ServingTokenizer or a transformers
    tokenizer) over ids [0, vocab_size), ended by `stop_ids` (empty: the tokenizer's eos,
    else what xgrammar detects). Blocking, ~0.2 s for a ServingTokenizer of 49k tokens:
    call it off the event loop. Raises xgrammar's ValueError for a tokenizer it cannot
    read."""
    import xgrammar as xgr

    if isinstance(tokenizer, ServingTokenizer):
        from transformers import PreTrainedTokenizerFast

        eos = tokenizer.eos_token_id
        stop_ids = stop_ids or ([eos] if eos is not None else [])
        # transformers copies the backend: the served one stays untouched by other threads
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                              stop_token_ids=stop_ids or None)
