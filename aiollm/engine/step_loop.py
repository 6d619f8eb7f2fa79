"""StepLoop: the Engine's step loop (engine.py holds its life cycle, which starts and ends
the loop's task; hand_out.py the hand-out of a step's tokens and the ends of requests).

The loop coroutine is one step ahead of the device: it plans step N+1 (planner.py) and
launches it while step N still runs (queuing kernels on a GPU; on the CPU, computing on
the model runner's thread), then waits for step N's event (on a second thread, so HTTP
handlers and streams keep running), appends its sampled tokens, checks stops for the
whole batch in C and wakes each request's stream.
Step N+1 takes step N's tokens from the device, so the GPU never waits for the host.
A step that fails fails its own requests, not the server, and those that reuse the KV it
was to write (through the prefix cache: a device step fails after the next one was planned);
one that runs out of device memory pauses its own requests instead (oom.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import torch

from aiollm.engine.planner import Step
from aiollm.errors import RequestFailed

log = logging.getLogger(__name__)


class StepLoop:
    """The step loop of Engine, which inherits it (a mixin): _run is the loop task's
    coroutine. It reads what Engine's start() set up (planner, runner, device, grammars,
    metrics, ranks, the model and wait threads _executor and _waiter, _wake, _oom,
    _step_health, _step_log) and keeps the step in flight (_inflight, _prev_done,
    _host_time); it hands out tokens and ends requests through HandOut."""

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception as e:
                # a bug outside the model step must not leave every stream waiting forever:
                # fail what is in flight and go on serving new requests
                log.exception("engine loop error")
                self._step_health.failed(e)
                self._fail_all(f"engine error: {e}", RequestFailed)
                await self._settle_ranks()
                self._flush_prefix_cache()
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        """One turn of the loop: plan and launch step N+1 while step N runs on the device,
        then wait for step N and hand out its tokens. Tokens of step N that step N+1
        feeds back stay on the device (see ModelRunner); a request that step N finishes
        costs step N+1 one wasted token."""
        perf = time.perf_counter
        t0 = perf()
        self._expire_queued()
        if self._inflight is not None and self._must_wait_for(self._inflight[0]):
            await self._complete_inflight()
        step = self.planner.plan()
        if step is None and self._inflight is None:
            await self._idle()
            return
        launch = out = err = issued = None
        if step is not None:
            step.after_busy_device = self._inflight is not None
            try:
                inputs = self.runner.prepare(step, self.table)
            except Exception:
                self._undo_pending(step)
                raise
            if self.device.type == "cuda":
                # queuing kernels does not block: launch here, no thread hop
                try:
                    out = self.runner.launch(inputs)
                    issued = perf()
                except Exception as e:
                    err = e
            else:  # the CPU computes while launching: on the model thread, so the loop
                # hands out step N's tokens meanwhile
                launch = asyncio.get_running_loop().run_in_executor(
                    self._executor, _timed, self.runner.launch, inputs)
        self._host_time += perf() - t0
        if self._inflight is not None:
            await self._complete_inflight(later=step)
        if step is None:
            return
        cpu_s = None  # the CPU's model time: the launch is the computation
        if launch is not None:
            try:
                out, cpu_s = await launch
            except Exception as e:
                err = e
        if err is None and out.deferred is not None:
            # constrained rows: step N's tokens have advanced their grammars; sample now
            try:
                t_mask = perf()
                st = out.deferred[0].sampling  # None: a masked argmax, no logprobs
                mask = self.grammars.masks([r.grammar for r, s in zip(step.reqs, step.sample)
                                            if s], st is not None and st.raw_logprobs)
                t_sample = perf()
                out = self.runner.sample_deferred(out, mask)
                out.mask_host_s, out.sample_host_s = t_sample - t_mask, perf() - t_sample
            except Exception as e:
                err = e
        if err is not None:  # a failing step fails its requests, not the server
            self._step_failed(step, err)
            return
        out.turn_start, out.issued = t0, issued  # the step log's host timeline
        self._inflight = (step, out, perf(), cpu_s)

    async def _settle_ranks(self) -> None:
        """Under tensor parallelism, after an error that may have left the loop's turn
        between a constrained step's launch and its deferred sampling: wait for that launch
        (the CPU computes it on the model thread), then sample the step
        (ModelRunner.settle), whose ids the followers wait for in broadcast_ids; the next
        step's message would meet them there, every rank waiting forever. A rank that
        fails it ends the group, as a failed step does."""
        if self.ranks is None or self.ranks.lost is not None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, _nothing)
            self.runner.settle()
        except Exception as e:
            self._fail_ranks(e, f"could not sample the step the followers wait for: {e}")

    async def _idle(self) -> None:
        """No step to launch and none in flight: wait for a request (a look every 50 ms
        while the planner holds work it could not plan), then, under tensor parallelism,
        send the followers their keep-alive when it is due."""
        self._wake.clear()
        timeout = 0.05 if self.planner.has_work() else None
        tp = self.ranks.tp if self.ranks is not None and self.ranks.lost is None else None
        if tp is not None:  # the followers wait for a message: one comes in time
            timeout = tp.idle_wait() if timeout is None else min(timeout, tp.idle_wait())
        # the timeout sets the wake-up itself, not wait_for: Python 3.11's wait_for drops
        # a cancel (stop()'s) that lands in the turn the wake-up does, and stop() would
        # wait forever; nor a task to wait on, which would outlive the loop's turn
        timer = (asyncio.get_running_loop().call_later(timeout, self._wake.set)
                 if timeout is not None else None)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()
        # (no launch, the other sender of step messages, is under way here)
        if tp is not None and self.ranks.lost is None:
            try:
                tp.keep_alive()
            except Exception as e:
                from aiollm.distributed.peer_lost import peer_ended_error

                # a rank ended while this node idled (another node's: the watchdog
                # names this node's own first): as a failed step, the group cannot go
                # on; left to the loop's catch-all, it was tried again every 10 ms. A
                # peer's closed socket needs no traceback: fail() names who ended
                log.error("tensor parallel keep-alive failed: %s", e,
                          exc_info=None if peer_ended_error(e) else e)
                self._fail_ranks(e, f"keep-alive failed: {e}")

    @staticmethod
    def _must_wait_for(step: Step) -> bool:
        """Penalties read the whole token history on the host: a request with one plans its
        next step only once its pending token is back."""
        return any(r.pending and r.params.uses_penalty for r in step.reqs)

    async def _complete_inflight(self, later: Step | None = None) -> None:
        """Wait for the step in flight and hand out its tokens; `later`: the step planned
        (and launched) since, if any."""
        step, out, t_launch, cpu_s = self._inflight
        self._inflight = None
        perf = time.perf_counter
        try:
            if out.done is not None:
                # yield once per step even when the device is already done: the loop would
                # otherwise run step after step without letting streams and handlers in
                await asyncio.sleep(0)
                if not out.done.query():
                    await asyncio.get_running_loop().run_in_executor(self._waiter,
                                                                     out.done.synchronize)
        except Exception as e:
            self._step_failed(step, e, later)
            return
        t0 = perf()
        # a step of nothing but health probes is no traffic: out of the step histograms
        counted = any(r.counted for r in step.reqs)
        gap = None
        if out.done is not None:  # device time of the step, and the idle gap before it
            model_s = out.start.elapsed_time(out.done) / 1e3
            if self._prev_done is not None:
                gap = max(0.0, self._prev_done.elapsed_time(out.start) / 1e3)
                if step.after_busy_device and counted:
                    self.metrics.step_gpu_gap.observe(gap)
            self._prev_done = out.done
        else:
            model_s = cpu_s or 0.0
        if counted:
            self.metrics.step_model.observe(model_s)
            self.metrics.step_tokens.observe(step.num_tokens)
        result = out.collect()
        if result is not None:
            self._process(step, result)
        if self._step_log is not None:
            self._step_log.record(step, out, t_launch, t0, model_s if out.done else None, gap)
        self._oom.step_done()
        self._step_health.completed()
        # host time: what the loop spends around the model (planning, metadata, stop checks,
        # waking streams), counted from the plan of a step to the processing of its tokens
        if counted:
            self.metrics.step_host.observe(self._host_time + perf() - t0)
        self._host_time = 0.0

    def _undo_pending(self, step: Step) -> None:
        for r, s in zip(step.reqs, step.sample):
            if s:
                r.pending -= 1

    def _fail_ranks(self, e: Exception, error: str) -> str:
        """A collective of rank 0 failed with `e` (`error`: what it was doing and why): the
        ranks are out of step, the group cannot go on (NodeRanks.fail ends the process).
        Returns what the requests in flight are told: the lost rank or node when one is,
        not the collective's error (gloo's "Connection reset by peer ... Check the logs of
        the remote worker"), else `error`."""
        from aiollm.distributed.peer_lost import peer_ended_error

        lost = self.ranks.lost_rank(wait=0.5)
        # (a peer's closed socket; a device error is this node's own)
        if lost is None and self.ranks.cfg.nnodes > 1 and peer_ended_error(e):
            lost = self.ranks.other_node_lost(e, "while this node served")
        self.ranks.fail(lost or f"tensor parallel rank 0: {error}")
        return lost or error

    def _step_failed(self, step: Step, e: Exception, later: Step | None = None) -> None:
        """End (or, out of memory, pause) the requests of a failed step, and fail those
        that reuse the KV it was to write. `later`: the step planned since (a device step
        fails asynchronously, after the loop planned the next one); its admissions may
        reuse that KV through the prefix cache, which put the failed chunks in the tree as
        they were planned (prefix_cache.on_chunk)."""
        log.error("model step failed", exc_info=e)
        error = f"model step failed: {e}"
        if self.ranks is not None:  # the ranks are out of step now: the server cannot go on
            error = self._fail_ranks(e, error)
        self._undo_pending(step)
        # slots the later step allocated again (freed since: evicted, or of a request that
        # ended) hold its own KV, not the failed step's
        unwritten = (step.out_cache_loc if later is None
                     else np.setdiff1d(step.out_cache_loc, later.out_cache_loc))
        for r in self.planner.readers_of(unwritten, step.reqs):
            self._finish(r, "error", error=f"{error} (this request reused KV that step was to "
                         "compute for a shared prompt prefix)", failed=True,
                         error_type=RequestFailed)
        if isinstance(e, torch.OutOfMemoryError):
            # paused and resumed unless it is a request alone that nothing smaller can help:
            # that one fails, and counts toward failing as any failed step does (a device
            # with no memory left fails every request this way)
            too_large = self._oom.out_of_memory(step, e)
            if too_large is not None:
                self._step_health.failed(e)
                self._finish(too_large[0], "error", error=too_large[1], failed=True,
                             error_type=RequestFailed)
        else:
            self._step_health.failed(e)
            for r in step.reqs:
                self._finish(r, "error", error=error, failed=True,
                             error_type=RequestFailed)
        self._flush_prefix_cache()  # the step's KV went into the cache unwritten


def _nothing() -> None:
    """A job for the model thread whose end says the jobs queued before it ended."""


def _timed(fn, *args):
    """(fn(*args), its wall seconds): the CPU model thread times its own forward."""
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t
