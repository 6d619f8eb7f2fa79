"""The stop-string matcher against a plain reference, and OutputText's agreement between
tokens and text (aiollm/engine/stop_strings.py, aiollm/engine/output_text.py)."""

from __future__ import annotations

import random
import time

import pytest

from aiollm.engine.detokenizer import IncrementalDetokenizer
from aiollm.engine.output_text import OutputText
from aiollm.engine.stop_strings import StopStringMatcher
from aiollm.model import load_tokenizer


def reference(text: str, stops: list[str], floor: int = 0) -> int | None:
    """Where the first stop string ending after `floor` starts."""
    starts = [i for s in stops for i in range(len(text))
              if text.startswith(s, i) and i + len(s) > floor]
    return min(starts, default=None)


def test_matcher_finds_the_first_stop_and_never_releases_it():
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 5)))
                 for _ in range(rng.randint(1, 4))]
        floor = rng.choice([0, rng.randint(0, 10)])
        m = StopStringMatcher(stops)
        m.floor = floor
        released, i = 0, 0
        while i < len(text) and m.match_start is None:
            k = rng.randint(1, 4)
            m.feed(text[i:i + k])
            i += k
            if m.match_start is None:
                assert m.hold_from >= released  # released text is never taken back
                released = m.hold_from
        m.finish()
        want = reference(text, stops, floor)
        assert m.match_start == want, (text, stops, floor)
        if want is not None:
            assert released <= want and text.startswith(m.matched, want)
        else:
            assert released <= len(text)


def test_matcher_is_linear_in_long_stop_strings():
    stops = ["x" * 1023 + "y"] + ["ab" * 512] * 15  # 16 stop strings at the length limit
    t0 = time.perf_counter()
    m = StopStringMatcher(stops)
    m.feed("x" * 50_000)  # the worst case for a naive suffix check
    elapsed = time.perf_counter() - t0
    assert m.match_start is None and m.hold_from == 50_000 - 1023
    assert elapsed < 1.0, elapsed  # quadratic work would be ~10^9 steps


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def _through(tokenizer, ids: list[int], end: int) -> int:
    """How many of ids it takes to complete the first `end` characters of their text."""
    return next(k for k in range(len(ids) + 1)
                if len(tokenizer.decode(ids[:k]).rstrip("\ufffd")) >= end)


@pytest.mark.parametrize("include_stop", [False, True], ids=["cut", "include_stop"])
@pytest.mark.parametrize("min_tokens", [0, 3, 8])
def test_output_tokens_and_text_agree(tokenizer, min_tokens, include_stop):
    """The text ends where the stop string starts (or ends, include_stop); the tokens end
    with the one that completes the stop string, as in vLLM: the model generated it, so it
    stays in the token ids and their count (only the tokens after it leave)."""
    text = "One. Two 🚀🚀 three. Four, five. Six 日本. Seven."
    ids = tokenizer.encode(text)
    for stops in ([], ["."], ["🚀"], ["e."], ["ive. S"], ["zz"]):
        out = OutputText(IncrementalDetokenizer(tokenizer, [], True, stops, include_stop),
                         min_tokens)
        deltas = []
        for t in ids:
            out.feed(t)
            deltas.append(out.take())
            if out.stopped:
                break
        out.finish()
        deltas.append(out.take())
        for d_text, n, pieces in deltas:
            assert len(pieces) == n and "".join(pieces) == d_text
        got = "".join(d[0] for d in deltas)
        pieces = [p for d in deltas for p in d[2]]
        # stop strings count ending after the first min_tokens tokens' text (their whole
        # characters: one the last of them begins is after it, as in vLLM)
        floor = len(tokenizer.decode(ids[:min_tokens]).rstrip("\ufffd"))
        cut = reference(text, stops, floor)
        end = None if cut is None else cut + len(stops[0])
        assert got == (text if cut is None else text[:end if include_stop else cut]), stops
        assert len(pieces) == out.kept >= min(min_tokens, len(ids))
        assert out.kept == (len(ids) if end is None else _through(tokenizer, ids, end)), stops
        assert tokenizer.decode(ids[:out.kept]).startswith(got)


def test_the_token_that_completes_a_stop_string_stays(tokenizer):
    """The reviewer's case: stop " Par" and a first token " Paris". The text is empty, but
    the output is that one token (vLLM's token_ids and completion_tokens count it); it
    was dropped, leaving an output of no tokens. The token after it leaves."""
    ids = tokenizer.encode(" Paris is", add_special_tokens=False)
    assert len(ids) == 2
    for include_stop, text in ((False, ""), (True, " Par")):
        out = OutputText(IncrementalDetokenizer(tokenizer, [], True, [" Par"], include_stop))
        out.feed(ids[0])
        assert out.stopped and out.matched_stop == " Par"
        out.feed(ids[1])  # a token generated meanwhile (the loop runs a step ahead)
        out.finish()
        assert out.kept == 1 and out.take() == (text, 1, [text])


