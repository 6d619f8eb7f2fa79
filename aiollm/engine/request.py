"""Per-request Python state: token ids, the consumer's wake-up, results.

Everything the hot path reads in bulk (lengths, sampling parameters, stop ids, states)
lives in the native request table; this object keeps what is naturally per request
(the token list that grows, the asyncio event that wakes its stream).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aiollm.sampling_params import SamplingParams
from aiollm.stop_conditions import StopSequences

_ids = itertools.count()


class Phase(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PAUSED = "paused"  # evicted: no KV, generated tokens kept, back in the queue
    DONE = "done"


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    # vLLM V1's rank: the tokens of the vocabulary at least as likely, itself included
    rank: int | None = None


@dataclass(slots=True, eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    slot: int
    seed: int
    arrival: float  # time.monotonic()
    rid: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    # one entry per prompt token when asked (None for the first and until scored), and the
    # prompt positions scored so far (aiollm/model/prompt_logprobs.py)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_scored: int = 0
    phase: Phase = Phase.WAITING
    row: int = -1  # req_to_token row while RUNNING
    kv_len: int = 0  # tokens of all_ids whose KV is in the pool
    admitted_seq: int = -1  # admission order, for choosing whom to evict
    first_admitted: float = -1.0  # time.monotonic() of its first admission (-1: none yet)
    finish_reason: str | None = None
    # what ended it with "stop": the stop string or the stop token id (of the request's
    # stop_token_ids); None for the model's eos, length and abort
    stop_reason: int | str | None = None
    error: str | None = None
    failed: bool = False  # ended by an error: its stream raises error_type(error)
    error_type: Callable[[str], Exception] = RuntimeError
    # Tokens sampled by a launched step whose ids are not back on the host yet (the loop
    # plans step N+1 while step N runs): at most 1 when a step is planned; the token's
    # placeholder id is -(pending_row + 1), its row among that step's sampled requests.
    pending: int = 0
    pending_row: int = -1
    # in the metrics and the scheduler's history of output lengths; False for a health
    # probe (health_probe.py), which no client sent
    counted: bool = True
    # the request_group.ChoiceGroup it is one choice of (None: a request of one choice)
    group: object = None
    smallest_ooms: int = 0  # its out-of-memory steps alone at the smallest size (oom.py)
    t_first_ns: int = 0  # time.monotonic_ns() when its first token arrived (0: none yet)
    t_last_ns: int = 0  # when its latest token arrived, for inter-token latency
    last_is_stop_token: bool = False  # the final token (eos/stop id) is not part of the text
    argmax_only: bool = False  # greedy, no logprobs, penalties or min_tokens: argmax is enough
    masked_argmax: bool = False  # the same under a bitmask (a grammar or allowed ids, no bias)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    grammar: object | None = None  # its engine.grammar.GrammarState, when constrained
    # its params' stop_token_sequences as their matcher, when it has some (hand_out.py)
    stop_sequences: StopSequences | None = None
    # prefix cache (aiollm.engine.prefix_cache): the tree node its locked prefix ends at,
    # that prefix's length (its first cache_len KV slots belong to the tree), the prompt
    # tokens the cache gave it at its first admission (-1 before), its prompt as an array,
    # and its cache salt: it shares cached KV only with requests of the same salt (or none)
    cache_node: object = None
    cache_len: int = 0
    cached_tokens: int = -1
    prompt_array: np.ndarray | None = None
    cache_salt: str | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt and output tokens, the pending one included."""
        return len(self.prompt_ids) + len(self.output_ids) + self.pending

    def token_at(self, start: int, end: int) -> list[int]:
        """Token ids [start, end); a pending token is its placeholder -(pending_row + 1),
        which the model runner replaces on the device with the id the last step sampled."""
        n = len(self.prompt_ids)
        known = n + len(self.output_ids)
        if end > known:
            ids = self.token_at(start, known) if start < known else []
            return ids + [-(self.pending_row + 1)] * (end - max(start, known))
        if end <= n:
            return self.prompt_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.prompt_ids[start:] + self.output_ids[: end - n]

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Its prompt is scored during its prefill, so all of it must be computed: a prefix
        cache must not skip any of its prompt positions."""
        return self.prompt_logprobs is not None

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE
