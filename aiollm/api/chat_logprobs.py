"""The logprobs of an output's tokens as chat completions answer them (OpenAI's
ChatCompletionTokenLogprob: token, logprob, bytes, top_logprobs), which /v1/responses gives
too on its output text (include "message.output_text.logprobs": the same entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiollm.api.logprob_json import json_logprob
from aiollm.api.token_bytes import TokenBytes
from aiollm.api.token_names import id_name
from aiollm.engine.detokenizer import REPLACEMENT

if TYPE_CHECKING:
    from aiollm.engine import TokenLogprob


def chat_logprobs(vocab: TokenBytes, lps: Sequence[TokenLogprob], texts: Sequence[str],
                   by_id: bool = False) -> dict:
    """Chat logprobs: each token with its real bytes (a token that holds part of a UTF-8
    character has only those bytes), so the bytes of all tokens join to the content's UTF-8
    (decoded with errors="replace": bytes that are no character are the content's U+FFFD; a
    character the output stops inside, dropped from the content, keeps its tokens' bytes).
    A U+FFFD that the detokenizer held back and gave the next token's text stays its own
    token's bytes. A token whose text is not all in the content (skipped special, stop
    token, cut by a stop string) reports the bytes of the part that is. With a reasoning
    parser they join to the whole output: the reasoning, its tags and the content. by_id:
    each token is named "token_id:N" (return_tokens_as_token_ids); its bytes stay its own
    (vLLM gives a top alternative the bytes of its name, which are no token's). An
    impossible token's logprob (-inf) is sent as -9999.0 (api/logprob_json.py)."""
    def entry(token_id: int, logprob: float) -> dict:
        return {"token": id_name(token_id) if by_id else vocab.text_of(token_id),
                "logprob": json_logprob(logprob),
                "bytes": list(vocab.bytes_of(token_id))}

    content = []
    for lp, text in zip(lps, texts):
        e = entry(lp.token_id, lp.logprob)
        real = vocab.bytes_of(lp.token_id)
        try:
            whole = real.decode()
        except UnicodeDecodeError:  # part of a character: its neighbours complete it
            whole = text
        if whole and not whole.strip(REPLACEMENT):
            # a whole U+FFFD, which the detokenizer holds back as it does a character's
            # first bytes (dropped at the end, else the next token's text): its own bytes
            whole = text
        elif whole and text.endswith(whole) and not text[:-len(whole)].strip(REPLACEMENT):
            # the U+FFFD held back from the tokens before (their bytes are theirs) + its own
            whole = text
        if whole != text:
            e["bytes"] = list(text.encode())
        content.append({**e, "top_logprobs": [entry(t, v) for t, v in lp.top]})
    return {"content": content}
