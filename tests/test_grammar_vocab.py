"""The xgrammar TokenizerInfo of a ServingTokenizer, built from its `tokenizers` backend
(aiollm/engine/grammar_vocab.py), is the one xgrammar's from_huggingface builds from the
transformers tokenizer of the same files: the same vocabulary type, prefix space, decoded
vocabulary, stop and special ids, and a grammar compiled over either allows the same tokens
at every step. For byte-level BPE (the default model, SmolLM2) and two sentencepiece-style
byte-fallback layouts (Llama 2's normalizer, and the Metaspace pre-tokenizer of later
conversions), and one whose tokenizer.json's decoder does not describe its byte pieces,
which xgrammar's from_huggingface reads by the vocabulary itself."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from aiollm.engine.grammar_vocab import tokenizer_info
from aiollm.model.serving_tokenizer import ServingTokenizer
from aiollm.model.tokenizer import load_serving_tokenizer

xgr = pytest.importorskip("xgrammar")

CORPUS = ['{"name": "Ada", "city": "Paris"}', "Hello world, how are you today?",
          "The capital of France is Paris.", "naïve café: ünïcode ✓"] * 20
SPECIALS = ["<unk>", "<s>", "</s>"]
SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string"},
                                                      "age": {"type": "integer"}},
                     "required": ["name", "age"]})


def _byte_fallback(layout: str) -> Tokenizer:
    """A BPE of sentencepiece's form: specials, then the 256 byte pieces <0x00>..<0xFF>,
    then pieces learnt from CORPUS; "▁" marks a space, put there by Llama 2's normalizer
    or by a Metaspace pre-tokenizer."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200,
                                                            special_tokens=SPECIALS))
    model = json.loads(trained.to_str())["model"]
    learnt = sorted((i, t) for t, i in model["vocab"].items() if t not in SPECIALS)
    pieces = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + [t for _, t in learnt]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(pieces)}, merges,
                               unk_token="<unk>", byte_fallback=True))
    if layout == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(prepend_scheme="first",
                                                            split=False)])
    if layout == "undescribed":  # a decoder that leaves the byte pieces out: xgrammar
        # reads the JSON as a raw vocabulary, and the vocabulary as byte fallback
        tok.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    tok.add_special_tokens(SPECIALS)
    return tok


def _serving(tmp_path, layout: str, eos: str = "</s>") -> ServingTokenizer:
    if layout == "byte_level":
        tok = load_serving_tokenizer(None)  # the default model's GGUF conversion
        assert isinstance(tok, ServingTokenizer), type(tok)
        return tok
    d = tmp_path / layout
    d.mkdir()
    tok = _byte_fallback(layout)
    tok.add_special_tokens([eos])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "TokenizersBackend", "bos_token": "<s>", "eos_token": eos,
        "unk_token": "<unk>"}))
    return ServingTokenizer(str(d))


def _masks(info, words: int, steps: int = 40) -> list[np.ndarray]:
    """The bitmask at each step of a matcher of SCHEMA over `info`, fed at each step the
    lowest allowed id that is no stop token (the ids of strings, numbers, punctuation)."""
    compiled = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(SCHEMA)
    matcher = xgr.GrammarMatcher(compiled)
    stops = set(info.stop_token_ids)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    out = []
    for _ in range(steps):
        matcher.fill_next_token_bitmask(bitmask)
        row = bitmask[0].numpy().copy()
        out.append(row)
        allowed = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little"))
        allowed = [int(t) for t in allowed if t < info.vocab_size and t not in stops]
        if not allowed:
            break
        assert matcher.accept_token(allowed[0])
    assert len(out) > 5 and words == len(out[0])
    return out


@pytest.mark.parametrize("layout, vocab_type", [
    ("byte_level", xgr.VocabType.BYTE_LEVEL), ("llama2", xgr.VocabType.BYTE_FALLBACK),
    ("metaspace", xgr.VocabType.BYTE_FALLBACK), ("undescribed", xgr.VocabType.BYTE_FALLBACK)])
def test_the_backends_tokenizer_info_is_from_huggingfaces(tmp_path, layout, vocab_type):
    tok = _serving(tmp_path, layout)
    n, eos = len(tok), [tok.eos_token_id]
    ours = tokenizer_info(tok, n, eos)
    theirs = xgr.TokenizerInfo.from_huggingface(tok.hf_tokenizer, vocab_size=n,
                                                stop_token_ids=eos)
    assert ours.vocab_type == theirs.vocab_type == vocab_type
    assert ours.add_prefix_space == theirs.add_prefix_space
    assert ours.vocab_size == theirs.vocab_size == n
    assert ours.decoded_vocab == theirs.decoded_vocab
    assert ours.stop_token_ids == theirs.stop_token_ids == eos
    assert ours.special_token_ids == theirs.special_token_ids
    if vocab_type == xgr.VocabType.BYTE_FALLBACK:  # <0x0A> is the byte it stands for
        assert ours.decoded_vocab[len(SPECIALS) + 0x0A] == b"\n"
    words = (n + 31) // 32
    for step, (a, b) in enumerate(zip(_masks(ours, words), _masks(theirs, words),
                                      strict=True)):
        assert np.array_equal(a, b), step


@pytest.mark.parametrize("layout", ["llama2", "undescribed"])  # each route
def test_without_stop_ids_the_tokenizers_eos_ends_the_grammar(tmp_path, layout):
    """No stop ids given (a model config without eos): the tokenizer's eos, as
    from_huggingface takes it; an eos of a name xgrammar does not guess (it guesses
    </s>, <|endoftext|>... where it finds none)."""
    tok = _serving(tmp_path, layout, eos="<halt>")
    info = tokenizer_info(tok, len(tok), [])
    assert info.stop_token_ids == [tok.convert_tokens_to_ids("<halt>")] == [len(tok) - 1]


def test_an_xgrammar_without_the_private_detection_is_read_by_from_huggingface(
        tmp_path, monkeypatch, caplog):
    """A release of xgrammar that drops the private detection grammar_vocab.py reads: its
    from_huggingface (which reads the tokenizer by its own means) builds the same info from
    transformers' fast tokenizer around the backend, and the start says so once."""
    tok = _serving(tmp_path, "llama2")
    n, eos = len(tok), [tok.eos_token_id]
    expected = tokenizer_info(tok, n, eos)
    detect = xgr.TokenizerInfo.__dict__["_detect_metadata_from_hf"]
    public = xgr.TokenizerInfo.from_huggingface
    read = []

    def from_huggingface(tokenizer, **kwargs):  # the release's own, needing no such name
        read.append(tokenizer)
        with monkeypatch.context() as m:
            m.setattr(xgr.TokenizerInfo, "_detect_metadata_from_hf", detect, raising=False)
            return public(tokenizer, **kwargs)

    monkeypatch.delattr(xgr.TokenizerInfo, "_detect_metadata_from_hf")
    monkeypatch.setattr(xgr.TokenizerInfo, "from_huggingface", staticmethod(from_huggingface))
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        info = tokenizer_info(tok, n, eos)
    [fast] = read
    assert isinstance(fast, PreTrainedTokenizerFast) and fast is not tok._hf
    assert (info.vocab_type, info.add_prefix_space) == (expected.vocab_type,
                                                        expected.add_prefix_space)
    assert info.decoded_vocab == expected.decoded_vocab
    assert info.stop_token_ids == expected.stop_token_ids == eos
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "xgrammar's vocabulary detection is not where aiollm reads it"]
