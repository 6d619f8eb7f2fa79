"""The consumer side of one request: its new tokens turned into Deltas as the loop wakes it
(deltas), gathered into a RequestOutput for generate() (collect), and the iterator that
Engine.stream() returns, which releases the request when it is closed or dropped
(RequestStream).

Streams run on their own time, not the loop's: the loop only appends tokens and sets the
request's event; detokenizing and stop strings happen here. generate() runs them in its
caller's task, which takes each delta as it comes; a stream runs them in a task of its own
(its pump), at the loop's pace whatever its consumer's: a consumer that stops reading (an HTTP
handler whose client's socket is full) delays only its deltas, not the end of its request at
a stop string, nor the release of its KV.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable

from aiollm.engine.output_text import NoText, OutputText
from aiollm.engine.outputs import Delta, PromptTokenLogprobs, RequestOutput
from aiollm.engine.request import Request

Finish = Callable[[Request, str], None]  # Engine._finish: end a request with a reason
_END = object()  # a pump's last item when its deltas ended without an error


async def deltas(req: Request, out: OutputText | NoText,
                 finish: Finish) -> AsyncIterator[Delta]:
    """Turn the request's new tokens into deltas (text with the tokens it comes from) until
    it finishes; a stop string ends it at its token (see OutputText), calling
    finish(req, "stop"). Raises req.error_type(req.error) when the request failed; a
    consumer that goes away (cancelled, disconnected, closed) aborts the request."""
    sent = 0
    first = True  # the first delta brings the prompt logprobs
    try:
        while True:
            await req.event.wait()
            req.event.clear()
            if req.failed:
                raise req.error_type(req.error or "the request failed")
            # the final stop token (eos, a stop id) is part of the output, not of its text
            # (unless include_stop_str_in_output: then its text is, as in vLLM)
            text_end = len(req.output_ids) - (req.done and req.last_is_stop_token
                                              and not req.params.include_stop_str_in_output)
            while out.fed < text_end and not out.stopped:
                out.feed(req.output_ids[out.fed])
            if out.stopped and not req.done:
                finish(req, "stop")
            if req.done:  # what the end releases is the stop token's, if it is not fed
                out.finish(end_token=text_end < len(req.output_ids))
                if out.stopped:  # the tokens after the one completing it are not output
                    req.finish_reason = "stop"
                    req.stop_reason = out.matched_stop
                    del req.output_ids[out.kept:]
                    if req.logprobs is not None:
                        del req.logprobs[out.kept:]
            text, n, texts = out.take()
            if req.done:  # the stop token, if it stayed, and the rest
                extra = len(req.output_ids) - sent - n
                if req.params.detokenize and extra:  # (else no token has a text)
                    # their text is "", but for what the end released past the tokens out
                    # before (a held-back stop-string start): the texts join to `text`
                    texts += [text[len("".join(texts)):]] + [""] * (extra - 1)
                n = len(req.output_ids) - sent
            new_ids = req.output_ids[sent:sent + n]
            lps = req.logprobs[sent:sent + n] if req.logprobs is not None else None
            sent += n
            # decided before the yield: a request that ends while its consumer holds this
            # delta (an engine failure, a shutdown) is seen at the next wait, and raises
            final = req.done
            if final or text or new_ids:
                yield Delta(text, new_ids, lps, req.finish_reason, len(req.prompt_ids), sent,
                            cached_tokens=max(req.cached_tokens, 0), token_texts=texts,
                            prompt_logprobs=req.prompt_logprobs if first else None,
                            stop_reason=req.stop_reason if final else None)
                first = False
            if final:
                return
    finally:
        if not req.done:
            finish(req, "abort")


async def collect(req: Request, stream: AsyncIterator[Delta]) -> RequestOutput:
    """The whole result of a request from its deltas (text joined, token ids, logprobs)."""
    parts, token_texts = [], []
    final = None
    async for delta in stream:
        parts.append(delta.text)
        token_texts += delta.token_texts
        final = delta
    assert final is not None
    return RequestOutput(
        request_id=f"{req.rid}", text="".join(parts), token_ids=list(req.output_ids),
        finish_reason=final.finish_reason, prompt_tokens=len(req.prompt_ids),
        completion_tokens=len(req.output_ids), logprobs=req.logprobs,
        prompt_token_ids=req.prompt_ids, cached_tokens=max(req.cached_tokens, 0),
        token_texts=token_texts,
        prompt_logprobs=PromptTokenLogprobs.of_prompt(req.prompt_logprobs),
        stop_reason=req.stop_reason)


class RequestStream:
    """The async iterator Engine.stream() returns. Its pump (_pump: the deltas run to the
    request's end in a task of their own, into a queue that this iterator reads) starts with
    it, so the request ends at its stop string however slowly it is read, or if it never is;
    what waits is bounded by the request's own output (max_tokens). A stream made outside a
    running loop starts its pump at its first iteration.

    A request is released when its stream is closed or garbage-collected, also if it was
    never iterated, or when its consumer is cancelled while it waits for a delta (as an
    async generator's finally block would). The release touches the engine's loop-thread
    state (the planner, the table, events), so a dropped stream hands its release to the
    loop it was made on: the cycle collector may free it on another thread (the model's, a
    tokenizer worker's) or amid the loop's own code."""

    __slots__ = ("_req", "_gen", "_finish", "_loop", "_home", "closed", "_pump", "_queue",
                 "_ended", "_reading", "_reader", "__weakref__")

    def __init__(self, req: Request | None, gen: AsyncIterator[Delta] | None, finish: Finish,
                 home: asyncio.AbstractEventLoop | None = None):
        """req None: a stream whose request is submitted later (submitted_later); `home`:
        the engine's loop, whose step loop makes the deltas (a stream made outside a loop
        is read on it alone; None: the loop it is first read on)."""
        self._req, self._gen, self._finish, self._home = req, gen, finish, home
        self.closed = False
        self._pump: asyncio.Task | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ended = False
        self._reading = False  # a reader waits for the next delta
        self._reader: weakref.ref | None = None  # the task that read last (weakly held)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop: released where it is dropped
            self._loop = None
        if gen is not None:
            self._start()

    def _start(self) -> None:
        if self._loop is not None:
            self._pump = self._loop.create_task(_pump(self._gen, self._queue))

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> Delta:
        """The next delta. RuntimeError while another task waits for one (as Python's async
        generators refuse a second anext()): each delta goes to one reader, and the end to
        one alone, so a second reader waited forever once the first had taken it.
        RuntimeError, changing nothing, from another event loop than the stream's (the one
        it was made on; made outside a loop, the engine's): its deltas come from that loop,
        which cannot wake another, so such a reader stalled."""
        if self._ended:
            raise StopAsyncIteration
        if self._reading:
            raise RuntimeError("anext(): this stream is already being read by another task; "
                               "read a stream from one task at a time")
        # made outside a loop: the engine's is its own (else its first reader's)
        self._check_loop("read", self._loop or self._home or asyncio.get_running_loop())
        self._loop = asyncio.get_running_loop()
        if self._pump is None:  # made outside a loop
            self._pump = asyncio.ensure_future(_pump(self._gen, self._queue))
        task = asyncio.current_task()  # (None: a coroutine driven by hand, in no task)
        self._reader = weakref.ref(task) if task is not None else None
        self._reading = True
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:  # the consumer went away: its request ends
            self._close()
            raise
        finally:
            self._reading = False
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    async def aclose(self) -> None:
        """Abort the request (if unfinished) and close the stream. Called from another task
        while one iterates the stream (waiting for tokens), it ends the request, whose last
        delta (finish_reason "abort") then ends that task's `async for`. RuntimeError,
        changing nothing, from another event loop than the stream's (the release changes
        the engine's state under its loop). Closed by its own reader (or before any read, or
        once the task that read it last has ended), the stream ends as a closed async
        generator does: the next read ends the iteration, not the deltas queued meanwhile
        and the abort's."""
        if self._loop is not None and not self._loop.is_closed():  # (closed: nothing runs)
            self._check_loop("closed", self._loop)
        # another task still reading it (a task that has ended reads no more: freed or
        # not, it is the same) is handed the abort's delta, which ends its async for
        reader = self._reader() if self._reader is not None else None
        if reader is None or reader.done() or reader is asyncio.current_task():
            self._ended = True
        self._close()
        if self._pump is None:  # made outside a loop, never iterated: nothing runs it
            await self._gen.aclose()

    @staticmethod
    def _check_loop(verb: str, own: asyncio.AbstractEventLoop) -> None:
        if asyncio.get_running_loop() is not own:
            raise RuntimeError(f"this stream is {verb} from another event loop than the "
                               "engine's, which makes its deltas: use it on that loop (from "
                               "another thread: asyncio.run_coroutine_threadsafe)")

    def _close(self) -> None:
        self.closed = True
        self._release()  # the pump hands on the abort's last delta, then ends
        if self._req is None and self._pump is not None:
            self._pump.cancel()  # its grammar still compiles: nothing is submitted now

    @classmethod
    def submitted_later(cls, finish: Finish,
                        make: Callable[[Callable[[], "RequestStream | None"]],
                                       AsyncIterator[Delta]],
                        home: asyncio.AbstractEventLoop | None = None) -> "RequestStream":
        """A stream whose request is not submitted yet (its grammar compiles first): make(ref)
        gives the deltas' generator, which submits nothing once ref() (the stream, weakly
        held: a dropped stream must be collectable while its pump runs) is None or closed,
        and calls bind(req) on it when it submits."""
        stream = cls(None, None, finish, home)
        stream._gen = make(weakref.ref(stream))
        stream._start()
        return stream

    def bind(self, req: Request) -> None:
        """The request of a stream made before it was submitted (its grammar compiling)."""
        self._req = req

    def _release(self) -> None:
        if self._req is not None and not self._req.done:
            self._finish(self._req, "abort")

    def __del__(self) -> None:
        if self._req is None or self._req.done:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # Never inline, not even on the loop's own thread: the cycle collector runs where
            # an allocation trips it, which there is often the middle of the step loop or
            # the planner, whose state the release changes. The loop runs it next turn (as
            # asyncio's own hook runs a dropped async generator's aclose).
            try:
                loop.call_soon_threadsafe(self._release)
            except RuntimeError:  # the loop closed meanwhile: its engine is gone
                pass
            return
        self._release()


async def _pump(gen: AsyncIterator[Delta], queue: asyncio.Queue) -> None:
    """`gen`'s deltas into `queue` as they come, then _END, or the exception that ended it.
    Holds no reference to its stream, which stays collectable (and released when dropped)."""
    try:
        async for delta in gen:
            queue.put_nowait(delta)
    except asyncio.CancelledError:  # closed before its request was submitted
        queue.put_nowait(_END)
        raise
    except Exception as exc:  # noqa: BLE001 - raised by the stream's consumer
        queue.put_nowait(exc)
    else:
        queue.put_nowait(_END)
