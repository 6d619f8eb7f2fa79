"""The fewest tokens a text can encode to, known without encoding it (`fewest_tokens`): a
text of C characters is at least ceil(C / K) tokens, where K is the most characters of the
text one token can stand for, read once from the tokenizer's tokenizer.json (`floor_of`).
A prompt whose fewest tokens already pass the context is refused before the tokenizer
runs: a 16 MiB prompt held a tokenizer thread (and a CPU core) for seconds, and its
memory, only to be refused (submission.check_fewest_tokens).

Units: C and K count characters, Python str's (Unicode code points); a byte-level
vocabulary string is one character per UTF-8 byte, so at least as many as the text's
characters it stands for, and K read off it is never too small. Tokens are the ids encode
returns.

Why ceil(C / K) is a lower bound, step by step through the tokenizers library's encode
pipeline (https://huggingface.co/docs/tokenizers/pipeline):
- added tokens are cut out of the raw text first; each stands for its own content's
  characters (its normalized content's, where it is matched after the normalizer). One with
  lstrip or rstrip also takes any run of whitespace beside it: no bound (None);
- the normalizer may shrink the rest: by NFC or NFKC at most 4 times (a character's full
  canonical decomposition is at most 4 code points, and composition joins a character's
  decomposition into it), by a Replace of a string by a shorter one by their lengths'
  ratio; Lowercase, Prepend, NFD, NFKD and ByteLevel never shrink it. Any other (Strip,
  StripAccents, a charsmap, a Replace of a regex or by "") may drop characters: None;
- the pre-tokenizer splits without dropping (ByteLevel turns each character into its
  1-4 UTF-8 bytes, Metaspace a space into "▁"); one that drops whitespace or delimiters
  (Whitespace, WhitespaceSplit, BERT's, a Split or Punctuation that removes): None;
- the model covers every character of each piece with tokens of at most its longest
  vocabulary string's length (BPE and Unigram: a token's string is the characters it
  merged, a continuing-subword prefix or end-of-word suffix only longer), provided no
  character is fused away and none dropped: byte fallback with all 256 byte tokens, or
  (BPE) an unknown token that is not fused (each unknown character one token), or every
  byte-level character in the vocabulary (and no continuing-subword prefix or end-of-word
  suffix, with which a character is looked up: "##a" missing drops each "a" but a word's
  first). A byte-level BPE without an unknown token drops the bytes missing from its
  vocabulary (SmolLM2's: six ASCII control characters, and lead bytes no UTF-8 text or
  only planes 4-11 use): where every continuation byte is there, a character of several
  bytes keeps one, and only the one-byte characters missing are dropped whole; those are
  not counted in C (without a normalizer, which could make them of others). WordPiece
  and WordLevel give one [UNK] for a whole word of any length: None;
- the post-processor only adds tokens (a BOS); a truncation set in the file (which
  encode would apply) makes the count no measure: None.
Where any step is not one of these, the bound is not applied (fewest_tokens is 0).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# the longest full canonical decomposition (Unicode's stability policy keeps new
# compositions out of NFC, so no newer character composes from more)
NFC_SHRINK = 4

# pre-tokenizers that split without dropping a character (Split and Punctuation unless
# their behavior is "Removed")
_KEEPING = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation"}
_CONTINUATION_BYTES = range(0x80, 0xC0)
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class TokenFloor:
    """A proven bound of a tokenizer: a text is at least ceil((C - D) / chars_per_token)
    tokens, C its characters and D those of them that are in `dropped` (characters the
    tokenizer drops: no token stands for them)."""

    chars_per_token: int
    dropped: str = ""

    def fewest(self, text: str, most: int | None = None) -> int:
        """The fewest tokens `text` encodes to (special tokens a post-processor adds not
        counted). Counting the dropped characters reads the text (7 ms per 16 MB each, the
        GIL held): skipped where `most` is given and the text, nothing dropped, could be
        that many tokens or fewer (then the count given is that bound, not the fewest)."""
        if most is not None and -(-len(text) // self.chars_per_token) <= most:
            return -(-len(text) // self.chars_per_token)
        kept = len(text) - sum(text.count(c) for c in self.dropped)
        return -(-kept // self.chars_per_token)


def fewest_tokens(tokenizer: Any, text: str, most: int | None = None) -> int:
    """The fewest tokens `text` can encode to with `tokenizer` (special tokens the
    post-processor adds not counted: they only add); 0 where no bound is proven for the
    tokenizer (floor_of None). `most`: as TokenFloor.fewest takes it (a count at most
    `most` is then only known to be at most it: the text is not read)."""
    floor = floor_of(tokenizer)
    return 0 if floor is None else floor.fewest(text, most)


def floor_of(tokenizer: Any) -> TokenFloor | None:
    """The TokenFloor of `tokenizer` (see the module docstring), None where no bound holds
    or it is not a tokenizers one (a ServingTokenizer's or transformers' fast tokenizer's
    backend_tokenizer). Read once per tokenizer (0.05-0.3 s: the first call belongs off
    the event loop)."""
    try:
        with _lock:
            if tokenizer in _cache:
                return _cache[tokenizer]
        floor = _read(tokenizer)
        with _lock:
            _cache[tokenizer] = floor
    except TypeError:  # not weakly referable, or unhashable: read each time
        return _read(tokenizer)
    return floor


def _read(tokenizer: Any) -> TokenFloor | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        return None
    try:
        floor = floor_of_spec(json.loads(to_str()), backend.normalizer)
    except Exception as e:  # noqa: BLE001 - a file this does not read: no bound, no failure
        log.debug("no token-count bound for this tokenizer: %s", e)
        return None
    log.debug("token-count bound of the tokenizer: %s", floor)
    return floor


def floor_of_spec(spec: dict, normalizer: Any = None) -> TokenFloor | None:
    """The TokenFloor of a tokenizer.json `spec` (a dict), None where none is proven.
    `normalizer`: the tokenizer's normalizer object (normalize_str), for added tokens
    matched after it."""
    if spec.get("truncation") is not None:
        return None
    shrink = _normalizer_shrink(spec.get("normalizer"))
    if shrink is None or not _keeps_all(spec.get("pre_tokenizer")):
        return None
    model = _model_floor(spec.get("model") or {}, _ends_byte_level(spec))
    if model is None:
        return None
    longest, dropped = model
    if dropped and spec.get("normalizer") is not None:
        return None
    raw = 1
    for t in spec.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip"):
            return None
        content = t["content"]
        if t.get("normalized"):  # matched in the normalized text
            if normalizer is not None:
                content = normalizer.normalize_str(content)
            longest = max(longest, len(content))
        else:
            raw = max(raw, len(content))
    return TokenFloor(max(math.ceil(shrink * longest), raw), dropped)


def _normalizer_shrink(n: dict | None) -> float | None:
    """How many times shorter (in characters) the normalizer `n` may make a text, None where
    it may drop characters outright."""
    if n is None:
        return 1.0
    kind = n.get("type")
    if kind == "Sequence":
        shrink = 1.0
        for step in n.get("normalizers") or []:
            s = _normalizer_shrink(step)
            if s is None:
                return None
            shrink *= s
        return shrink
    if kind in ("NFC", "NFKC"):
        return float(NFC_SHRINK)
    if kind in ("NFD", "NFKD", "Lowercase", "Prepend", "ByteLevel"):
        return 1.0
    if kind == "Replace":
        pattern, content = n.get("pattern") or {}, n.get("content") or ""
        if not pattern.get("String") or not content:  # a regex, or replaced by nothing
            return None
        return max(1.0, len(pattern["String"]) / len(content))
    return None


def _keeps_all(p: dict | None) -> bool:
    """Whether the pre-tokenizer `p` keeps every character (in some form)."""
    if p is None:
        return True
    kind = p.get("type")
    if kind == "Sequence":
        return all(_keeps_all(step) for step in p.get("pretokenizers") or [])
    return kind in _KEEPING and p.get("behavior") != "Removed"


def _ends_byte_level(spec: dict) -> bool:
    """Whether the model sees only byte-level characters: the pre-tokenizer's last step is
    ByteLevel (a normalizer's ByteLevel is not taken: later steps may add characters)."""
    p = spec.get("pre_tokenizer")
    steps = (p.get("pretokenizers") or []) if p and p.get("type") == "Sequence" else [p]
    return bool(steps and steps[-1] and steps[-1].get("type") == "ByteLevel")


def _model_floor(model: dict, byte_level: bool) -> tuple[int, str] | None:
    """(the longest vocabulary string, the characters the model drops) of a BPE or Unigram
    `model`, None where a character may be dropped otherwise or one unknown token stand
    for several."""
    kind = model.get("type")
    if kind == "BPE":
        vocab = model.get("vocab") or {}
        unk = model.get("unk_token")
        unk_ok = unk is not None and unk in vocab and not model.get("fuse_unk")
    elif kind == "Unigram":
        vocab = dict.fromkeys(piece for piece, _ in model.get("vocab") or [])
        unk_ok = False  # Unigram fuses neighbouring unknown characters into one token
    else:
        return None
    if not vocab:
        return None
    longest = max(1, max(map(len, vocab)))
    if (model.get("byte_fallback") and all(f"<0x{b:02X}>" in vocab for b in range(256))
            or unk_ok):
        return longest, ""
    if not byte_level or model.get("continuing_subword_prefix") or model.get(
            "end_of_word_suffix"):
        return None  # a character is looked up with the affix: its bare form is not enough
    chars = _byte_chars()
    missing = [b for b in range(256) if chars[b] not in vocab]
    if kind != "BPE" and missing or any(b in _CONTINUATION_BYTES for b in missing):
        return None  # Unigram fuses what is missing; a character of several bytes could go
    return longest, "".join(chr(b) for b in missing if b < 0x80)


def _byte_chars() -> list[str]:
    """The character ByteLevel stands each byte for (GPT-2's table), by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
