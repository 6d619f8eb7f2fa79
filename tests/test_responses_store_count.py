"""The response store's count of held bytes (api/response_store.py) under a random mix of
what clients do: create, continue (sharing the earlier turns), delete, put under a kept
id (replacing a kept response, possibly by one continuing it, as a reused X-Request-Id did
before responses had ids of their own), and the drops
the count and byte bounds make. After each step the count equals a recount from scratch
(each kept response's own bytes, each item held once), and it is 0 once all are gone."""

from __future__ import annotations

import random

import pytest

from aiollm.api.response_items import input_items
from aiollm.api.response_store import ResponseStore, held_bytes, stored_size
from aiollm.api.responses_output import item_id


def _response(rid: str, text: str) -> dict:
    output = [{"id": item_id("msg"), "type": "message", "role": "assistant",
               "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {"id": rid, "object": "response", "status": "completed", "output": output,
            "metadata": {"k": text[:5]}, "store": True}


def _recount(store: ResponseStore, ids: set[str]) -> int:
    """The bytes the kept responses among `ids` hold, counted afresh: each response's own
    (stored_size less its items), each item object once however many hold it."""
    total, items = 0, {}
    for rid in ids:
        kept = store.get(rid)
        if kept is None:
            continue
        held = [*kept.input_items, *kept.response["output"]]
        total += stored_size(kept.response, list(kept.input_items)) - sum(
            map(held_bytes, held))
        items.update((id(i), i) for i in held)
    return total + sum(map(held_bytes, items.values()))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("capacity, max_bytes", [(5, 2**40), (1000, 40_000), (4, 20_000)])
def test_the_count_is_a_recount_and_empties_to_0(seed, capacity, max_bytes):
    rng, store, ids = random.Random(seed), ResponseStore(capacity, max_bytes), set()
    for step in range(300):
        op = rng.random()
        known = sorted(ids)
        if op < 0.15 and known:
            store.delete(rng.choice(known))
        else:
            # a continuation of a kept one (or of one dropped: the client's earlier copy of
            # its conversation, still alive here as in a request in flight)
            previous = rng.choice(known) if known and op < 0.7 else None
            kept = store.get(previous) if previous else None
            earlier = kept.conversation() if kept else []
            reused = op > 0.9 and known  # a client's X-Request-Id again
            rid = (previous if reused and previous and rng.random() < 0.5
                   else rng.choice(known) if reused else f"resp_{step}")
            text = rng.choice("té") * rng.randrange(0, 3000)
            sent = [{"role": "user", "content": text}]
            store.put(_response(rid, text[::-1]), [*earlier, *input_items(sent, earlier)])
            ids.add(rid)
        assert len(store) <= capacity and store.bytes <= max_bytes
        assert store.bytes == _recount(store, ids), step
    for rid in sorted(ids):
        store.delete(rid)
    assert len(store) == 0 and store.bytes == 0
