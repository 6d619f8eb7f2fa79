"""Running the choices of one HTTP request (n > 1, or a batch of prompts) as concurrent engine
requests, so that one failing or one client leaving ends all of them and frees their slots.

An engine output that ends with finish_reason "abort" becomes an error here: a request whose
client left never reaches the client, so an abort that does was the server shutting down
before the request could finish. Clients get a 503 (or a final error event in a stream that
already started) rather than a truncated answer that looks complete."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from aiollm.engine.request_group import gather_all
from aiollm.errors import Overloaded

T = TypeVar("T")

_END = object()


async def gather_outputs(coros: Sequence[Awaitable[T]]) -> list[T]:
    """The engine outputs of `coros`, run as one group (request_group.gather_all: the first
    failure cancels the others); Overloaded when one was aborted."""
    return [_unless_aborted(out) for out in await gather_all(coros)]


async def merge(starts: Sequence[Callable[[], AsyncIterator[T]]]
                ) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they arrive, tagged with the iterator's index.

    Each iterator is made by calling its `start` once the merged one is first iterated, so an
    engine request is only submitted where something will close it: closing the merged
    iterator (aclosing / aclose) closes every source, which aborts their engine requests; so
    does the first exception of any source (a start or an item), which is re-raised."""
    if len(starts) == 1:  # the common case needs no tasks and no queue
        async with aclosing(starts[0]()) as only:  # type: ignore[type-var]
            async for item in only:
                yield 0, _unless_aborted(item)
        return

    queue: asyncio.Queue[tuple[int, object, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, start: Callable[[], AsyncIterator[T]]) -> None:
        try:
            async with aclosing(start()) as stream:  # type: ignore[type-var]
                async for item in stream:
                    queue.put_nowait((i, item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            queue.put_nowait((i, _END, exc))
            return
        queue.put_nowait((i, _END, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(starts)]
    try:
        live = len(tasks)
        while live:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _END:
                live -= 1
                continue
            yield i, _unless_aborted(item)  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _unless_aborted(out: T) -> T:
    """`out` (a RequestOutput or a Delta), or Overloaded when the engine aborted it."""
    if getattr(out, "finish_reason", None) == "abort":
        raise Overloaded("the server shut down before the request finished; retry it")
    return out


async def leaders_first(items: AsyncIterator[tuple[int, T]], n: int
                        ) -> AsyncIterator[tuple[int, T]]:
    """merge()'s items, where choices come in groups of `n` (the n choices of one prompt,
    index k = prompt * n + j), with the items of a group's other choices (j > 0) held back
    until its first choice's (j = 0) first item has gone by: what a follower's first chunk
    repeats of its prompt (its scores, computed by the first choice alone) is known by
    then. Each choice's items keep their order; closing this closes `items`."""
    seen: set[int] = set()  # leaders whose first item has gone by
    held: dict[int, list[tuple[int, T]]] = {}
    async with aclosing(items):  # type: ignore[type-var]
        async for k, item in items:
            lead = k - k % n
            if lead in seen:
                yield k, item
            elif k != lead:
                held.setdefault(lead, []).append((k, item))
            else:
                seen.add(lead)
                yield k, item
                for follower in held.pop(lead, ()):
                    yield follower
