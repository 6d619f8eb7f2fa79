"""engine/token_floor.py: the fewest tokens a text can encode to, read off the tokenizer
without encoding, must never be more than the tokens it encodes to (a prompt is refused on
it), on texts built to make tokens long or few: long tokens repeated, whitespace runs,
special-token texts, characters the vocabulary drops, decomposed characters NFC joins."""

from __future__ import annotations

import json
import random
import sys
import unicodedata

import pytest
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

from aiollm.engine.token_floor import NFC_SHRINK, floor_of, floor_of_spec, fewest_tokens
from aiollm.model import load_serving_tokenizer

DECOMPOSED = "\u03b1\u0313\u0300\u0345"  # NFC: U+1F82, one character of four


@pytest.fixture(scope="module")
def default_tokenizer():
    return load_serving_tokenizer(None)


def test_nfc_joins_at_most_four_characters_into_one():
    longest = max(len(unicodedata.normalize("NFD", chr(c))) for c in range(sys.maxunicode + 1)
                  if not 0xD800 <= c < 0xE000)
    assert longest == NFC_SHRINK


def test_the_default_tokenizer_is_bounded_and_never_over_its_count(default_tokenizer):
    """SmolLM2's byte-level BPE: its longest token is 81 characters, and six ASCII control
    characters have no byte token (encoded to nothing: not counted)."""
    floor = floor_of(default_tokenizer)
    assert floor is not None and floor.chars_per_token == 81
    assert default_tokenizer.encode("\x04" * 50) == [] and floor.fewest("\x04" * 50) == 0
    pieces = ["a", "b", " ", "\n", "\t", "é", DECOMPOSED, "\U0001F600", "\x04", "\x1d",
              chr(0x40000), "<|im_start|>", "<|im_end|>", "\n" + " " * 80, " " * 80, "=" * 66,
              "-" * 64, "\u0301", "Hello", " world"]
    rng = random.Random(0)
    for _ in range(150):
        text = "".join(rng.choice(pieces) * rng.randint(1, 40) for _ in range(rng.randint(1, 30)))
        fewest = fewest_tokens(default_tokenizer, text)
        for special in (False, True):
            assert fewest <= len(default_tokenizer.encode(text, add_special_tokens=special))
        assert fewest <= len(default_tokenizer.encode(text, split_special_tokens=True))
    tight = "\n" + " " * 80
    assert fewest_tokens(default_tokenizer, tight * 7) == len(default_tokenizer.encode(tight * 7))


def _byte_level_bpe(corpus: list[str], normalizer=None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


class Wrapped:
    """A tokenizer as serving holds one: its tokenizers object as backend_tokenizer."""

    def __init__(self, backend: Tokenizer):
        self.backend_tokenizer = backend

    def encode(self, text: str) -> list[int]:
        return self.backend_tokenizer.encode(text).ids


def test_an_nfc_normalizer_counts_four_characters_a_token_can_join():
    """A token of four composed characters stands for sixteen decomposed ones once NFC has
    joined them: the bound allows for it (without the shrink it said twice the count)."""
    tok = Wrapped(_byte_level_bpe(["\u1f82" * 4 + " "] * 50, normalizers.NFC()))
    text = DECOMPOSED * 4 * 100
    assert len(tok.encode(text)) == 100
    fewest = fewest_tokens(tok, text)
    assert 0 < fewest <= 100


def _spec_with(tok: Tokenizer, **changes) -> dict:
    spec = json.loads(tok.to_str())
    spec.update(changes)
    return spec


@pytest.mark.parametrize("change, why", [
    ({"normalizer": {"type": "Strip", "strip_left": True, "strip_right": True}},
     "Strip drops whitespace"),
    ({"normalizer": {"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}},
     "a regex may match any length"),
    ({"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": ""}},
     "replaced by nothing"),
    ({"pre_tokenizer": {"type": "Whitespace"}}, "Whitespace drops whitespace"),
    ({"pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed",
                        "invert": False}}, "a Split that removes"),
    ({"truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst",
                     "stride": 0}}, "truncated by encode"),
    ({"added_tokens": [{"id": 0, "content": "<x>", "single_word": False, "lstrip": False,
                        "rstrip": True, "normalized": False, "special": True}]},
     "rstrip takes any run of whitespace"),
])
def test_no_bound_where_characters_may_be_dropped(change, why):
    tok = _byte_level_bpe(["hello world"] * 10)
    assert floor_of_spec(_spec_with(tok, **{"normalizer": None}), None) is not None
    assert floor_of_spec(_spec_with(tok, **change), None) is None, why


