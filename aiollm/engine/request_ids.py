"""Request ids that callers give (vLLM's request_id): which engine requests a call under a
given id made, so that Engine.abort(request_id) ends them from anywhere on the engine's loop
without the caller's task, as vLLM's AsyncLLM.abort and SGLang's abort_request do.

An id names one call (generate or chat: all its n choices; stream or stream_chat: its
request) from the moment the call is made, before its prompt is tokenized or its grammar
compiled, to the end of its requests. An abort in that first stretch is kept: the requests
end with finish_reason "abort" as they are submitted. Several calls may be under one id at
once, and an abort of it ends them all, as vLLM's AsyncLLM takes a caller's id (it makes
each request's own id unique, and aborts every request of the caller's).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Iterable

from aiollm.engine.request import Request
from aiollm.errors import InvalidRequest

Finish = Callable[[Request, str], None]  # Engine._finish: end a request with a reason


class IdCall:
    """One call under a caller's request id: the requests it submitted, whether it may still
    submit (`open`: the call has not returned; a stream's, its request is not submitted
    yet), whether it was aborted. `stream`: a weak reference to the stream whose request is
    submitted once its grammar has compiled (closed or dropped before, it submits none)."""

    __slots__ = ("request_id", "requests", "open", "abort_event", "stream")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.requests: list[Request] = []
        self.open = True
        self.abort_event = asyncio.Event()  # set by an abort of its id
        self.stream: weakref.ref | None = None

    @property
    def aborted(self) -> bool:
        """Whether an abort of its id came: its requests end as they are submitted."""
        return self.abort_event.is_set()

    @property
    def under_way(self) -> bool:
        """Whether the call may still submit, or a request of it has not ended."""
        if any(not r.done for r in self.requests):
            return True
        if not self.open or self.stream is None:
            return self.open
        stream = self.stream()
        return stream is not None and not stream.closed


def aborted(call: IdCall | None) -> bool:
    """Whether `call` (None: a call without an id) was aborted: its requests end as they
    are submitted."""
    return call is not None and call.aborted


@contextlib.asynccontextmanager
async def room_unless_aborted(room: asyncio.Semaphore | None,
                              call: IdCall | None) -> AsyncIterator[None]:
    """Hold a place of `room` (None: nothing to hold) while the body runs, unless `call` is
    aborted while it waits for one: the body then runs holding none (its request, aborted,
    ends as it is submitted), not once unrelated requests have ended and freed one."""
    if room is None or call is None:
        async with room or contextlib.nullcontext():
            yield
        return
    take = asyncio.ensure_future(room.acquire())
    abort = asyncio.ensure_future(call.abort_event.wait())
    held = False
    try:
        try:
            await asyncio.wait((take, abort), return_when=asyncio.FIRST_COMPLETED)
        finally:  # (also when the caller is cancelled)
            abort.cancel()
            held = take.done()
            if not held:  # a place given to it meanwhile goes back as it is cancelled
                take.cancel()
                take.add_done_callback(lambda t: t.cancelled() or room.release())
        yield
    finally:
        if held:
            room.release()


class RequestIds:
    """The calls under way by their caller-given ids (one engine's; used on its loop)."""

    def __init__(self, finish: Finish):
        """`finish`: the engine's _finish, which an abort calls with "abort"."""
        self._finish = finish
        self._calls: dict[str, list[IdCall]] = {}
        self._count = 0  # the calls in _calls, under all their ids
        # past this many calls the ended ones are dropped (a stream never read, made outside
        # a loop, or closed before its grammar compiled, gives its id back at no other
        # time): the table stays within twice the calls under way. Calls, not ids: calls
        # sharing one id piled up under it unswept
        self._sweep_at = 64

    def claim(self, request_id: str | None) -> IdCall | None:
        """A new call under `request_id` (None: the call has none, returns None).
        InvalidRequest naming request_id when it is no non-empty string."""
        if request_id is None:
            return None
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id must be a non-empty string, got "
                                 f"{request_id!r}", param="request_id")
        if self._count >= self._sweep_at:
            under_way = ((k, [c for c in calls if c.under_way])
                         for k, calls in self._calls.items())
            self._calls = {k: calls for k, calls in under_way if calls}
            self._count = sum(map(len, self._calls.values()))
            self._sweep_at = 2 * self._count + 64
        call = IdCall(request_id)
        self._calls.setdefault(request_id, []).append(call)
        self._count += 1
        return call

    def submitted(self, call: IdCall | None, req: Request) -> None:
        """`req` was submitted by `call` (None: a call without an id): ended at once when
        the call was aborted before."""
        if call is None:
            return
        call.requests.append(req)
        if call.aborted:
            self._finish(req, "abort")

    def release(self, call: IdCall | None) -> None:
        """`call` submits no more (it has returned, or its stream's request was submitted or
        has ended): its id is forgotten once its requests have ended."""
        if call is None:
            return
        call.open = False
        if not call.under_way:
            self._forget(call)

    def _forget(self, call: IdCall) -> None:
        calls = self._calls.get(call.request_id, [])
        if call in calls:
            calls.remove(call)
            self._count -= 1
            if not calls:
                del self._calls[call.request_id]

    def abort(self, request_ids: str | Iterable[str]) -> None:
        """End the requests of every call under these ids with finish_reason "abort" (their
        generate() returns what they generated, their stream's last delta says "abort"); an
        id of no call under way is passed over, as vLLM passes it over. InvalidRequest
        naming request_id for an id that is no string (nothing aborted then)."""
        try:
            if isinstance(request_ids, (bytes, bytearray)):  # iterable, but of ints
                raise TypeError
            ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        except TypeError:
            raise InvalidRequest("request_id must be a string or an iterable of strings, "
                                 f"got {request_ids!r}", param="request_id") from None
        for i, rid in enumerate(ids):  # (one id alone is a string)
            if not isinstance(rid, str):
                raise InvalidRequest(f"request_id[{i}] must be a string, got {rid!r}",
                                     param=f"request_id[{i}]")
        for rid in ids:
            for call in list(self._calls.get(rid, ())):
                call.abort_event.set()
                for req in call.requests:
                    self._finish(req, "abort")  # (a no-op for one that has ended)
                if not call.under_way:
                    self._forget(call)
