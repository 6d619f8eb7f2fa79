"""What admission asks the prefix cache: each waiting request's cached prefix, the cached
tokens no one uses that admitting it locks (they stop counting as free), and whether a running
request's prefill will soon cache more of its prompt than the cache holds now (then it waits a
step and reuses that, rather than computing the same tokens twice).

The planner (planner.py) asks these while it admits; the cache (prefix_cache.py) answers
for one request at a time.
"""

from __future__ import annotations

import numpy as np

from aiollm.engine.prefix_cache import PrefixCache, common_prefix, known_tokens, reuse_limit
from aiollm.engine.request import Request


def cache_matches(cache: PrefixCache | None, head: list[Request], budget: int
                  ) -> list[tuple | None]:
    """The cache's match (PrefixCache.match_for) of each candidate of `head`, the
    waiting queue's first, for as many as the prefill budget lets start (the new tokens
    before each below `budget`: the scheduler looks no further); all of head's length
    (each None) without a cache."""
    if cache is None:
        return [None] * len(head)
    out, new = [], 0
    for r in head:
        if r.prompt_array is None:
            r.prompt_array = np.asarray(r.prompt_ids, dtype=np.int32)
        m = cache.match_for(r)
        out.append(m)
        new += r.num_tokens - m[1]
        if new >= budget:
            break
    return out


def locked_by(cache: PrefixCache | None, matches: list[tuple | None]) -> list[int]:
    """Cached tokens no one uses that each match, admitted in queue order, takes out of
    the free pool unprefilled (a node shared with a match before it is counted there)."""
    if cache is None:
        return [0] * len(matches)
    seen: set = set()
    return [cache.tree.unreferenced(m[0], seen) if m else 0 for m in matches]


def prefix_in_flight(cache: PrefixCache, req: Request, matched: int,
                     prefilling: list[Request]) -> bool:
    """Does a running request still prefilling share more of req's tokens than the
    cache holds, and may req reuse them? Then its chunks will be in the cache soon: req
    waits for them. Only one of req's cache salt (and rotary kind, PrefixCache.salt_of)
    counts: req will reuse nothing of another's, and its wait would tell a tenant that
    another prefills that prompt now. matched: the tokens of req its cache match covers;
    prefilling: the running requests still prefilling."""
    limit = reuse_limit(req)
    if matched >= limit:
        return False
    key, salt = None, cache.salt_of(req)
    for r in prefilling:
        p = r.prompt_array
        if p is None or p.shape[0] <= matched or cache.salt_of(r) != salt:
            continue
        if key is None:
            key = known_tokens(req, limit)
        if p[matched] == key[matched] and common_prefix(p, key) > matched:
            return True
    return False
