"""The responses the server keeps (`ResponseStore`), so that a later request can continue
one (previous_response_id), retrieve it, list its input items or delete it: OpenAI's stored
responses, as vLLM keeps them with VLLM_ENABLE_RESPONSES_API_STORE, but in memory and
bounded: the most recent `capacity` (`--max-stored-responses`, config.MAX_STORED_RESPONSES
by default) within `max_bytes` (`--max-stored-response-bytes`,
config.MAX_STORED_RESPONSE_BYTES), the oldest dropped first.

What is kept of a response is the Response object as it was answered (completed, or
incomplete at the length limit) and the conversation it answered: its input items (those
of the responses it continued first, then its own input; never the `instructions`, which
OpenAI does not carry over either). Its output items are in the Response. Each item a kept
response holds is also found by its id (`item`), for an input's item_reference. A response that
failed or whose client left before it ended is not kept: no Response was answered.

The byte bound is what stops clients from driving the server out of memory: a count alone
let 1000 responses of a 16 MiB body each hold 16 GB. What is counted is what is held: the
Python objects of each item (`held_bytes`), each item once however many responses hold it
(a chain of continued responses shares its earlier turns: counting each response's
conversation whole counted a 50-turn chain's first turn 50 times, 20 times what was held,
and left room for a few long conversations), until the last response holding it goes. Not
the JSON: a tiny item's objects weigh 4 times its JSON, and the JSON encoder keeps a UTF-8
copy of each non-ASCII string.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

from aiollm.config import MAX_STORED_RESPONSE_BYTES


@dataclass(slots=True, frozen=True)
class StoredResponse:
    """One kept response. The items are shared with the responses that continue it or name
    them by item_reference, never changed once kept."""

    response: dict  # the Response object, as answered (its "output": the output items)
    input_items: tuple[dict, ...]  # the conversation it answered, each item with its "id"
    size: int  # bytes: held by the response but not by its items (held_bytes)

    def conversation(self) -> list[dict]:
        """What a response continuing this one is given before its own input: this one's
        input items, then its output items."""
        return [*self.input_items, *self.response["output"]]


def held_bytes(value: object, keys: bool = False) -> int:
    """Bytes the Python objects of a decoded JSON `value` hold: sys.getsizeof of each dict,
    list, tuple and scalar in it, a non-ASCII string's UTF-8 copy included (4 bytes a
    character at most, which the JSON encoder caches in it); a dict's keys too where `keys`
    (a client's: the fields a Response echoes; an item's are the API's field names,
    response_items.py keeps no other, shared). An upper bound: values shared (small ints,
    short literals) are counted at each place."""
    size, todo = 0, [value]
    while todo:  # not recursive: a value nests as deep as a body's JSON may (~1000)
        value = todo.pop()
        size += sys.getsizeof(value)
        if isinstance(value, dict):
            todo.extend(value.values())
            if keys:
                todo.extend(value)
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
        elif isinstance(value, str) and not value.isascii():
            size += 4 * len(value)
    return size


def _own_bytes(response: dict, input_items: tuple[dict, ...]) -> int:
    """Bytes a kept response holds apart from its items: the Response but its output items
    (the fields it echoes as the client sent them, keys and all), the tuple of its input
    items, the StoredResponse."""
    head = sys.getsizeof(response) + sum(
        sys.getsizeof(v) if k == "output" else held_bytes(v, keys=True)
        for k, v in response.items())
    return head + sys.getsizeof(input_items) + sys.getsizeof(StoredResponse)


def stored_size(response: dict, input_items: list[dict]) -> int:
    """Bytes `response` kept with `input_items` would hold were it the only one kept (a
    response larger than the store's max_bytes alone is not kept)."""
    items = tuple(input_items)
    return _own_bytes(response, items) + sum(map(held_bytes, [*items, *response["output"]]))


class ResponseStore:
    """At most `capacity` responses by id, holding at most `max_bytes` bytes in all (their
    own and their items', each item counted once: held_bytes), the oldest (by when each was
    kept) dropped first to make room; capacity 0 or max_bytes 0 keeps none. ValueError for
    a negative or non-integer bound."""

    def __init__(self, capacity: int, max_bytes: int = MAX_STORED_RESPONSE_BYTES):
        for name, value in (("capacity", capacity), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"the response store's {name} must be an integer >= 0, got "
                                 f"{value!r}")
        self.capacity, self.max_bytes = capacity, max_bytes
        self.bytes = 0  # held by all kept: their own bytes, each item's once
        self._kept: OrderedDict[str, StoredResponse] = OrderedDict()
        # id() of each item some kept response holds: [its held_bytes, how many hold it]
        # (the id stays the item's while a kept response holds it)
        self._items: dict[int, list[int]] = {}
        # each held item by its "id" (item_reference): the one kept last; and where a client
        # reused an id, the others apart, {id(): item} in the order kept, each found once
        # those kept after it go (not a dict for every id: ~200 bytes an item, uncounted)
        self._by_id: dict[str, dict] = {}
        self._shadowed: dict[str, dict[int, dict]] = {}

    @property
    def keeps(self) -> bool:
        """Whether any response can be kept (neither bound is 0): a Response says store."""
        return self.capacity > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, response: dict, input_items: list[dict]) -> bool:
        """Keeps `response` (a Response object; its "id" the key) with the `input_items` it
        answered, as the newest; a response of the same id is replaced (the server makes
        each id afresh: responses_output.ResponseHead). Nothing is kept where the store
        keeps none, nor a response larger than max_bytes alone (it drops no other; a later
        GET is a 404, as for one dropped). Returns whether it was kept."""
        if not self.keeps:
            return False
        rid = response["id"]
        self.delete(rid)
        inputs = tuple(input_items)
        items = [*inputs, *response["output"]]
        sizes = [self._items[id(i)][0] if id(i) in self._items else held_bytes(i)
                 for i in items]
        own = _own_bytes(response, inputs)
        if own + sum(sizes) > self.max_bytes:
            return False
        self._kept[rid] = StoredResponse(response, inputs, own)
        self.bytes += own
        for item, size in zip(items, sizes):
            held = self._items.setdefault(id(item), [size, 0])
            self.bytes += size if held[1] == 0 else 0
            held[1] += 1
            self._index(item)
        while len(self._kept) > self.capacity or self.bytes > self.max_bytes:
            self._release(self._kept.popitem(last=False)[1])
        return True

    def get(self, rid: str) -> StoredResponse | None:
        """The response kept under `rid`, None if none is (never kept, deleted, dropped)."""
        return self._kept.get(rid)

    def item(self, iid: str) -> dict | None:
        """The item of id `iid` (an input or output item) some kept response holds, None if
        none does: what an input's item_reference stands for. Where several held items have
        that id, the one kept last."""
        return self._by_id.get(iid)

    def delete(self, rid: str) -> bool:
        """Forgets the response `rid`; False if none was kept under it."""
        gone = self._kept.pop(rid, None)
        if gone is not None:
            self._release(gone)
        return gone is not None

    def _release(self, gone: StoredResponse) -> None:
        """Uncounts a response no longer kept, and each item no kept response holds now."""
        self.bytes -= gone.size
        for item in gone.conversation():
            held = self._items[id(item)]
            held[1] -= 1
            if held[1] == 0:
                self.bytes -= held[0]
                del self._items[id(item)]
                self._unindex(item)

    def _index(self, item: dict) -> None:
        """Makes `item` the one item() gives for its id, the one it gave before shadowed."""
        iid, newest = item["id"], self._by_id.get(item["id"])
        if newest is item:
            return
        if newest is not None:
            shadowed = self._shadowed.setdefault(iid, {})
            shadowed.pop(id(item), None)
            shadowed[id(newest)] = newest
        self._by_id[iid] = item

    def _unindex(self, item: dict) -> None:
        """Forgets `item` (no kept response holds it): item() gives the one of its id kept
        last before it, where one is held still."""
        iid, shadowed = item["id"], self._shadowed.get(item["id"])
        if self._by_id[iid] is not item:
            del shadowed[id(item)]
        elif shadowed:
            self._by_id[iid] = shadowed.pop(next(reversed(shadowed)))
        else:
            del self._by_id[iid]
        if shadowed is not None and not shadowed:
            del self._shadowed[iid]
