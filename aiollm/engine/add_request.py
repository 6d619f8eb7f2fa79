"""AddRequest: how a request enters the engine (vLLM's add_request): the prompt tokenized,
the engine's checks that it takes requests now, the request's own checks, and its place in
the request table and the waiting queue. Every request method (engine_api.py, chat_api.py,
batch_api.py) and the health probe submit through here.

A request is checked here, at the edge, before anything is held: a usage error (not
started, or a call from another event loop than the engine's) raises RuntimeError, bad input
InvalidRequest naming the field, a full queue or a shutdown Overloaded, a stopped engine (or
one whose event loop ended under it) EngineStopped. The checks of the prompt and params
themselves and the table writes are submission.py's.
"""

from __future__ import annotations

import asyncio

from aiollm.engine.bad_words import bad_word_ids
from aiollm.engine.output_text import NoText, OutputText
from aiollm.engine.request import Request
from aiollm.engine.request_group import ChoiceGroup
from aiollm.engine.submission import (Prompt, check_request, kept_prompt_tokens, new_request,
                                      prompt_bound, request_params, tokenize)
from aiollm.errors import EngineStopped, InvalidRequest, Overloaded
from aiollm.sampling_params import SamplingParams


class AddRequest:
    """The entry of requests into Engine, which inherits it (a mixin with no state of its
    own). It reads what Engine's __init__ and start() set up (config, tokenizer,
    model_config, max_model_len, table, planner, grammars, prefix_cache, metrics, the
    started and accepting flags), adds requests to Engine._requests and wakes the loop;
    requests end through Engine._finish."""

    def tokenize(self, prompt: Prompt, keep_last: int | None = None, *,
                 refuse_long: bool = False) -> list[int]:
        """Token ids of a prompt (text, or ids checked against the vocabulary), only its
        last `keep_last` when given; raises InvalidRequest naming "prompt" (see
        submission.tokenize), RuntimeError before the engine was first started (no
        tokenizer yet). Text of any length is counted (a caller counts tokens with it, as
        with vLLM's /tokenize); refuse_long: text to generate from, refused before it is
        encoded where it can never fit (submission.prompt_bound)."""
        self._check_started()
        return tokenize(self.tokenizer, prompt, self.model_config.vocab_size, self.max_model_len,
                        keep_last, refuse_long=refuse_long)

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
        ids = self._prompt_ids(prompt, params)
        check_request(len(ids), params, self.model_config.vocab_size, self.max_model_len)
        if params.constraint is not None:  # allowed_token_ids, logit_bias in the vocabulary
            self.grammars.check(params.constraint, params.min_tokens, params.stop_token_ids)
        return ids

    def _prompt_ids(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The ids generating from `prompt` with `params` takes (params checked first):
        its last truncate_prompt_tokens, text refused before it is encoded where it can
        never fit (any thread)."""
        checked_params(params)
        return self.tokenize(prompt, kept_prompt_tokens(params.truncate_prompt_tokens,
                                                        self.max_model_len), refuse_long=True)

    def _submit(self, prompt: Prompt, params: SamplingParams, *, counted: bool = True,
                cache_salt: str | None = None, group: ChoiceGroup | None = None,
                aborted: bool = False) -> tuple[Request, OutputText | NoText]:
        """A checked request in the waiting queue, and its output text's decoder. counted
        False: kept out of the metrics and the scheduler's history (a health probe);
        cache_salt: the request's, checked (cache_salt.checked_salt); group: the choices
        it is one of (request_group.ChoiceGroup; None: a request of one choice); aborted:
        its caller's id was aborted before (Engine.abort), so it ends as it is submitted,
        waiting for nothing: a full queue does not refuse it."""
        ids = self._checked(prompt, params)
        params = request_params(params, len(ids), self.max_model_len)
        # what waits beyond the running batch's room: a burst the batch takes is no overload.
        # A health probe (counted False) is no client's request: it needs no place
        beyond, limit = self.planner.waiting_beyond_batch(), self.config.max_waiting_requests
        if counted and not aborted and beyond >= limit:
            self._refusals.refused("the waiting queue is full", f"{beyond} request"
                                   f"{'s wait' if beyond != 1 else ' waits'} beyond the "
                                   "running batch's free places, the most "
                                   "max_waiting_requests (--max-waiting-requests) allows "
                                   f"({limit})")
            # what its client reads (a 503's body, as SGLang's "The request queue is full."):
            # what happened, not a flag of the server's it cannot see or set; the log line
            # above names the flag, as the operator typed it
            raise Overloaded(f"too many waiting requests: the request queue is full ({beyond} "
                             "wait beyond the running batch's free places, the most this "
                             "server lets wait); retry later")
        bad_words = (bad_word_ids(self.tokenizer, params.bad_words, self.model_config.vocab_size)
                     if params.bad_words else None)
        grammar = (self.grammars.start(params.constraint, bad_words)
                   if params.constraint or bad_words else None)
        # everything that can raise comes before the table slot: nothing would give it back
        detok = OutputText.of_request(self.tokenizer, ids, params)
        try:
            req = new_request(self.table, ids, params, self._rng, grammar,
                              keep_prompt_array=self.prefix_cache is not None)
        except Overloaded:  # no free table slot: the same 503 as a full queue, told as one
            if counted:
                self._refusals.refused("the request table is full", "every one of its "
                                       f"{self.table.capacity} slots (--table-capacity) "
                                       "holds a request")
            raise
        req.counted = counted
        req.cache_salt = cache_salt
        req.group = group
        self._requests[req.rid] = req
        self.planner.enqueue(req)
        self._wake.set()
        return req, detok


def checked_params(params: SamplingParams) -> None:
    """Raise InvalidRequest naming `params` when it is no SamplingParams, or the bad field;
    checked again at each submission: a field may have been set since it was made."""
    if not isinstance(params, SamplingParams):
        raise InvalidRequest(f"params must be SamplingParams, got {type(params).__name__}",
                             param="params")
    params.check()


def params_bound(params: SamplingParams | None, max_model_len: int) -> int | None:
    """prompt_bound of a prompt (a conversation, rendered) to generate from with `params`
    (None: the engine's defaults, which cut nothing): the params checked first, as
    submitting them checks them (checked_params, then kept_prompt_tokens: InvalidRequest
    naming the field), so that a truncate_prompt_tokens that cuts nothing (0, past the
    context) is refused before the prompt is encoded, not read as one that cuts it."""
    if params is None:
        return max_model_len
    checked_params(params)
    return prompt_bound(max_model_len,
                        kept_prompt_tokens(params.truncate_prompt_tokens, max_model_len))
