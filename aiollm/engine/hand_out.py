"""HandOut: how the Engine hands a finished step's tokens to its requests and ends requests
(engine.py holds the life cycle, step_loop.py the step loop, engine_api.py, chat_api.py and
batch_api.py the request API, add_request.py the entry of requests).

_process takes one step and its result (the sampled token ids, one row per sampled request
of the step) and, for the requests still running, appends each token, checks the stop
conditions of the whole batch in one C call (`RequestTable.stop_check`: eos and stop token
ids once min_tokens are out, max_new_tokens, which admission keeps within the model's
length; then, per request that has them, its stop token sequences), advances constrained
requests' grammars, records logprobs and the TTFT / ITL metrics, and wakes each request's
stream. _finish ends one request: it gives back its KV slots and its request-table slot,
keeps the scheduler's history of output lengths, and wakes its stream, which raises the
request's error if it failed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np

from aiollm.engine.grammar import COMPLETE, ENDED, REJECTED
from aiollm.engine.grammar_rejection import rejection
from aiollm.engine.planner import Step
from aiollm.engine.request import Phase, Request
from aiollm.errors import Overloaded, RequestFailed
from aiollm.native import FinishReason, ReqState

# how long a thread failing every request (_fail_all_threadsafe) waits for the event loop to
# have done it: a loop held longer than this is stuck, and its requests are left to the caller
FAIL_WAIT_S = 10.0


class HandOut:
    """The token hand-out and request ends of Engine, which inherits them (a mixin with no
    state of its own). They read what Engine's start() set up (table, planner, scheduler,
    grammars, metrics, eos_ids, eos_token_id, config, _requests, _wake, _event_loop)."""

    def _process(self, step: Step, result) -> None:
        if result.scoring is not None:
            result.record_prompt_logprobs()
        if result.next_ids is None:
            return
        now_ns = time.monotonic_ns()
        # result rows follow the sampled requests of the step; a request paused since keeps
        # its token, one finished or aborted since drops it
        row_of = np.cumsum(step.sample) - 1
        idx = []
        for i, (r, s) in enumerate(zip(step.reqs, step.sample)):
            if s:
                r.pending -= 1
                if not r.done:
                    idx.append(i)
        if not idx:
            return
        rows = row_of[idx]
        reqs = [step.reqs[i] for i in idx]
        tokens = result.next_ids[rows]
        slots = np.fromiter((r.slot for r in reqs), np.int32, len(reqs))
        finished = self.table.stop_check(slots, tokens, self.eos_ids, now_ns)
        bad = result.bad[rows] if result.bad is not None else None
        constrained = [k for k, r in enumerate(reqs) if r.grammar is not None]
        grammar_end = np.zeros(len(reqs), dtype=np.int8)
        if constrained:
            grammar_end[constrained] = self.grammars.accept(
                [reqs[k].grammar for k in constrained], tokens[constrained])
            for k in constrained:
                # an end id under min_tokens, which bans them: the sampler's draw where the
                # ban left the grammar no token (token 0, an end id of some models: a GGUF
                # file's <|endoftext|>), refused as the grammar refuses any other such draw
                if grammar_end[k] == ENDED and len(reqs[k].output_ids) < reqs[k].params.min_tokens:
                    grammar_end[k] = REJECTED
        # a prompt-scoring request's (max_tokens 0) sample is no output: not generated
        self.metrics.generation_tokens.inc(sum(r.counted and r.params.max_tokens != 0
                                               for r in reqs))
        for k, r in enumerate(reqs):
            if r.params.max_tokens == 0:  # prompt scoring: the prefill's token is no output
                if r.counted:
                    self.metrics.prefilled(r)
                self._finish(r, "length")
                continue
            r.output_ids.append(int(tokens[k]))
            if r.logprobs is not None:
                r.logprobs.append(result.logprob_entry(rows[k], r.params.logprobs))
            if r.counted:  # (a health probe is no client's request)
                if len(r.output_ids) == 1:
                    # prefill tokens processed, counted once its prefill is done (as vLLM
                    # does): a request that never got there (aborted while queued) has none
                    self.metrics.prefilled(r)
                    self.metrics.ttft.observe(time.monotonic() - r.arrival)
                    r.t_first_ns = now_ns
                elif r.t_last_ns:
                    self.metrics.itl.observe((now_ns - r.t_last_ns) / 1e9)
            r.t_last_ns = now_ns
            if bad is not None and bad[k]:
                self._finish(r, "error", error="the model produced non-finite logits", failed=True,
                             error_type=RequestFailed)
            elif grammar_end[k] == REJECTED:
                why, kind = rejection(r.params, len(r.output_ids),
                                      self.grammars.dead_end(r.grammar))
                self._finish(r, failure_reason(kind), error=why, failed=True, error_type=kind)
            elif (r.stop_sequences is not None  # before eos and length, as LightLLM checks
                  and r.stop_sequences.ends(r.output_ids)):
                self._finish(r, "stop")
            elif finished[k]:
                r.last_is_stop_token = finished[k] == FinishReason.STOP
                tok = r.output_ids[-1]
                # the tokenizer's eos is no stop reason, also when it is a stop id too
                # (vLLM's rule), unless ignore_eos made only the stop id end it; the model's
                # other eos ids (generation_config's, e.g. Llama 3's <|eot_id|>) are, as
                # vLLM makes them stop ids (so ignore_eos turns them off: the C check)
                if r.last_is_stop_token and (r.params.ignore_eos or tok != self.eos_token_id):
                    r.stop_reason = tok
                self._finish(r, FinishReason(finished[k]).label)
            elif grammar_end[k] == ENDED:  # the grammar's end: its final (stop) token is eos
                r.last_is_stop_token = True
                self._finish(r, "stop")
            elif grammar_end[k] == COMPLETE:  # matched whole, and no eos to end it with
                self._finish(r, "stop")
            r.event.set()

    def _expire_queued(self) -> None:
        timeout = self.config.queue_timeout
        if timeout is None or not self.planner.waiting:
            return
        cutoff = time.monotonic() - timeout
        # a wait for admission: a request paused since (before its first token, too) was
        # admitted and served; it resumes, as a preempted request does in vLLM
        for r in [r for r in self.planner.waiting if r.arrival < cutoff and r.admitted_seq < 0
                  and not r.output_ids and not r.pending]:
            if r.counted:
                self._refusals.refused("a request waited past the queue timeout",
                                       f"more than {timeout} s (--queue-timeout) unadmitted")
            self._finish(r, "abort", error=f"the request waited more than {timeout}s in the queue",
                         failed=True, error_type=Overloaded)

    def _fail_all(self, message: str, error_type: type[Exception]) -> None:
        """End every request in flight: its stream raises error_type(message)."""
        reason = failure_reason(error_type)
        for r in list(self._requests.values()):
            self._finish(r, reason, error=message, failed=True, error_type=error_type)

    def _fail_all_threadsafe(self, message: str) -> None:
        """From any thread: stop accepting and fail every request with `message`. From
        another thread than the event loop's, return once the loop has done so and run the
        first turn of the streams it woke (up to FAIL_WAIT_S seconds); at once when the
        engine's event loop has closed (no request is left in flight). The lost-rank watchdog
        calls it before it ends the process: posting alone gave a loop busy elsewhere (a
        loaded CPU) no time
        to answer, and the callers were cut off without the rank's error."""
        failed = threading.Event()

        def fail_all():
            try:
                self._accepting = False
                self._fail_all(message, RequestFailed)
            finally:  # after the woken streams' turn: they were scheduled first
                self._event_loop.call_soon(failed.set)
        loop = self._event_loop
        try:
            loop.call_soon_threadsafe(fail_all)
        except RuntimeError:  # closed: the engine stopped with it (a rank lost meanwhile)
            if not loop.is_closed():
                raise
            return
        if _running_loop() is loop:  # (on the loop's own thread: waiting would hold it)
            return
        deadline = time.monotonic() + FAIL_WAIT_S
        while not failed.wait(0.05) and not loop.is_closed() and time.monotonic() < deadline:
            pass

    def _finish(self, req: Request, reason: str, error: str | None = None, failed: bool = False,
                error_type: Callable[[str], Exception] = RequestFailed) -> None:
        """End a request: give back its KV, row and table slot; wake its stream. `reason`:
        "stop", "length", "abort" (its client went away, a shutdown, a request the server
        dropped or refused) or "error" (the engine failed serving it: RequestFailed)."""
        if req.done:
            return
        req.failed = failed
        req.error_type = error_type
        self.planner.release(req)
        req.phase = Phase.DONE
        req.finish_reason = reason
        req.error = error
        rec = self.table[req.slot]
        ended_early = reason in ("abort", "error")
        if not ended_early and req.counted:
            self.scheduler.on_finish(int(rec["output_len"]), int(rec["max_new_tokens"]),
                                     bool(rec["ignore_eos"]))
        rec["state"] = ReqState.ABORTED if ended_early else ReqState.FINISHED
        self.table.free(req.slot)
        self._requests.pop(req.rid, None)
        if req.counted:
            self.metrics.ended(req, reason, time.monotonic())
        req.event.set()
        self._wake.set()


def failure_reason(error_type: Callable[[str], Exception]) -> str:
    """The finish reason of a request failed with `error_type`: vLLM's "error" for a
    failure of the engine serving it (RequestFailed, HTTP 500: a step that raised, a device
    out of memory, non-finite logits, a lost rank), else "abort": a shutdown (EngineStopped)
    or a request the client's own constraints made impossible (InvalidRequest)."""
    return "error" if error_type is RequestFailed else "abort"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
