"""EngineAPI: the Engine's request API, what callers submit requests through: generate,
stream, chat, generate_batch, tokenize (engine.py holds the rest of Engine: its life cycle;
step_loop.py the step loop).

A request is checked here, at the edge, before anything is held: a usage error (not
started, or a call from another event loop than the engine's) raises RuntimeError, bad input
InvalidRequest naming the field, a full queue or a shutdown Overloaded, a stopped engine (or
one whose event loop ended under it) EngineStopped. The checks of the prompt and params
themselves and the table writes are submission.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Union

from aiollm.engine.bad_words import bad_word_ids
from aiollm.engine.cache_salt import checked_salt, salts_of_batch, split_salt
from aiollm.engine.chat_messages import checked_messages
from aiollm.engine.chat_tools import check_tools, tool_renderings
from aiollm.engine.chat_template import (TemplateOptions, chat_token_ids, rendered_size,
                                          special_texts)
from aiollm.engine.request_group import completions, gather_all, n_of
from aiollm.engine.output_text import NoText, OutputText
from aiollm.engine.outputs import Delta, RequestOutput
from aiollm.engine.request import Request
from aiollm.engine.stream import RequestStream, collect, deltas
from aiollm.engine.submission import (Prompt, check_request, default_length_within,
                                      kept_prompt_tokens, new_request, off_loop, prompt_text,
                                      request_params, tokenize)
from aiollm.errors import (EngineStopped, InvalidRequest, Overloaded, naming_batch_item,
                           naming_params_item)
from aiollm.sampling_params import SamplingParams


# generate_batch's progress bar: shown or not, or (vLLM's use_tqdm) what makes it, called as
# tqdm is, with total= and desc=, and answering update(n) and close()
Progress = Union[bool, Callable[..., Any]]


class EngineAPI:
    """The request methods of Engine, which inherits them (a mixin with no state of its
    own). They read what Engine's __init__ and start() set up (config, tokenizer,
    model_config, max_model_len, table, planner, grammars, prefix_cache, metrics, the
    started and accepting flags), add requests to Engine._requests, wake the loop, and end
    requests through Engine._finish."""

    # -- public API ------------------------------------------------------------------------
    def default_params(self) -> SamplingParams:
        """The SamplingParams of a call given none: SamplingParams' defaults, those the
        model's generation config recommends in their place (config.generation_config;
        aiollm/model/generation_defaults.py), as vLLM's LLM.generate takes them."""
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

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None, *,
                       cache_salt: str | None = None) -> RequestOutput:
        """The whole result of one request: prompt as text (long text tokenized off the loop)
        or token ids; with params.n > 1, of n requests on the prompt, one per choice, joined
        (engine/request_group.py) and submitted as generate_batch submits its prompts, as the
        table and the waiting queue make room. `cache_salt` (vLLM's; or a prompt dict's
        "cache_salt"): a non-empty string; the request reuses only cached KV that requests
        of the same salt computed, and only they reuse its KV (engine/cache_salt.py). Raises
        InvalidRequest / Overloaded before it starts, RequestFailed inside."""
        prompt, cache_salt = split_salt(prompt, cache_salt)
        defaulted = params is None
        await self.compile_grammar(params := params or self.default_params())
        given = prompt_text(prompt)
        if self._started and isinstance(prompt, str):
            prompt = await off_loop(len(prompt), self.tokenize, prompt)
        if defaulted:
            prompt, params = self._with_defaults(prompt)
        room = self._batch_room if n_of(params) > 1 else None
        return await self._completions(prompt, params, given, room, cache_salt)

    async def _completions(self, prompt: Prompt, params: SamplingParams, given: str | None,
                           room: asyncio.Semaphore | None = None,
                           cache_salt: str | None = None) -> RequestOutput:
        """generate()'s requests, each compiling its grammar (cached: the choices of a
        prompt compile it once) and submitted once `room` lets it (generate_batch's: as many
        compiles under way as requests); `given`: the prompt's text as the caller gave it."""
        async def one(p: SamplingParams) -> RequestOutput:
            async with room or contextlib.nullcontext():
                await self.compile_grammar(p)
                req, text = self._submit(prompt, p, cache_salt=cache_salt)
                out = await collect(req, deltas(req, text, self._finish))
            out.prompt = given
            return out

        return await (one(params) if n_of(params) == 1 else completions(params, one))

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, *,
               cache_salt: str | None = None) -> AsyncIterator[Delta]:
        """Text deltas of one request. Validation errors raise here, before iteration.
        Closing the stream (or dropping it, even unstarted) aborts the request.
        `cache_salt`: as generate() takes it.

        The request runs to its end (a stop string, max_tokens...) at the engine's pace,
        whether or not the stream is read meanwhile; the deltas wait for their reader.

        A grammar not compiled yet is compiled as generate() compiles it (compile_grammar:
        off the loop, within grammar_compile_timeout), from the next turn of the loop, and
        the request is submitted once it has: its errors (InvalidRequest naming the grammar's
        field, Overloaded) raise from the first iteration; a stream dropped or closed before
        holds nothing (the compilation runs on, and is cached)."""
        prompt, cache_salt = split_salt(prompt, cache_salt)
        if params is None:
            prompt, params = self._with_defaults(prompt)
        if n_of(params) > 1:
            raise InvalidRequest(f"n must be 1 in a stream (one completion), got {params.n}: "
                                 "stream each choice with its own seed, or generate() all n",
                                 param="n")
        c = params.constraint if isinstance(params, SamplingParams) else None
        if c is not None and c.grammar is not None and not self.grammars.compiled(c.grammar):
            ids = self._checked(prompt, params)
            return RequestStream.submitted_later(
                self._finish, lambda ref: self._stream_compiled(ids, params, ref, cache_salt))
        req, text = self._submit(prompt, params, cache_salt=cache_salt)
        return RequestStream(req, deltas(req, text, self._finish), self._finish)

    async def _stream_compiled(self, ids: list[int], params: SamplingParams,
                               stream_ref: Callable[[], RequestStream | None],
                               cache_salt: str | None) -> AsyncIterator[Delta]:
        await self.compile_grammar(params)
        stream = stream_ref()
        if stream is None or stream.closed:  # dropped, or closed by another task meanwhile
            return
        # checked again: the engine may have stopped
        req, text = self._submit(ids, params, cache_salt=cache_salt)
        stream.bind(req)
        del stream  # held by its consumer only: dropped, it releases the request
        async with contextlib.aclosing(deltas(req, text, self._finish)) as gen:
            async for delta in gen:
                yield delta

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

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None,
                    template: TemplateOptions | None = None) -> list[int]:
        """Token ids of a conversation with the chat template applied as `template` says
        (default: the assistant's turn opened); control-token text in message content stays
        plain text unless config.special_tokens_in_content. `messages` as the template takes
        them: chat() and the HTTP API check and shape theirs first (chat_messages.py)."""
        self._check_started()
        if self._content_specials is None:
            self._content_specials = ([] if self.config.special_tokens_in_content
                                      else special_texts(self.tokenizer))
        return chat_token_ids(self.tokenizer, messages, tools, specials=self._content_specials,
                              options=template)

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None,
                    template: TemplateOptions | None = None) -> tuple[list[int], list[dict]]:
        """(token ids, the messages rendered) of a conversation as every chat of aiollm
        renders it (the HTTP API, chat(), LLM.chat), under `template`'s options and its
        chat_template if it gives one: `messages` as chat_messages.checked_messages gives
        them and `tools` as chat_tools.check_tools does, both given to a template that
        knows them; one that knows no tools (the default model's) is shown them, and past
        calls, in the messages (chat_tools.tool_renderings), and one that refuses a system
        turn, at the head of the first user message. InvalidRequest as chat_prompt raises
        it (the last rendering's, when the template takes none); ChatTemplateError when the
        template does not compile."""
        source = (template.chat_template if isinstance(template, TemplateOptions) else None)
        *first, last = tool_renderings(messages, tools or [],
                                       source or self.tokenizer.chat_template)
        for shown in first:
            with contextlib.suppress(InvalidRequest):
                return self.chat_prompt(shown, tools or None, template), shown
        return self.chat_prompt(last, tools or None, template), last

    async def chat(self, messages: list[dict], params: SamplingParams | None = None,
                   template: TemplateOptions | None = None,
                   tools: list[dict] | None = None, *,
                   cache_salt: str | None = None) -> RequestOutput:
        """generate() on a conversation ({"role", "content"} dicts, checked as the HTTP API
        checks them: InvalidRequest naming the field, engine/chat_messages.py) under the
        chat template (a long one rendered and tokenized off the loop), with `tools`
        (OpenAI's function tools, checked as the HTTP API checks them: InvalidRequest
        naming `tools[i]...`): the prompt is the one /v1/chat/completions renders for the
        same messages, tools and options (render_chat). The output is the model's text, any
        calls in it unparsed, as vLLM's LLM.chat gives it. `cache_salt`: as generate()
        takes it (checked before the messages are rendered)."""
        checked_salt(cache_salt)
        ids = await off_loop(rendered_size(messages, tools), self._chat_ids, messages,
                             template, tools)
        return await self.generate(ids, params, cache_salt=cache_salt)

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None,
                    template: TemplateOptions | None = None,
                    tools: list[dict] | None = None, *,
                    cache_salt: str | None = None) -> AsyncIterator[Delta]:
        """stream() on a conversation under the chat template, with `tools`, checked and
        rendered as chat() checks and renders them; `cache_salt` as generate() takes it."""
        checked_salt(cache_salt)
        return self.stream(self._chat_ids(messages, template, tools), params,
                           cache_salt=cache_salt)

    def _chat_ids(self, messages: list[dict], template: TemplateOptions | None,
                  tools: list[dict] | None) -> list[int]:
        self._check_started()  # a usage error before any complaint about the messages
        messages = checked_messages(messages)
        if tools is not None:
            tools = check_tools(list(tools) if isinstance(tools, tuple) else tools)
        return self.render_chat(messages, tools, template)[0]

    async def generate_batch(self, prompts: Sequence[Prompt],
                             params: SamplingParams | Sequence[SamplingParams] | None = None,
                             progress: Progress = True, *, batch_name: str = "prompts"
                             ) -> list[RequestOutput]:
        """Offline generation of many prompts at once, with a progress bar. A single string
        is one prompt (as in vLLM's LLM.generate), not a batch of its characters, and so is
        one prompt dict ({"prompt": text}, {"prompt_token_ids": ids}, either with a
        "cache_salt" as generate() takes it: InvalidRequest naming `prompts[i].cache_salt`
        for a bad one). `params`:
        one SamplingParams for every prompt, or a list (or tuple) of one per prompt, as
        vLLM's LLM.generate takes them (InvalidRequest naming `params` for another length,
        `params[i].field` for a bad one). A batch
        larger than the request table or the waiting queue is submitted as they make room,
        which all batches share (other callers of the engine may still fill them:
        Overloaded). Raises
        InvalidRequest naming `prompts` for a value that is no list or tuple of prompts, and
        `prompts[i]` for a bad prompt; one too long for the context says which prompt and keeps
        its param (errors.of_batch_item); a bad field of params keeps its own name. Every
        prompt is checked before any is submitted.
        `batch_name`: what those errors call the batch where the caller's differs (LLM.chat:
        "conversations", whose token ids the prompts are). `progress`: a tqdm bar while
        true, none while false, or a callable that makes the bar, as vLLM's use_tqdm takes
        one (a tqdm class or a factory such as functools.partial(tqdm, leave=False)): it is
        called with total= and desc=, once the prompts are checked, and its bar is given
        update(1) per prompt done and close() at the end, on the engine's event loop."""
        from tqdm.auto import tqdm

        if isinstance(prompts, (str, dict)):  # one prompt dict too, as vLLM takes it
            prompts = [prompts]
        elif not isinstance(prompts, (list, tuple)):  # else no len()
            raise InvalidRequest("prompts must be a list of prompts (strings, lists of token "
                                 "ids or prompt dicts) or one prompt, got "
                                 f"{type(prompts).__name__}", param="prompts")

        # a bad prompt late in a long batch failed it only once those before had run, their
        # results thrown away (text is tokenized here once: the ids are submitted)
        self._check_accepting()
        prompts, salts = salts_of_batch(prompts, batch_name)
        defaulted = params is None
        each = _params_of_batch(self.default_params() if defaulted else params,
                                len(prompts), batch_name)
        given = [prompt_text(p) for p in prompts]
        # one SamplingParams per prompt: a bad field is named by its place (params[i].field)
        per_prompt = isinstance(params, (list, tuple))
        prompts = await off_loop(sum(len(p) for p in prompts if isinstance(p, str)),
                                 self._checked_batch, prompts, each, batch_name, defaulted,
                                 per_prompt)
        if callable(progress):
            bar = progress(total=len(prompts), desc="generate")
        else:
            bar = tqdm(total=len(prompts), desc="generate", disable=not progress)
        async def one(i, p):
            with (naming_batch_item("prompt", i, batch_name),
                  naming_params_item(i if per_prompt else None)):
                # each choice of a prompt (n > 1) takes room of its own
                out = await self._completions(p, each[i], given[i], self._batch_room,
                                              salts[i])
            bar.update(1)
            return out

        try:  # one failure ends the batch (gather_all cancels the other prompts)
            return await gather_all([one(i, p) for i, p in enumerate(prompts)])
        finally:
            bar.close()

    def _checked_batch(self, prompts: Sequence[Prompt], params: list[SamplingParams],
                       batch_name: str, defaulted: bool = False, per_prompt: bool = False
                       ) -> list[list[int]]:
        """The prompts' ids, each checked with its params; `defaulted` (the call gave no
        params): each prompt's are the engine's defaults within its context (set in params);
        `per_prompt` (the call gave one per prompt): a bad field is named params[i].field."""
        ids = []
        for i, p in enumerate(prompts):
            with (naming_batch_item("prompt", i, batch_name),
                  naming_params_item(i if per_prompt else None)):
                if defaulted:
                    p, params[i] = self._with_defaults(p)
                ids.append(self._checked_input(p, params[i]))  # maybe off the loop's thread
        return ids

    def _with_defaults(self, prompt: Prompt) -> tuple[list[int], SamplingParams]:
        """The prompt's ids and the params of a call given none for it: default_params()
        with the generation config's length within the context the prompt leaves."""
        ids = self.tokenize(prompt)
        return ids, default_length_within(self.default_params(), len(ids), self.max_model_len)

    # -- submission ------------------------------------------------------------------------
    def tokenize(self, prompt: Prompt, keep_last: int | None = None) -> list[int]:
        """Token ids of a prompt (text, or ids checked against the vocabulary), only its
        last `keep_last` when given; raises InvalidRequest naming "prompt" (see
        submission.tokenize), RuntimeError before the engine was first started (no
        tokenizer yet)."""
        self._check_started()
        return tokenize(self.tokenizer, prompt, self.model_config.vocab_size, self.max_model_len,
                        keep_last)

    def _check_started(self) -> None:
        if not self._started and self._loop_task is None:  # never started: a usage error
            raise RuntimeError("the engine is not started: use `async with Engine() as engine`")

    def _check_accepting(self) -> None:
        self._check_started()
        # stopped: after stop(), or during it (a request tokenized or compiled off the loop
        # meanwhile, or a server's handler during its shutdown: an Overloaded, so HTTP 503)
        if not self._started:
            raise EngineStopped("the engine is stopped (Engine.stop() ran before this request "
                                "was submitted); it takes no request until started again")
        if self._loop_task.done():
            # its event loop ended without stop() (or an interrupt raised inside it ended
            # it, or a stop() under way has ended it): the request would wait forever, also
            # while not accepting (no shutdown will end)
            raise EngineStopped(
                "the engine's step loop has ended without Engine.stop(): the event loop it was "
                "started on ended (as asyncio.run(engine.start()) ends it), an interrupt "
                "stopped it or a stop() is under way. Start and use the engine in one event "
                "loop (`async with Engine() as engine`), or await engine.start() again to "
                "start it afresh")
        if (lost := self.ranks.lost if self.ranks is not None else None) is not None:
            # an engine whose process goes on (an offline LLM's): every call says why
            raise EngineStopped(f"{lost}: this engine cannot serve any more; stop it and "
                                f"start a new one")
        if not self._accepting:
            raise Overloaded("the server is shutting down")
        self._check_own_loop()

    def _check_own_loop(self) -> None:
        """Raise RuntimeError when called from another event loop than the one the engine
        was started on, or from a thread outside any loop while the engine's runs on
        another thread (the call would change the engine's state under its running loop);
        a call outside any loop passes while the engine's loop is not running (a stream made
        there is iterated in it later)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = self._event_loop if not self._event_loop.is_running() else None
        if running is not self._event_loop:
            raise RuntimeError(
                "the engine runs on another event loop than this call's: call it from the "
                "loop that started it (from another thread: asyncio.run_coroutine_threadsafe)")

    def _checked(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids, once the engine takes requests and the prompt and params
        fit the model (what stream() checks before a grammar compiles)."""
        self._check_accepting()
        return self._checked_input(prompt, params)

    def _checked_input(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """_checked's part that reads only the model and the tokenizer (any thread)."""
        checked_params(params)
        ids = self.tokenize(prompt, kept_prompt_tokens(params.truncate_prompt_tokens,
                                                       self.max_model_len))
        check_request(len(ids), params, self.model_config.vocab_size, self.max_model_len)
        if params.constraint is not None:  # allowed_token_ids, logit_bias in the vocabulary
            self.grammars.check(params.constraint, params.min_tokens, params.stop_token_ids)
        return ids

    def _submit(self, prompt: Prompt, params: SamplingParams, *, counted: bool = True,
                cache_salt: str | None = None) -> tuple[Request, OutputText | NoText]:
        """A checked request in the waiting queue, and its output text's decoder. counted
        False: kept out of the metrics and the scheduler's history (a health probe);
        cache_salt: the request's, checked (cache_salt.checked_salt)."""
        ids = self._checked(prompt, params)
        params = request_params(params, len(ids), self.max_model_len)
        if len(self.planner.waiting) >= self.config.max_waiting_requests:
            raise Overloaded(f"too many waiting requests ({self.config.max_waiting_requests})")
        bad_words = (bad_word_ids(self.tokenizer, params.bad_words, self.model_config.vocab_size)
                     if params.bad_words else None)
        grammar = (self.grammars.start(params.constraint, bad_words)
                   if params.constraint or bad_words else None)
        # everything that can raise comes before the table slot: nothing would give it back
        detok = OutputText.of_request(self.tokenizer, ids, params)
        req = new_request(self.table, ids, params, self._rng, grammar,
                          keep_prompt_array=self.prefix_cache is not None)
        req.counted = counted
        req.cache_salt = cache_salt
        self._requests[req.rid] = req
        self.planner.enqueue(req)
        if counted:
            self.metrics.prompt_tokens.inc(len(ids))
        self._wake.set()
        return req, detok


def checked_params(params: SamplingParams) -> None:
    """Raise InvalidRequest naming `params` when it is no SamplingParams, or the bad field;
    checked again at each submission: a field may have been set since it was made."""
    if not isinstance(params, SamplingParams):
        raise InvalidRequest(f"params must be SamplingParams, got {type(params).__name__}",
                             param="params")
    params.check()


def _params_of_batch(params: SamplingParams | Sequence[SamplingParams] | None, n: int,
                     batch_name: str) -> list[SamplingParams]:
    """One SamplingParams for each of a batch's n items, copied as they are at the call:
    `params` for all or, given a list or tuple, its items, each
    checked (InvalidRequest naming `params[i]` and its field, or `params` for a list of
    another length)."""
    if not isinstance(params, (list, tuple)):
        checked_params(params)
        return [_as_called(params)] * n
    if len(params) != n:
        raise InvalidRequest(f"params holds {len(params)} SamplingParams for {n} {batch_name}: "
                             f"give one for all of them, or one for each", param="params")
    for i, p in enumerate(params):
        try:
            checked_params(p)
        except InvalidRequest as e:
            raise e.within(f"params[{i}]", f"params[{i}]" if e.param == "params"
                           else f"params[{i}].{e.param}") from None
    called = {id(p): _as_called(p) for p in params}  # one copy of a params given twice
    return [called[id(p)] for p in params]


def _as_called(params: SamplingParams) -> SamplingParams:
    """A copy of checked params as they are now, for a batch's prompts submitted later (as
    the table and the waiting queue make room): the caller may change or reuse theirs
    meanwhile (another thread's next batch), which changed those prompts, and a max_tokens
    past the context failed the whole batch it had accepted."""
    return dataclasses.replace(params, stop=list(params.stop),
                               stop_token_ids=list(params.stop_token_ids))
