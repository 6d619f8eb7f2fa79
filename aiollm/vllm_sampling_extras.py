"""vLLM's extra sampling fields beside the OpenAI ones: detokenize, bad_words,
truncate_prompt_tokens and logits_processors; their bounds and their checks, which
SamplingParams.check runs (the engine applies them: bad words in engine/bad_words.py, the
prompt's truncation at submission).

Each check raises InvalidRequest naming the field and, where the value is the fault, showing
it; a checked_* function gives the field's value in the one form the engine reads.
"""

from __future__ import annotations

from aiollm.errors import InvalidRequest, check_unicode, shown
from aiollm.numpy_scalars import plain_bool
from aiollm.stop_conditions import is_int

# bad words per request: each step's banned ids are found on the host, a few list
# compares per word (aiollm/engine/bad_words.py)
MAX_BAD_WORDS = 64
MAX_BAD_WORD_CHARS = 256


def check_truncate_prompt_tokens(t: object) -> None:
    """Raise InvalidRequest naming truncate_prompt_tokens unless it is None, -1 (the
    model's context length) or an integer >= 1 (the prompt's last tokens kept), as vLLM
    takes it; the bound by the context is the engine's (submission.kept_prompt_tokens)."""
    if t is not None and (not is_int(t) or not (t == -1 or 1 <= t < 2**31)):
        raise InvalidRequest("truncate_prompt_tokens must be None, -1 (the model's context "
                             "length) or an integer >= 1 (the prompt tokens kept, its last), "
                             f"got {t!r}", param="truncate_prompt_tokens")


def checked_detokenize(detokenize: object, stop: list[str]) -> bool:
    """detokenize as Python's bool (numpy's taken). Raises InvalidRequest naming detokenize
    when it is no boolean, or False while `stop` (the request's checked stop strings) holds
    any: stop strings are matched on the output's text."""
    detokenize = plain_bool(detokenize)
    if not isinstance(detokenize, bool):
        raise InvalidRequest(f"detokenize must be a boolean, got {shown(detokenize)}",
                             param="detokenize")
    if not detokenize and stop:
        raise InvalidRequest("stop strings need the output's text: they cannot be used "
                             "with detokenize=False (stop_token_ids can)",
                             param="detokenize")
    return detokenize


def checked_bad_words(words: object) -> list[str] | None:
    """bad_words as a list (one string is a list of it, a tuple a list), or None. Raises
    InvalidRequest naming bad_words unless each is a non-blank string of at most
    MAX_BAD_WORD_CHARS characters, valid Unicode, and there are at most MAX_BAD_WORDS."""
    if isinstance(words, str):
        words = [words]
    elif isinstance(words, tuple):
        words = list(words)
    if words is None:
        return None
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise InvalidRequest("bad_words must be a list of words (non-blank strings), got "
                             f"{shown(words)}", param="bad_words")
    if len(words) > MAX_BAD_WORDS:
        raise InvalidRequest(f"at most {MAX_BAD_WORDS} bad words, got {len(words)}",
                             param="bad_words")
    for i, w in enumerate(words):
        if len(w) > MAX_BAD_WORD_CHARS:
            raise InvalidRequest(f"bad_words[{i}] has {len(w)} characters, more than the "
                                 f"{MAX_BAD_WORD_CHARS} allowed", param="bad_words")
        check_unicode(w, f"bad_words[{i}]")  # the tokenizer fails on one, naming neither
    return words


def check_logits_processors(processors: object) -> None:
    """Raise InvalidRequest naming logits_processors unless it is None or empty: vLLM's
    per-request Python logits processors, which its V1 engine refuses too."""
    if processors is not None and not (isinstance(processors, (list, tuple))
                                       and len(processors) == 0):
        raise InvalidRequest(
            "logits_processors are not supported: per-request Python logits processors "
            "would run on every step of the batch; vLLM's V1 engine refuses them too. "
            "Use allowed_token_ids, logit_bias, bad_words or a grammar (constraint)",
            param="logits_processors")
