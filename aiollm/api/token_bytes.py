"""TokenBytes: the bytes each token id stands for, read from the tokenizer's vocabulary.

Decoding one id alone gives U+FFFD for a token that holds part of a UTF-8 character (an
emoji is often three tokens of 1-3 bytes each), so per-token text and logprob `bytes` are
taken from the vocabulary instead:

- byte-level BPE (GPT-2 and its descendants: Llama 3, Qwen, SmolLM): each byte of a token
  is stored as one printable character; the table that maps bytes to those characters is
  GPT-2's bytes_to_unicode (Radford et al. 2019, openai/gpt-2 encoder.py), inverted here;
- SentencePiece-style vocabularies (Llama 2, Mistral, Gemma): "<0xNN>" pieces are byte
  fallback tokens, and "\u2581" stands for a space;
- added tokens (chat control tokens and the like) are their own text.

Any other vocabulary falls back to decoding each id alone. The table is built once per
tokenizer (tens of milliseconds for a 128k vocabulary). An id past the tokenizer (the
padding logits of a model whose vocabulary is wider than its tokenizer's, e.g. Qwen2.5's
151,936 over 151,665 tokens) stands for no bytes, as the tokenizer decodes it to "".
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase  # the tokenizer's interface

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the
    others are shifted to the code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _decoder_kinds(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The types of the fast tokenizer's decoder and of its parts, e.g. {"ByteLevel"}."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {"SentencePiece"} if hasattr(tokenizer, "sp_model") else set()
    state = backend.decoder.__getstate__() if backend.decoder is not None else b"{}"
    decoder = json.loads(state) or {}
    kinds = {decoder.get("type")}
    kinds.update(d.get("type") for d in decoder.get("decoders", []) or [])
    if any(d.get("type") == "Replace" and _SPIECE_SPACE in json.dumps(d.get("pattern"))
           for d in decoder.get("decoders", []) or []):
        kinds.add("SentencePiece")
    if decoder.get("type") == "Metaspace" or "ByteFallback" in kinds:
        kinds.add("SentencePiece")
    return kinds


class TokenBytes:
    """bytes_of(id) -> the token's bytes; text_of(id) -> them as text (bytes that are not
    UTF-8 on their own written as \\xNN escapes); pieces(ids) -> each token's share of the
    text of ids (a character split over tokens belongs to the token that completes it).
    Ids past the tokenizer's vocabulary (a padded model vocabulary) are b"" / ""."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        n = len(tokenizer)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        pieces = ([backend.id_to_token(i) for i in range(n)] if backend is not None
                  else tokenizer.convert_ids_to_tokens(list(range(n))))
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.special_ids = frozenset(tokenizer.all_special_ids)
        kinds = _decoder_kinds(tokenizer)
        table: list[bytes] = []
        if "ByteLevel" in kinds:
            # each piece character -> the latin-1 character of its byte, then encode
            to_latin1 = {ord(c): b for c, b in _gpt2_unicode_to_byte().items()}
            for i, p in enumerate(pieces):
                if i in added or p is None:
                    table.append(self._alone(i, added))
                else:
                    try:
                        table.append(p.translate(to_latin1).encode("latin-1"))
                    except UnicodeEncodeError:  # not a byte-level piece: take its decode
                        table.append(self._alone(i, added))
        elif "SentencePiece" in kinds:
            for i, p in enumerate(pieces):
                m = _BYTE_PIECE.fullmatch(p) if p is not None else None
                if i in added or p is None:
                    table.append(self._alone(i, added))
                elif m:
                    table.append(bytes([int(m.group(1), 16)]))
                else:
                    table.append(p.replace(_SPIECE_SPACE, " ").encode())
        else:
            table = [self._alone(i, added) for i in range(n)]
        self._table = table

    def _alone(self, i: int, added: dict[int, str]) -> bytes:
        if i in added:
            return added[i].encode()
        return self._tokenizer.decode([i]).encode()

    def __len__(self) -> int:
        return len(self._table)

    def bytes_of(self, token_id: int) -> bytes:
        return self._table[token_id] if token_id < len(self._table) else b""

    def text_of(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="backslashreplace")

    def pieces(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list[str]:
        """Each token's share of the text of `ids`: the characters its bytes complete, so
        the pieces join to the text; an incomplete character at the end becomes U+FFFD."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = []
        for t in ids:
            if skip_special_tokens and t in self.special_ids:
                out.append("")
            else:
                out.append(dec.decode(self.bytes_of(t)))
        if out:
            out[-1] += dec.decode(b"", final=True)
        return out
