"""The end-of-generation (EOG) token ids of a GGUF file, decided as llama.cpp decides them.

llama.cpp stops generating at more than the file's eos_token_id: at the eot and eom ids the
file names, at the fill-in-the-middle pad, repo and file-separator tokens, and at every token
of the vocabulary whose text is one of the end-of-turn markers of the known chat formats,
whatever the file's keys say (src/llama-vocab.cpp, llama_vocab::impl::load, "maintain a list
of tokens that cause end-of-generation"). Files converted before the eot key existed depend
on that: an older Llama 3 Instruct file names <|end_of_text|> as its eos and no eot, and its
chats end with <|eot_id|>, which llama.cpp stops at and an engine reading the keys alone
does not. A marker that is not a control token in the file still ends generation there
(llama.cpp warns that the file is probably wrong and makes it one).
"""

from __future__ import annotations

import logging
from typing import Any

from gguf import GGUFReader, TokenType

from aiollm.model.gguf_metadata import field

log = logging.getLogger(__name__)

# the texts llama.cpp ends generation at wherever they are in a vocabulary (its list also
# covers what it detects as the eot and eom tokens of a file without those keys)
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",  # Llama 3
    "<|im_end|>", "<|endoftext|>",  # ChatML (Qwen, SmolLM), GPT-2 style
    "<|end|>", "<|return|>", "<|call|>",  # Phi-3, gpt-oss (harmony)
    "<|flush|>", "<|calls|>",  # Solar Open
    "<end_of_turn>", "<eos>", "<turn|>", "<|tool_response>",  # Gemma
    "<EOT>", "_<EOT>", "[EOT]", "[EOS]",  # CodeLlama, Kimi-K2
    "</s>",  # PaddleOCR
    "<end_of_utterance>",  # SmolDocling
    "<｜end▁of▁sentence｜>",  # DeepSeek
    "[e~[",  # MiniMax-M2
})
# the fill-in-the-middle tokens that also end generation: the key naming each, and the texts
# llama.cpp finds it by in a file without the key
_FIM_END = {
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
                                        "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                        "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}
_KEYS = tuple(f"tokenizer.ggml.{k}_token_id" for k in ("eos", "eot", "eom"))
_BY_TEXT = EOG_TEXTS.union(*_FIM_END.values())


def eog_token_ids(reader: GGUFReader, warnings: list[str]) -> list[int]:
    """The token ids generation ends at for a GGUF file: its eos, eot and eom ids (in that
    order, as its keys give them), then those llama.cpp adds (end_of_generation, ascending).
    The ids added are logged at INFO; one found by its text that the file does not type as a
    control token is described in `warnings` (appended to), as llama.cpp warns of it."""
    keyed = [int(v) for key in _KEYS if (v := field(reader, key)) is not None]
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:  # no vocabulary: nothing to read texts from
        return list(dict.fromkeys(keyed))
    texts = tokens.contents()
    types = field(reader, "tokenizer.ggml.token_type")
    fim = {key: field(reader, key) for key in _FIM_END}
    added = end_of_generation(texts, fim, keyed)
    for i in added:
        if (texts[i] in _BY_TEXT and types is not None and i < len(types)
                and types[i] != TokenType.CONTROL):
            warnings.append(f"GGUF token {i} {texts[i]!r} ends generation (llama.cpp ends at "
                            "it by its text) but is not typed as a control token in the "
                            "file's tokenizer.ggml.token_type: the file is probably wrong")
    if added:
        log.info("GGUF end-of-generation tokens added to the file's eos/eot/eom ids %s, as "
                 "llama.cpp ends at them (end-of-turn markers by their text, "
                 "fill-in-the-middle tokens): %s", keyed,
                 ", ".join(f"{i} {texts[i]!r}" for i in added))
    return list(dict.fromkeys(keyed + added))


def end_of_generation(texts: list[str], fim: dict[str, Any], keyed: list[int]) -> list[int]:
    """The ids, ascending, that llama.cpp's end-of-generation set holds beyond `keyed` (the
    eos/eot/eom ids of the file's keys) for a vocabulary of `texts` (id -> text): the
    markers of EOG_TEXTS, the fill-in-the-middle ids of `fim` (key -> id, None where the file
    has no key: then found by text, _FIM_END) that lie in the vocabulary, less llama.cpp's
    two exceptions (Harmony's and Solar Open's <|end|>, which closes a message and not the
    turn, and </s> in a vocabulary with Gemma 4's <|tool_response>). A marker counts
    whatever its token type, as in llama.cpp; a fill-in-the-middle key's texts all count
    where llama.cpp takes the first it meets (a vocabulary holds one of them)."""
    ids = {t: i for i, t in enumerate(texts)}
    eog = {ids[t] for t in EOG_TEXTS if t in ids}
    for key, names in _FIM_END.items():
        given = fim.get(key)
        if given is not None:
            eog.update([int(given)] if 0 <= int(given) < len(texts) else [])
        else:
            eog.update(ids[t] for t in names if t in ids)
    eog.update(i for i in keyed if 0 <= i < len(texts))
    present = {texts[i] for i in eog}
    calls = bool(present & {"<|call|>", "<|calls|>"})
    if "<|end|>" in present and calls and present & {"<|return|>", "<|flush|>"}:
        eog.discard(ids["<|end|>"])
    if "</s>" in present and "<|tool_response>" in present:
        eog.discard(ids["</s>"])
    return sorted(eog - set(keyed))
