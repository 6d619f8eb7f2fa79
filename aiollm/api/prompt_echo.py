"""Completions that ask the model for nothing: max_tokens 0 with echo and no logprobs of
any kind (neither logprobs nor prompt_logprobs), whose answer is the prompt's own text.

Such a request is checked as the engine checks every request, then answered here, without
it: the engine would prefill the prompt (once per choice, past the prefix cache, which a
request scoring its prompt skips) for prompt logprobs that nobody reads: an 8,192-token
prompt took about 210 s on a CPU, 372 s with n 2. PromptEcho stands in for Engine.generate
and Engine.stream, so the handler renders its outputs as it renders the engine's, and the
answer is the one the engine's path gave.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aiollm.engine.outputs import Delta, RequestOutput
from aiollm.errors import naming_batch_item
from aiollm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from aiollm.api.completion_request import CompletionRequest
    from aiollm.engine import Engine


def echo_only(req: CompletionRequest) -> bool:
    """Whether a checked completions request needs no model step: it echoes its prompt,
    generates nothing (max_tokens 0) and asks for no logprobs of the prompt or the output."""
    return (bool(req.echo) and req.max_tokens == 0 and req.logprobs is None
            and req.prompt_logprobs is None)


class PromptEcho:
    """Engine.generate and Engine.stream for the choices of an echo-only request
    (echo_only). Every choice is checked when a PromptEcho is made, all before any is
    answered, as the engine checks each as it is submitted (Engine.check: InvalidRequest
    naming the field, prompt i of a batch as prompt[i]; Overloaded while the server shuts
    down; EngineStopped): a stream whose later prompt is bad gets its 400 before any
    output, not an error after a first choice. A full waiting queue (max_waiting_requests)
    or request table does not refuse it, as it does a request submitted to the engine:
    it takes no place in them, and costs the server next to nothing.
    Each is then given the output the engine gives a request with max_tokens 0: no text
    and no tokens, finish_reason "length", its prompt counted, none of it from the prefix
    cache. A constraint's grammar is compiled by the handler first, as for the engine.

    `jobs`: (index of the prompt in its batch or None, prompt ids, params), per choice."""

    def __init__(self, engine: Engine,
                 jobs: Sequence[tuple[int | None, Sequence[int], SamplingParams]]):
        for i, ids, params in jobs:
            with naming_batch_item("prompt", i):
                engine.check(ids, params)

    # cache_salt, group: taken as the engine takes them; nothing is computed, so nothing is
    # shared nor measured
    async def generate(self, prompt: Sequence[int], params: SamplingParams, *,
                       cache_salt: str | None = None, group: object = None) -> RequestOutput:
        return RequestOutput(request_id=f"echo-{uuid.uuid4().hex}", text="", token_ids=[],
                             finish_reason="length", prompt_tokens=len(prompt),
                             completion_tokens=0, prompt_token_ids=list(prompt))

    def stream(self, prompt: Sequence[int], params: SamplingParams, *,
               cache_salt: str | None = None, group: object = None) -> AsyncIterator[Delta]:
        return _one(Delta(text="", token_ids=[], logprobs=None, finish_reason="length",
                          prompt_tokens=len(prompt), completion_tokens=0))


async def _one(delta: Delta) -> AsyncIterator[Delta]:
    yield delta