@pytest.mark.parametrize("stops", [[], ["🚀"], ["x"]])
def test_a_token_of_no_text_is_handed_out_as_it_comes(tokenizer, stops):
    """The first bytes of a character, and a skipped special token, are tokens with no
    text of their own: each is handed out as it is fed, its text "" (LightLLM's
    /generate_stream sends an event for it then, as vLLM's streams send its chunk), not
    held back until text after it comes. Text that may begin a stop string is still held
    back, with its token."""
    ids = tokenizer.encode("🚀 a", add_special_tokens=False)  # 🚀 is three tokens here
    special = tokenizer.all_special_ids[0]
    out = OutputText(IncrementalDetokenizer(tokenizer, [], True, stops, False))
    out.feed(special)
    assert out.take() == ("", 1, [""])
    out.feed(ids[0])
    assert out.take() == ("", 1, [""])
    out.feed(ids[1])
    assert out.take() == ("", 1, [""])
    out.feed(ids[2])  # the character is whole
    if stops == ["🚀"]:  # the token that completes it ends the output, with no text
        assert out.stopped
        out.finish()
        assert out.kept == 4 and out.take() == ("", 1, [""])
        return
    assert out.take() == ("🚀", 1, ["🚀"])
    out.feed(ids[3])
    out.finish()
    assert out.take() == (" a", 1, [" a"])


@pytest.mark.parametrize("include_stop", [False, True], ids=["cut", "include_stop"])
def test_a_stop_string_completed_after_min_tokens_counts_where_it_starts(tokenizer,
                                                                         include_stop):
    """min_tokens holds stop strings back until that many tokens are out; one that a later
    token completes ends the output, also where it began in the first min_tokens tokens'
    text, as vLLM checks it (each token after min_tokens, over its text and the stop
    string's length before it). It was ignored: the output went on past it, the stop
    string in its text. Streamed, the text it may begin is held back all along, so none of
    it goes out before the cut."""
    ids = tokenizer.encode("One. Two. Three.", add_special_tokens=False)
    assert tokenizer.decode(ids[:2]) == "One." and tokenizer.decode(ids[2:3]) == " Two"
    for stop in (". T", "e. Two", "."):  # straddling tokens 2 and 3 / ending in token 2
        sent, kept = _streamed(tokenizer, ids, stop, 2, include_stop)
        if stop == ".":  # the first "." ends token 2: within min_tokens, it does not count
            want = "One. Two" + "." * include_stop
        else:
            want = "One" if stop == ". T" else "On"
            want += stop * include_stop
        assert sent == want and kept == (4 if stop == "." else 3), (stop, sent)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_stop_string_in_the_character_the_last_min_token_began_counts(tokenizer, stream):
    """The text of the first min_tokens tokens is their whole characters (vLLM's output
    text holds no incomplete character): a character the last of them begins and a later
    token completes is after it, so a stop string ending in it counts, as vLLM counts it.
    It was taken into the first min_tokens' text with the rest of the completing token's
    text, so such a stop string was missed and the output ran on past it."""
    ids = tokenizer.encode("你好世界", add_special_tokens=False)
    assert tokenizer.decode(ids[:1]) == "\ufffd" and tokenizer.decode(ids[:2]) == "你"
    for stop, min_tokens, want, kept in (("你", 1, "", 2), ("好", 3, "你", 4),
                                         ("你好", 3, "", 4), ("你", 2, "你好世界", 9)):
        out = OutputText(IncrementalDetokenizer(tokenizer, [], True, [stop], False),
                         min_tokens)
        sent = ""
        for t in ids:
            out.feed(t)
            if stream:
                sent += out.take()[0]
            if out.stopped:
                break
        out.finish()
        sent += out.take()[0]
        assert (sent, out.kept) == (want, kept), (stop, min_tokens)


def _per_token_check(tokenizer, ids: list[int], stop: str, min_tokens: int,
                     include_stop: bool) -> tuple[str, int]:
    """(text, tokens kept) as vLLM decides them: after each token past the first min_tokens,
    a stop string ending in the whole characters that token added ends the output (text
    holds whole characters only); none: everything."""
    done = 0  # characters checked: those of the tokens before, the first min_tokens' all
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k]).rstrip("\ufffd")
        at = text.find(stop, max(0, done - len(stop) + 1))
        if k > min_tokens and len(text) > done and at >= 0:
            return text[:at + len(stop) * include_stop], k
        done = len(text)
    return tokenizer.decode(ids), len(ids)


def test_min_tokens_and_a_stop_string_end_the_output_where_vllm_ends_it(tokenizer):
    """Random stop strings (pieces of the text, so they match) and min_tokens over text
    whose characters are split across tokens: streamed, the output and its tokens are
    those of vLLM's check after each token. The floor taken at the first whole character
    after min_tokens missed 1% of these."""
    rng = random.Random(2)
    texts = ["One. Two 🚀🚀 three. Four, five. Six 日本. Seven.", "你好世界，我们是中国人。",
             "aaa bbb aaa bbb ab ab", "こんにちは世界 Привет мир"]
    for _ in range(1500):
        text = rng.choice(texts)
        ids = tokenizer.encode(text, add_special_tokens=False)
        at = rng.randrange(len(text))
        stop, min_tokens = text[at:at + rng.randint(1, 6)], rng.randint(0, len(ids))
        include_stop = rng.random() < 0.5
        sent, kept = _streamed(tokenizer, ids, stop, min_tokens, include_stop)
        assert (sent, kept) == _per_token_check(tokenizer, ids, stop, min_tokens,
                                                    include_stop), (text, stop, min_tokens)


def _streamed(tokenizer, ids: list[int], stop: str, min_tokens: int,
              include_stop: bool) -> tuple[str, int]:
    """ids fed one at a time to OutputText with one stop string, its text taken after each
    as a stream takes it, until it stops -> (the text sent, the tokens kept)."""
    out = OutputText(IncrementalDetokenizer(tokenizer, [], True, [stop], include_stop),
                     min_tokens)
    sent = ""
    for t in ids:
        out.feed(t)
        sent += out.take()[0]
        if out.stopped:
            break
    out.finish()
    return sent + out.take()[0], out.kept
