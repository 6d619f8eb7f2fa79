"""Workloads with repeated prefixes for bench/serve.py, and what a prefix cache could reuse.

shared-prefix: --num-prefixes system prompts of --prefix-len tokens; request i sends system
prompt i % N followed by its own --input-len random tokens. Ideally every request but the
first of each system prompt reuses the whole system prompt.

multi-turn: num_requests / --turns conversations of --turns turns, one client at a time per
conversation (the clients take conversations in turn). Turn t sends the whole conversation so
far (user messages and the server's answers, as text) and a new --input-len-token user
message. Ideally turn t reuses all of turn t-1's prompt and answer; a server that keeps the KV
of generated tokens can, as long as re-encoding the answer's text gives back its token ids
(random weights produce token sequences that often do not survive that round trip).

Servers report the tokens they reused: OpenAI usage.prompt_tokens_details.cached_tokens,
LightLLM prompt_cache_len. `cache_report` sets them against the ideal.
"""

from __future__ import annotations

import asyncio

import numpy as np


def shared_prefix_prompts(maker, n: int, num_prefixes: int, prefix_len: int,
                          suffix_len: int) -> list[tuple[str, int, int]]:
    """(prompt text, prompt tokens, ideal cached tokens) of each of n requests."""
    prefixes = [maker.make(prefix_len) for _ in range(num_prefixes)]
    out, seen = [], set()
    for i in range(n):
        k = i % num_prefixes
        (ptext, plen), (stext, slen) = prefixes[k], maker.make(suffix_len)
        out.append((ptext + stext, plen + slen, plen if k in seen else 0))
        seen.add(k)
    return out


async def multi_turn_loop(session, cfg, specs, records, send, spec_type) -> None:
    """Closed loop over conversations: specs[c * turns + t] holds turn t's user message of
    conversation c; each turn's prompt is built from the conversation's earlier turns and
    the answers the server streamed back (records[...].text_parts)."""
    turns = cfg.turns
    convs = iter(range(len(specs) // turns))

    async def client() -> None:
        for c in convs:
            history, ideal = "", 0
            for t in range(turns):
                i = c * turns + t
                user, rec = specs[i], records[i]
                rec.text_parts = []
                rec.ideal_cached = ideal
                spec = spec_type(history + user.prompt, 0, user.output_len)
                await send(session, cfg, spec, rec)
                if not rec.ok:
                    break
                history = spec.prompt + "".join(rec.text_parts)
                ideal = (rec.server_prompt or 0) + rec.n_output

    await asyncio.gather(*(client() for _ in range(min(cfg.concurrency, len(specs) // turns))))


def cache_report(records) -> dict:
    """Prompt tokens the server reused against the workload's ideal, over completed requests."""
    ok = [r for r in records if r.ok]
    prompt = sum(r.server_prompt or r.prompt_len for r in ok)
    cached = [r.server_cached for r in ok if r.server_cached is not None]
    ideal = sum(r.ideal_cached for r in ok)
    got = int(np.sum(cached)) if cached else None
    return {"prompt_tokens": prompt, "cached_tokens": got, "ideal_cached_tokens": ideal,
            "reported_by": len(cached),
            "hit_rate": got / prompt if got is not None and prompt else None,
            "ideal_hit_rate": ideal / prompt if prompt else None,
            "fraction_of_ideal": got / ideal if got is not None and ideal else None}
