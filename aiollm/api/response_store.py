"""The responses the server keeps (`ResponseStore`), so that a later request can continue
one (previous_response_id), retrieve it, list its input items or delete it: OpenAI's stored
responses, as vLLM keeps them with VLLM_ENABLE_RESPONSES_API_STORE, but in memory and
bounded, the most recent `capacity` (`--max-stored-responses`, config.MAX_STORED_RESPONSES
by default), the oldest dropped first.

What is kept of a response is the Response object as it was answered (completed, or
incomplete at the length limit) and the conversation it answered: its input items (those
of the responses it continued first, then its own input; never the `instructions`, which
OpenAI does not carry over either). Its output items are in the Response. A response that
failed or whose client left before it ended is not kept: no Response was answered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class StoredResponse:
    """One kept response. The items are shared with the responses that continue it, never
    changed once kept."""

    response: dict  # the Response object, as answered (its "output": the output items)
    input_items: tuple[dict, ...]  # the conversation it answered, each item with its "id"

    def conversation(self) -> list[dict]:
        """What a response continuing this one is given before its own input: this one's
        input items, then its output items."""
        return [*self.input_items, *self.response["output"]]


class ResponseStore:
    """At most `capacity` responses by id, the oldest (by when each was kept) dropped first
    to make room; capacity 0 keeps none. Memory: each kept response holds its item lists
    (the items themselves are shared along a chain of continued responses)."""

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"the response store's capacity must be an integer >= 0, got "
                             f"{capacity!r}")
        self.capacity = capacity
        self._kept: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, response: dict, input_items: list[dict]) -> None:
        """Keeps `response` (a Response object; its "id" the key) with the `input_items` it
        answered, as the newest; a response of the same id (a client reusing an
        X-Request-Id) is replaced. Nothing is kept where capacity is 0."""
        if self.capacity == 0:
            return
        rid = response["id"]
        self._kept.pop(rid, None)
        self._kept[rid] = StoredResponse(response, tuple(input_items))
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def get(self, rid: str) -> StoredResponse | None:
        """The response kept under `rid`, None if none is (never kept, deleted, dropped)."""
        return self._kept.get(rid)

    def delete(self, rid: str) -> bool:
        """Forgets the response `rid`; False if none was kept under it."""
        return self._kept.pop(rid, None) is not None
