"""LLM: a synchronous wrapper for offline batch generation (no server, no event loop of
your own; inside a running one, async code or a notebook's cell, it raises RuntimeError:
use the Engine there).

    llm = LLM()                                   # default model
    outs = llm.generate(["Hello", "Bonjour"], SamplingParams(max_tokens=32))
    llm.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

from aiollm.engine import Engine, RequestOutput
from aiollm.engine.chat_messages import checked_messages
from aiollm.errors import EngineStopped, InvalidRequest
from aiollm.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str | None = None, **options):
        _outside_event_loops()
        # the loop runs one call at a time: another thread's call waits for its turn (it
        # raised 'This event loop is already running')
        self._turn = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self.engine = Engine(model, **options)
        self._loop.run_until_complete(self.engine.start())

    def generate(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None,
                 progress: bool = True) -> list[RequestOutput]:
        """The outputs of `prompts` (a string is one prompt), in order. Raises EngineStopped
        once close() has run."""
        return self._generate(prompts, params, progress, "prompts")

    def _generate(self, prompts, params, progress, batch_name: str) -> list[RequestOutput]:
        self._check_open()
        return self._run(self.engine.generate_batch(prompts, params, progress=progress,
                                                    batch_name=batch_name))

    def chat(self, conversations: Sequence[list[dict]] | list[dict],
             params: SamplingParams | None = None, progress: bool = True) -> list[RequestOutput]:
        """generate() on conversations, each checked as Engine.chat checks one and rendered by
        the chat template. A single conversation (a list of message dicts) is a batch of one,
        as in vLLM's LLM.chat. Raises InvalidRequest naming the conversation and its field
        (param `conversations[2].messages[1].role`), or `conversations` for a value that is
        neither a list (or tuple) of conversations nor one, before any is generated, and
        `conversations[i]` for one too long for the context (or the param to change, as
        Engine.generate_batch names prompts); EngineStopped once close() has run."""
        self._check_open()
        if not isinstance(conversations, (list, tuple)):
            # else None, a message dict or a generator raised Python's own errors, and a
            # string was read as a batch of one-letter conversations
            raise InvalidRequest("conversations must be a list of conversations (each a list "
                                 "of message dicts) or one conversation, got "
                                 f"{type(conversations).__name__}", param="conversations")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = []
        for i, conversation in enumerate(conversations):
            try:
                prompts.append(self.engine.chat_prompt(checked_messages(conversation)))
            except InvalidRequest as e:
                # the same check serves one conversation (Engine.chat, HTTP), whose names
                # start at messages: say which of the batch it was
                raise e.within(f"conversations[{i}]") from e
        # one too long for the context is named as the caller knows it: conversations[i]
        return self._generate(prompts, params, progress, "conversations")

    def _run(self, coro):
        """coro run to completion on the LLM's loop. Interrupted (Ctrl-C in a notebook), its
        requests are aborted before the interrupt goes on: they held their table slots and
        KV, and ran on inside the next call, for results nobody would read. An interrupt
        that lands in the engine's step loop ends it: the engine is started again (the next
        call raised EngineStopped). Calls from several threads take turns."""
        try:
            self._turn.acquire()
        except BaseException:  # Ctrl-C while another thread's call ran: asyncio then
            coro.close()       # warned of a coroutine never awaited
            raise
        try:
            if self._loop.is_closed():  # by another thread's close() while this one waited
                coro.close()
                self._check_open()
            task = self._loop.create_task(coro)
            try:
                return self._loop.run_until_complete(task)
            except BaseException:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        self._loop.run_until_complete(task)
                self._loop.run_until_complete(self.engine.start())  # a no-op unless it ended
                raise
        finally:
            self._turn.release()

    def _check_open(self) -> None:
        _outside_event_loops()
        if self._loop.is_closed():  # else asyncio's "Event loop is closed", and a warning
            raise EngineStopped("this LLM is closed (close() ran): make a new LLM")

    def close(self) -> None:
        with self._turn:  # after another thread's call under way
            if not self._loop.is_closed():
                _outside_event_loops()
                self._loop.run_until_complete(self.engine.stop())
                self._loop.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _outside_event_loops() -> None:
    """Raise RuntimeError, saying what to use instead, when called inside a running event
    loop (async code, a notebook's cell): LLM runs its own loop until each call ends, which
    asyncio refuses there ('Cannot run the event loop while another loop is running'),
    leaving the LLM's loop and its coroutines unclosed."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("LLM blocks until each call ends, so it cannot run inside a running "
                       "event loop (async code, a notebook's cell): there use the Engine, "
                       "`engine = Engine(); await engine.start()`, then `await "
                       "engine.generate_batch(prompts, params)`")
