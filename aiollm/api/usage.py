"""Token counts in the answers of the OpenAI endpoints: the room a prompt leaves in the
context (max_tokens's default), the `usage` object of a whole answer and of a stream's last
chunk, and the usage field of a stream's other chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiollm.engine.submission import check_min_tokens, default_length

if TYPE_CHECKING:
    from aiollm.api.sampling_fields import SamplingFields
    from aiollm.api.state import ApiState


def room(st: ApiState, prompt_len: int, min_tokens: int | None = 0) -> int:
    """max_tokens when the client gives none (`submission.default_length`: the rest of the
    context, or the model's generation config's max_new_tokens where that is less), at
    least the request's min_tokens: the client asked for them and sent no length that
    forbids them. Raises ContextExceeded naming min_tokens when they exceed the rest of the
    context (check_min_tokens; a prompt that fills the context is left to the engine's
    check, which says so)."""
    max_model_len = st.engine.max_model_len
    min_tokens = min_tokens or 0
    if prompt_len < max_model_len:
        check_min_tokens(prompt_len, min_tokens, max_model_len)
    return max(min_tokens, default_length(st.engine.sampling_defaults.get("max_tokens"),
                                          prompt_len, max_model_len))


def usage_of(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             reasoning_tokens: int | None = None) -> dict:
    """OpenAI's `usage` object: the request's token counts (cached_tokens: of the prompt;
    reasoning_tokens: of the completion, where a reasoning parser split it, else None and
    no completion_tokens_details, as vLLM sends them)."""
    details = ({} if reasoning_tokens is None else
               {"completion_tokens_details": {"reasoning_tokens": reasoning_tokens}})
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, **details,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chunk_usage(req: SamplingFields, usage: Callable[[], dict]) -> dict:
    """The usage field of a chunk before the last: none without include_usage; with it null,
    as OpenAI sends it on every chunk but the last; with vLLM's continuous_usage_stats too,
    `usage()`: the usage so far of the chunk's choice (its prompt's tokens, its own
    completion tokens, as vLLM counts a chunk's), where the last chunk counts the whole
    request's."""
    if not req.include_usage:
        return {}
    return {"usage": usage() if req.continuous_usage else None}