def test_no_bound_for_word_models_or_fused_unknowns():
    word_piece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    assert floor_of(Wrapped(word_piece)) is None  # one [UNK] for a whole word
    fused = Tokenizer(models.BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>", fuse_unk=True))
    assert floor_of(Wrapped(fused)) is None  # one <unk> for a run of unknown characters
    assert len(Wrapped(fused).encode("xyz" * 100)) == 1
    unfused = Tokenizer(models.BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>"))
    assert floor_of(Wrapped(unfused)).fewest("xyz" * 100) <= len(Wrapped(unfused).encode(
        "xyz" * 100))
    no_unk = Tokenizer(models.BPE({"a": 0}, []))  # drops what it does not know
    assert floor_of(Wrapped(no_unk)) is None and Wrapped(no_unk).encode("xyz") == []
    assert floor_of(object()) is None  # a slow tokenizer: no tokenizers backend


@pytest.mark.parametrize("affix, text", [({"continuing_subword_prefix": "##"}, "a" * 1000),
                                         ({"end_of_word_suffix": "</w>"}, "a." * 500)])
def test_a_byte_level_bpe_with_an_affix_may_drop_whole_words(affix, text):
    """A byte-level BPE without an unknown token looks a character up with its prefix (not
    a word's first) or suffix (its last): where that form is not in the vocabulary it is
    dropped though the bare one is there. "aaa…" was one token (only the first "a" kept)
    and "a.a.…" none, yet the bound said hundreds."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["##b"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, [], **affix))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert fewest_tokens(Wrapped(tok), text) <= len(Wrapped(tok).encode(text))


def test_an_added_token_matched_after_the_normalizer_counts_its_normalized_length():
    """Lowercase makes "İ" two characters ("i̇"): an added token "İ" matched in the normalized
    text is one token standing for those two, which the raw text may hold as such (its raw
    content's one character would make the bound twice the count)."""
    tok = Tokenizer(models.BPE({"?": 0, "i": 1, "\u0307": 2}, [], unk_token="?"))
    tok.normalizer = normalizers.Lowercase()
    tok.add_tokens([AddedToken("\u0130", normalized=True)])
    text = "i\u0307" * 500
    assert len(Wrapped(tok).encode(text)) == 500
    assert fewest_tokens(Wrapped(tok), text) <= 500



class CountedText(str):
    """A text that records each count() made of it (TokenFloor.fewest counts the dropped
    characters, one pass over the text each)."""

    counts = 0

    def count(self, *args):
        CountedText.counts += 1
        return super().count(*args)


def test_a_long_text_that_may_fit_is_not_read(default_tokenizer):
    """A text whose characters over the longest token fit the context cannot be refused,
    whatever it drops: it is passed without a pass over it per dropped character (six for
    the default tokenizer: a megabyte prompt that fits paid them for nothing)."""
    from aiollm.engine.submission import check_fewest_tokens

    assert floor_of(default_tokenizer).dropped  # the default tokenizer drops some
    text = CountedText("x" * 81 * 100)
    check_fewest_tokens(default_tokenizer, text, 100)
    assert CountedText.counts == 0
    with pytest.raises(Exception, match="at least 101 tokens"):
        check_fewest_tokens(default_tokenizer, CountedText(text + "x"), 100)
