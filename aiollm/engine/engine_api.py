"""EngineAPI: the Engine's request API for one prompt, what callers submit requests through:
generate() (also n choices of a prompt), stream(), check(), and the grammar compile and
default params they share. The Engine's other request methods are its chat (chat_api.py) and
offline batches (batch_api.py); every request enters through add_request.py, which checks it
at the edge (engine.py holds the rest of Engine: its life cycle; step_loop.py the step loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Iterable

from aiollm.engine.cache_salt import split_salt
from aiollm.engine.output_text import NoText, OutputText
from aiollm.engine.outputs import Delta, RequestOutput
from aiollm.engine.request import Request
from aiollm.engine.request_group import ChoiceGroup, completions, n_of
from aiollm.engine.request_ids import IdCall, aborted, room_unless_aborted
from aiollm.engine.stream import RequestStream, collect, deltas
from aiollm.engine.submission import Prompt, default_length_within, off_loop, prompt_text
from aiollm.errors import InvalidRequest, Overloaded
from aiollm.sampling_params import SamplingParams


class EngineAPI:
    """The request methods of Engine for one prompt, which it inherits (a mixin with no
    state of its own). They read what Engine's __init__ and start() set up (tokenizer,
    max_model_len, grammars, the generation config's defaults) and submit through
    AddRequest (add_request.py)."""

    def default_params(self) -> SamplingParams:
        """The SamplingParams of a call given none: SamplingParams' defaults, those the
        model's generation config recommends in their place (config.generation_config;
        aiollm/model/generation_defaults.py), as vLLM's LLM.generate takes them.
        RuntimeError before start(), which reads that config: SamplingParams' own defaults
        then, taken by a caller, overrode the model's."""
        self._check_started()
        return SamplingParams(**{k: v for k, v in self.sampling_defaults.items()
                                 if k != "do_sample"})

    async def compile_grammar(self, params: SamplingParams) -> None:
        """Compile the request's grammar, if any, on a compile thread within
        grammar_compile_timeout (cached): what generate() and stream() do before they submit
        a request with a grammar. Raises InvalidRequest naming the grammar's field (a bad
        grammar, or one not compiled in time), Overloaded (the compile threads are busy, or
        shutting down), EngineStopped after stop() (also one that ran while it compiled),
        RuntimeError before start (it did nothing then, silently)."""
        c = params.constraint if isinstance(params, SamplingParams) else None
        if c is not None and c.grammar is not None:
            self._check_accepting()
            try:
                await self.grammars.compile(c.grammar)
            except Overloaded:
                self._check_accepting()  # stopped meanwhile: EngineStopped says so
                raise

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                       request_id: str | None = None, *, cache_salt: str | None = None,
                       group: ChoiceGroup | None = None) -> RequestOutput:
        """The whole result of one request: prompt as text (long text tokenized off the loop)
        or token ids; with params.n > 1, of n requests on the prompt, one per choice, joined
        (engine/request_group.py) and submitted as generate_batch submits its prompts, as the
        table and the waiting queue make room. `cache_salt` (vLLM's; or a prompt dict's
        "cache_salt"): a non-empty string; the request reuses only cached KV that requests
        of the same salt computed, and only they reuse its KV (engine/cache_salt.py).
        `group`: the ChoiceGroup of the choices this request of n 1 is one of, where the
        caller runs each choice as a request of its own (the HTTP API); the metrics measure
        the group as one request (None: this request is measured alone, its n choices as
        one group). `request_id` (vLLM's, third as there): a non-empty string naming the
        call (all its n choices) for abort(request_id) and as the output's request_id
        (several calls may share one; InvalidRequest for one that is no such string).
        Raises InvalidRequest / Overloaded before it starts, RequestFailed inside;
        ValueError for a group given with n > 1; RuntimeError before start() or from
        another event loop than the engine's (with a request_id: before it is claimed)."""
        call = self._claim(request_id)  # from now: an abort before submission
        try:
            return await self._generate(call, prompt, params, cache_salt, group)
        finally:
            self._request_ids.release(call)

    async def _generate(self, call: IdCall | None, prompt: Prompt,
                        params: SamplingParams | None, cache_salt: str | None,
                        group: ChoiceGroup | None = None) -> RequestOutput:
        """generate() under the caller's request id's `call` (claimed: chat() claims it
        before it renders the conversation)."""
        prompt, cache_salt = split_salt(prompt, cache_salt)
        defaulted = params is None
        await self.compile_grammar(params := params or self.default_params())
        given = prompt_text(prompt)
        if self._started and isinstance(prompt, str):  # as _submit would, once, off the loop
            prompt = await off_loop(len(prompt), self._prompt_ids, prompt, params)
        if defaulted:
            prompt, params = self._with_defaults(prompt)
        room = self._batch_room if n_of(params) > 1 else None
        return await self._completions(prompt, params, given, room, cache_salt, group, call)

    def _claim(self, request_id: str | None) -> IdCall | None:
        """RequestIds.claim, once the engine takes this call (_check_accepting: started, on
        its loop...): the table of ids is its loop's, so a call from another loop or thread
        raises the usage error its submission would, before it touches the table."""
        if request_id is not None:
            self._check_accepting()
        return self._request_ids.claim(request_id)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """End the requests of every call made under `request_id` (one id or several), as
        vLLM's AsyncLLM.abort does: a generate() returns what it generated so far with
        finish_reason "abort" (each of its n choices), a stream's last delta has "abort"; a
        call aborted before its request was submitted (its prompt tokenized or its grammar
        compiled off the loop: once they are done; its choices waiting for a place: at
        once) ends so, with no token. An id of no call under way (one that has
        ended, or never was) is passed over. InvalidRequest naming request_id for an id
        that is no string; RuntimeError before start() or from another event loop than the
        engine's (from another thread: asyncio.run_coroutine_threadsafe)."""
        self._check_started()
        self._check_own_loop()
        self._request_ids.abort(request_id)

    async def _completions(self, prompt: Prompt, params: SamplingParams, given: str | None,
                           room: asyncio.Semaphore | None = None,
                           cache_salt: str | None = None,
                           group: ChoiceGroup | None = None,
                           call: IdCall | None = None) -> RequestOutput:
        """generate()'s requests, each compiling its grammar (cached: the choices of a
        prompt compile it once) and submitted once `room` lets it (generate_batch's: as many
        compiles under way as requests); `given`: the prompt's text as the caller gave it;
        `group`: as generate() takes it; `call`: the caller's request id's (or None)."""
        async def one(p: SamplingParams, group: ChoiceGroup | None = group) -> RequestOutput:
            async with room_unless_aborted(room, call):
                await self.compile_grammar(p)
                req, text = self._submit(prompt, p, cache_salt=cache_salt, group=group,
                                         aborted=aborted(call))
                self._request_ids.submitted(call, req)
                out = await collect(req, deltas(req, text, self._finish))
            out.prompt = given
            if call is not None:
                out.request_id = call.request_id
            return out

        if n_of(params) == 1:
            return await one(params)
        if group is not None:
            raise ValueError(f"group is for a request of one choice, got n {params.n}: "
                             "its choices make a group of their own")
        return await completions(params, one)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None,
               request_id: str | None = None, *, cache_salt: str | None = None,
               group: ChoiceGroup | None = None) -> AsyncIterator[Delta]:
        """Text deltas of one request. Validation errors raise here, before iteration.
        Closing the stream (or dropping it, even unstarted) aborts the request.
        `request_id`, `cache_salt`, `group`: as generate() takes them (abort(request_id)
        ends the request until it has ended).

        The request runs to its end (a stop string, max_tokens...) at the engine's pace,
        whether or not the stream is read meanwhile; the deltas wait for their reader.

        A grammar not compiled yet is compiled as generate() compiles it (compile_grammar:
        off the loop, within grammar_compile_timeout), from the next turn of the loop, and
        the request is submitted once it has: its errors (InvalidRequest naming the grammar's
        field, Overloaded) raise from the first iteration; a stream dropped or closed before
        holds nothing (the compilation runs on, and is cached)."""
        call = self._claim(request_id)
        try:
            prompt, cache_salt = split_salt(prompt, cache_salt)
            if params is None:
                prompt, params = self._with_defaults(prompt)
            if n_of(params) > 1:
                raise InvalidRequest(f"n must be 1 in a stream (one completion), got "
                                     f"{params.n}: stream each choice with its own seed, or "
                                     "generate() all n", param="n")
            c = params.constraint if isinstance(params, SamplingParams) else None
            if (c is not None and c.grammar is not None
                    and not self.grammars.compiled(c.grammar)):
                ids = self._checked(prompt, params)
                later = RequestStream.submitted_later(
                    self._finish,
                    lambda ref: self._stream_compiled(ids, params, ref, cache_salt, group,
                                                      call),
                    self._event_loop)
                if call is not None:  # its id is in use while the stream waits for it
                    call.stream = weakref.ref(later)
                return later
            req, text = self._submit(prompt, params, cache_salt=cache_salt, group=group)
        except BaseException:
            self._request_ids.release(call)
            raise
        self._request_ids.submitted(call, req)
        self._request_ids.release(call)  # in use until the request ends
        return RequestStream(req, self._deltas(req, text, call), self._finish,
                             self._event_loop)

    async def _stream_compiled(self, ids: list[int], params: SamplingParams,
                               stream_ref: Callable[[], RequestStream | None],
                               cache_salt: str | None, group: ChoiceGroup | None,
                               call: IdCall | None) -> AsyncIterator[Delta]:
        try:
            await self.compile_grammar(params)
            stream = stream_ref()
            if stream is None or stream.closed:  # dropped, or closed by another task meanwhile
                return
            # checked again: the engine may have stopped
            req, text = self._submit(ids, params, cache_salt=cache_salt, group=group,
                                     aborted=aborted(call))
            self._request_ids.submitted(call, req)
            stream.bind(req)
            del stream  # held by its consumer only: dropped, it releases the request
            async with contextlib.aclosing(deltas(req, text, self._finish)) as gen:
                async for delta in gen:
                    yield delta
        finally:
            self._request_ids.release(call)

    def _deltas(self, req: Request, text: OutputText | NoText,
                call: IdCall | None) -> AsyncIterator[Delta]:
        """A stream's deltas (stream.deltas), which forget the caller's request id, if
        any, when the request ends."""
        gen = deltas(req, text, self._finish)
        return gen if call is None else self._releasing(gen, call)

    async def _releasing(self, gen: AsyncIterator[Delta], call: IdCall) -> AsyncIterator[Delta]:
        try:
            async with contextlib.aclosing(gen):
                async for delta in gen:
                    yield delta
        finally:
            self._request_ids.release(call)

    def check(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids once every check that generate() and stream() make of
        the request itself has passed (the engine takes requests; params; the prompt's ids
        or text; prompt and max_tokens within the context; stop_token_ids, allowed_token_ids
        and logit_bias keys in the vocabulary), nothing submitted: for a caller that answers
        a request needing no model step itself (api/prompt_echo.py). Text is tokenized on
        the calling thread. Raises InvalidRequest naming the field, EngineStopped,
        Overloaded while the server shuts down, RuntimeError (not started, or another event
        loop's call), as generate() does. Room is not checked: a full waiting queue or
        request table refuses a submission (Overloaded), and this takes no place in either."""
        return self._checked(prompt, params)

    def _with_defaults(self, prompt: Prompt) -> tuple[list[int], SamplingParams]:
        """The prompt's ids and the params of a call given none for it: default_params()
        with the generation config's length within the context the prompt leaves."""
        ids = self.tokenize(prompt, refuse_long=True)  # generated from: refused when too long
        return ids, default_length_within(self.default_params(), len(ids), self.max_model_len)
