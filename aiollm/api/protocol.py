"""What the request bodies of the HTTP API share: their limits, their field types, and the
rules every body follows; and the JSON response.

The bodies are msgspec Structs, one file per endpoint family: sampling_fields.py (the fields
/v1/completions and /v1/chat/completions share), completion_request.py, chat_request.py,
generate_request.py (LightLLM's /generate) and tokenize_request.py.
Types are checked there, strictly, while the body is decoded (api/body.py decodes it); value
ranges are checked once, by SamplingParams, so every rule lives in one place. Unknown fields
are served as if left out, as vLLM serves them (clients send other vendors' extensions,
such as Gemini's `safety_settings`, that must not fail), and named in a warning of the log
(api/unknown_fields.py): a typo (`max_token`) would otherwise change nothing unseen.
Known fields that would change the output, sent to an endpoint that does not serve them (tools
on /v1/completions, logit_bias on /generate), are refused instead (refuse_unserved).
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from aiollm.errors import InvalidRequest, shown

# choices of one request (prompts of a batch x n): each is a full request in the engine,
# submitted on the event loop, so a batch of a million prompts would hold up every stream for
# a minute. n alone has the same bound (vLLM's is 16384, OpenAI's 128; pass@k evaluations ask
# for 100-200); the server's queue and table bound both further (ApiState.check_choices).
MAX_CHOICES = 1024
MAX_N = MAX_CHOICES
INT32_MAX = 2**31 - 1  # the request table stores top_k and stop token ids as int32

# A prompt: text, token ids, or a batch of either. msgspec allows one array type per union,
# so the batch forms share one list type and `prompt_batch` sorts them out.
Prompt = Union[str, list[Union[int, str, list[int]]]]
Stop = Union[str, list[str], None]
N = Annotated[int, Meta(ge=1, le=MAX_N)]
# Only the upper bounds live here (the table's storage); SamplingParams checks the ranges.
TopK = Annotated[int, Meta(le=INT32_MAX)]
TokenId = Annotated[int, Meta(le=INT32_MAX)]


def refuse_unserved(fields: Struct, names: tuple[str, ...], prefix: str, why: str) -> None:
    """InvalidRequest naming the first of `names` that `fields` has set (not None, [] or
    "none"): a field that would change the output, sent to an endpoint that does not serve
    it, is refused rather than ignored."""
    for name in names:
        if getattr(fields, name) not in (None, [], "none"):
            raise InvalidRequest(f"{prefix}{name} is not served here: {why}",
                                 param=prefix + name)


def check_max_tokens(value: int | None, param: str, *, zero_with: tuple[str, ...] = (),
                     zero_ok: bool = False) -> None:
    """InvalidRequest naming `param` when `value` (None: not sent) is below 1, or below 0
    where `zero_ok` (the request scores its prompt, so it may generate nothing). `zero_with`
    names the fields that allow 0 on this endpoint, for the message: an endpoint that scores
    no prompt has none, and its message mentions none (the engine's names prompt_logprobs)."""
    if value is None or value >= (0 if zero_ok else 1):
        return
    allows = f" (0 only with {' or '.join(zero_with)}: the prompt scored, nothing generated)"
    raise InvalidRequest(f"{param} must be an integer >= 1{allows if zero_with else ''}, got "
                         f"{shown(value)}", param=param)


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(obj),
                        content_type="application/json", charset="utf-8")
