"""The responses the server keeps (`ResponseStore`), so that a later request can continue
one (previous_response_id), retrieve it, list its input items or delete it: OpenAI's stored
responses, as vLLM keeps them with VLLM_ENABLE_RESPONSES_API_STORE, but in memory and
bounded: the most recent `capacity` (`--max-stored-responses`, config.MAX_STORED_RESPONSES
by default) within `max_bytes` (`--max-stored-response-bytes`,
config.MAX_STORED_RESPONSE_BYTES), the oldest dropped first.

What is kept of a response is the Response object as it was answered (completed, or
incomplete at the length limit) and the conversation it answered: its input items (those
of the responses it continued first, then its own input; never the `instructions`, which
OpenAI does not carry over either). Its output items are in the Response. A response that
failed or whose client left before it ended is not kept: no Response was answered.

The byte bound is what stops clients from driving the server out of memory: a count alone
let 1000 responses of a 16 MiB body each hold 16 GB. A response's size (`stored_size`) is
its JSON's: the Response and its whole conversation, the earlier turns included although a
chain of continued responses shares them, so the sum bounds the memory held from above.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from aiollm.config import MAX_STORED_RESPONSE_BYTES


@dataclass(slots=True, frozen=True)
class StoredResponse:
    """One kept response. The items are shared with the responses that continue it, never
    changed once kept."""

    response: dict  # the Response object, as answered (its "output": the output items)
    input_items: tuple[dict, ...]  # the conversation it answered, each item with its "id"
    size: int  # bytes: stored_size(response, input_items)

    def conversation(self) -> list[dict]:
        """What a response continuing this one is given before its own input: this one's
        input items, then its output items."""
        return [*self.input_items, *self.response["output"]]


def stored_size(response: dict, input_items: list[dict]) -> int:
    """Bytes a kept response counts against the store's max_bytes: the JSON of `response`
    and of its `input_items`, the earlier turns' included."""
    return len(msgspec.json.encode(response)) + len(msgspec.json.encode(input_items))


class ResponseStore:
    """At most `capacity` responses by id, of at most `max_bytes` bytes in all (stored_size),
    the oldest (by when each was kept) dropped first to make room; capacity 0 or max_bytes 0
    keeps none. ValueError for a negative or non-integer bound."""

    def __init__(self, capacity: int, max_bytes: int = MAX_STORED_RESPONSE_BYTES):
        for name, value in (("capacity", capacity), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"the response store's {name} must be an integer >= 0, got "
                                 f"{value!r}")
        self.capacity, self.max_bytes = capacity, max_bytes
        self.bytes = 0  # stored_size of all kept
        self._kept: OrderedDict[str, StoredResponse] = OrderedDict()

    @property
    def keeps(self) -> bool:
        """Whether any response can be kept (neither bound is 0): a Response says store."""
        return self.capacity > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, response: dict, input_items: list[dict]) -> None:
        """Keeps `response` (a Response object; its "id" the key) with the `input_items` it
        answered, as the newest; a response of the same id (a client reusing an
        X-Request-Id) is replaced. Nothing is kept where the store keeps none, nor a
        response larger than max_bytes alone (it drops no other; a later GET is a 404, as
        for one dropped)."""
        if not self.keeps:
            return
        rid = response["id"]
        self.delete(rid)
        size = stored_size(response, input_items)
        if size > self.max_bytes:
            return
        self._kept[rid] = StoredResponse(response, tuple(input_items), size)
        self.bytes += size
        while len(self._kept) > self.capacity or self.bytes > self.max_bytes:
            self.bytes -= self._kept.popitem(last=False)[1].size

    def get(self, rid: str) -> StoredResponse | None:
        """The response kept under `rid`, None if none is (never kept, deleted, dropped)."""
        return self._kept.get(rid)

    def delete(self, rid: str) -> bool:
        """Forgets the response `rid`; False if none was kept under it."""
        gone = self._kept.pop(rid, None)
        if gone is not None:
            self.bytes -= gone.size
        return gone is not None
