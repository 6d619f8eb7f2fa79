"""What the engine returns: a whole result (generate) or stream deltas (stream)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiollm.engine.request import TokenLogprob


@dataclass(slots=True)
class Delta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # None until the last delta: "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int  # tokens handed out so far, these included
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    # each token's text: they join to `text` (see engine/output_text.py)
    token_texts: list[str] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # the first delta's, if asked


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    prompt_token_ids: list[int] | None = None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    token_texts: list[str] = field(default_factory=list)  # each token's text; they join to text
    # one per prompt token when asked (SamplingParams.prompt_logprobs): None for the first
    prompt_logprobs: list[TokenLogprob | None] | None = None
