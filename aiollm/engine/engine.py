"""Engine: the one object users hold. Owns the model, the KV pool, the request table and the
step loop, all on the caller's event loop. This file is its life cycle; the step loop it
inherits from StepLoop (step_loop.py), the request API from EngineAPI (engine_api.py:
generate, stream, check), ChatAPI (chat_api.py: chat, stream_chat, render_chat) and BatchAPI
(batch_api.py: generate_batch), the entry of requests from AddRequest (add_request.py), the
hand-out of a step's tokens to its requests and the ends of requests from HandOut
(hand_out.py), its counts of now and the prefix cache's flush from EngineStats
(engine_stats.py).

    async with Engine() as engine:                      # default SmolLM2-135M-Instruct
        out = await engine.generate("Hello", SamplingParams(max_tokens=32))
        async for delta in engine.stream("Hello", SamplingParams()):
            print(delta.text, end="")

The step loop runs one step ahead of the device (step_loop.py). Streams detokenize on their
own time; a stream that stops early (stop string, client gone, task cancelled) releases its
request at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time

from aiollm.config import EngineConfig, check_shutdown_timeout
from aiollm.engine.add_request import AddRequest
from aiollm.engine.batch_api import BatchAPI
from aiollm.engine.chat_api import ChatAPI
from aiollm.engine.engine_api import EngineAPI
from aiollm.engine.engine_stats import EngineStats
from aiollm.engine.grammar import Grammars
from aiollm.engine.hand_out import HandOut
from aiollm.engine.health_probe import EngineHealth, HealthProbe
from aiollm.engine.heap_trim import trim_heap
from aiollm.engine.loading import load, resolve_device
from aiollm.engine.oom import OomBackoff
from aiollm.engine.planner import Planner
from aiollm.engine.prefix_cache import PrefixCache
from aiollm.engine.refusal_log import RefusalLog
from aiollm.engine.request import Request
from aiollm.engine.request_ids import RequestIds
from aiollm.engine.step_health import StepHealth
from aiollm.engine.step_log import StepLog
from aiollm.engine.step_loop import StepLoop
from aiollm.engine.unstarted import Unstarted
from aiollm.errors import EngineStopped
from aiollm.metrics import EngineMetrics
from aiollm.weak_method import weak_method

log = logging.getLogger(__name__)

# an Overloaded (HTTP 503: a server's client may retry elsewhere or later), but one that tells
# an Engine API caller that retrying on this engine cannot help
_STOPPED = ("the engine shut down before the request finished; retry it on a running server "
            "or engine")


class Engine(EngineAPI, ChatAPI, BatchAPI, AddRequest, StepLoop, HandOut, EngineHealth,
             EngineStats, Unstarted):
    """An LLM inference engine on the caller's event loop: start() loads the model, then
    generate() / stream() / chat() serve requests concurrently until stop().

    model: an HF safetensors directory or a .gguf file (None: the default SmolLM2-135M);
    options: the other EngineConfig fields (aiollm/config.py), which raises ValueError
    naming a bad one. Request errors: InvalidRequest (bad input, naming the field),
    Overloaded (queue or table full, shutting down), EngineStopped (an Overloaded: the
    engine is stopped, a retry cannot help), RequestFailed (failed inside).

    Under tensor parallelism a lost rank fails the requests in flight (RequestFailed naming
    the rank), then ends the process with status 1, as a server should (its supervisor
    restarts it); with exit_on_lost_rank set False before start() the process goes on and
    every later request raises EngineStopped naming the rank (the offline LLM's choice)."""

    exit_on_lost_rank = True

    def __init__(self, model: str | None = None, **options):
        self._set_up(EngineConfig(model=model, **options))

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        """An engine of `config` as it is, checked when it was made: `aiollm serve` checks
        its flags' config before anything loads, and its --chat-template file (which may
        be a pipe) is read then, once. TypeError for anything but an EngineConfig."""
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        engine = cls.__new__(cls)
        engine._set_up(config)
        return engine

    def _set_up(self, config: EngineConfig) -> None:
        self.config = config
        self._started = False
        self._accepting = False
        self._loop_task: asyncio.Task | None = None
        # set while a start() or stop() runs: another one waits for it, then sees its outcome
        self._changing: asyncio.Event | None = None
        self._left_load: asyncio.Future | None = None  # a cancelled start()'s load
        self._requests: dict[int, Request] = {}
        # the calls under way by their callers' request ids (abort(request_id))
        self._request_ids = RequestIds(weak_method(self._finish))
        # SamplingParams' fields the model's generation config gives defaults (set at start)
        self.sampling_defaults: dict = {}

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the model (on a worker thread) and start the loop; a no-op once started.
        Raises what loading raises (OSError / ValueError: model or tokenizer unreadable).
        An engine whose event loop ended without stop() (asyncio.run(engine.start())) is
        stopped and started afresh on this loop. A start() while another start() or a stop()
        runs waits for it (then loads only if the engine is not running); RuntimeError from
        another event loop than the running engine's."""
        await self._after_changes()
        if self._running:
            self._check_own_loop()
            return
        if self._started:
            await self.stop()
        await self._changing_by(self._start())

    @property
    def _running(self) -> bool:
        """Whether the step loop runs: started, and its task not ended."""
        return self._started and not self._loop_task.done()

    @property
    def start_interruptible(self) -> bool:
        """Whether a start() cancelled while it loads can end before its load would: under
        tensor parallelism the rendezvous, which may wait minutes for another node, is
        given up at once and the ranks end (NodeRanks.abandon); a load of weights under
        way, and one rank's whole load, run to their end on their thread, which cannot be
        interrupted."""
        return self.config.tensor_parallel_size > 1

    @property
    def serving(self) -> bool:
        """Whether a request submitted now would be served: started, its step loop running
        (not ended by a stop(), an interrupt or the end of its event loop) and not shutting
        down or failed (a tensor-parallel rank lost). What a health probe asks."""
        return self._running and self._accepting

    async def _after_changes(self) -> None:
        """Wait until no start(), stop() or shutdown() is under way."""
        while self._changing is not None:
            await self._changing.wait()

    async def _changing_by(self, change) -> None:
        """Await `change` (start's or stop's coroutine) as the one change under way."""
        self._changing = asyncio.Event()
        try:
            await change
        finally:
            self._changing.set()
            self._changing = None

    async def _start(self) -> None:
        # loading takes seconds to minutes: keep the event loop free meanwhile
        self._event_loop = asyncio.get_running_loop()
        # the thread cannot be interrupted: a start() cancelled meanwhile (a wait_for's
        # timeout, Ctrl-C) leaves it loading, so it builds objects and writes no attribute
        # of the engine; the start() that awaits it to its end (maybe a later one) adopts them
        load, self._left_load = self._left_load, None
        starting = None  # tensor parallelism: the ranks this start() starts
        if load is None or load.get_loop() is not self._event_loop or (
                load.done() and (load.cancelled() or load.exception() is not None)):
            starting = self._node_ranks()
            load = asyncio.ensure_future(asyncio.to_thread(self._load_model, starting))
        try:
            ranks, device, loaded = await asyncio.shield(load)
        except BaseException:
            load.add_done_callback(_retrieve)
            if starting is not None:
                # ended now, not by a callback of this loop: the loop may end first (an
                # LLM's at Ctrl-C), and its ranks and group then outlived the LLM
                starting.abandon()
            else:
                # the next start() takes it over: a retry after a wait_for's timeout loaded
                # a second model beside it (twice the device memory)
                self._left_load = load
            raise
        try:
            self._adopt(ranks, device, loaded)
        except BaseException:
            if ranks is not None:
                ranks.abort()
            raise
        self._wake = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="aiollm-loop")
        self._started = True
        self._accepting = True

    def _load(self) -> None:
        """start()'s loading without the step loop, on this thread (bench/decode_step.py)."""
        self._adopt(*self._load_model())

    def _node_ranks(self):
        """The NodeRanks to start under tensor parallelism (not started), else None."""
        if self.config.tensor_parallel_size == 1:
            return None
        from aiollm.distributed import NodeRanks

        return NodeRanks(self.config, on_failure=weak_method(self._fail_all_threadsafe),
                         exit_on_failure=self.exit_on_lost_rank)

    def _load_model(self, ranks=None) -> tuple:
        """(ranks, device, Loaded): the slow part of start(), on a worker thread; `ranks`:
        the NodeRanks to start (tensor parallelism; made here when None)."""
        cfg = self.config
        device = resolve_device(cfg.device)
        ranks = ranks or self._node_ranks()
        try:
            if ranks is not None:
                device = ranks.start().device
            loaded = load(cfg, device, ranks.tp if ranks else None)
        except BaseException as e:
            if ranks is not None:  # ranks started: they must not wait
                if (lost := ranks.start_failed(e)) is not None:
                    raise lost from e
            raise
        if ranks is not None:
            ranks.loaded()  # raises, the ranks ended, when start() gave up meanwhile
        return ranks, device, loaded

    def _adopt(self, ranks, device, loaded) -> None:
        """The engine's state around what _load loaded (on the loop: quick)."""
        from aiollm.scheduler import SchedulerConfig, make_scheduler

        cfg = self.config
        self.ranks = ranks
        if ranks is not None:
            ranks.started()
        self.device, self.dtype = loaded.device, loaded.dtype
        self.model_config, self.model_path = loaded.model_config, loaded.model_path
        self.model_name, self.tokenizer = loaded.model_name, loaded.tokenizer
        self._content_specials: list[str] | None = None  # chat_prompt's, read on first use
        self.eos_ids, self.table = loaded.eos_ids, loaded.table
        # of eos_ids, the one that is no stop_reason (hand_out.py)
        self.eos_token_id = loaded.tokenizer.eos_token_id
        self.sampling_defaults = loaded.sampling_defaults
        self.runner, self.kv_pool = loaded.rank.runner, loaded.rank.kv_pool
        self.req_to_token, self.max_model_len = loaded.rank.req_to_token, loaded.rank.max_model_len
        self.scheduler = make_scheduler(cfg.scheduler, SchedulerConfig(
            max_running=cfg.max_running_requests, estimator=cfg.past_future_estimator,
            blind_cap=cfg.scheduler_blind_cap))
        self.metrics = EngineMetrics(weak_method(self.stats, {}), self.max_model_len)
        self.prefix_cache = (PrefixCache(self.kv_pool, self.req_to_token, self.metrics,
                                         long_prompts=self.runner.long_prompts)
                             if cfg.prefix_cache else None)
        self.planner = Planner(self.table, self.kv_pool, self.req_to_token, self.scheduler,
                               cfg.max_running_requests, cfg.max_prefill_tokens,
                               on_evict=self.metrics.paused,
                               on_admit=self.metrics.admitted,
                               mixed_budget=cfg.mixed_prefill_tokens,
                               prefix_cache=self.prefix_cache,
                               fill_to=getattr(self.runner.prefill_graphs, "fill_to", None))
        self.grammars = Grammars(self.tokenizer, self.model_config.vocab_size,
                                 self.eos_ids.tolist(), device, max_rows=self.planner.max_running,
                                 compile_timeout=cfg.grammar_compile_timeout,
                                 enabled=cfg.grammar_backend != "none")
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aiollm-model")
        # waits for device events, so the model thread is free to launch the next step
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aiollm-wait")
        # the step on the device now: (Step, Launched, launch time, CPU model seconds or None)
        self._inflight = None
        self._prev_done = None  # the CUDA event that ended the previous step
        self._host_time = 0.0
        self._step_log = StepLog.from_env()  # AIOLLM_STEP_LOG: bench diagnostics
        self._rng = random.Random(cfg.seed)
        # generate_batch's prompts in flight, of all batches: past the request table, or the
        # running batch and the waiting queue together (Planner.waiting_beyond_batch), they
        # got Overloaded, and so their whole batch; they wait here
        self._batch_room = asyncio.Semaphore(
            min(cfg.table_capacity, self.planner.r2t.rows + cfg.max_waiting_requests))
        self._oom = OomBackoff(self.planner, device)
        self._step_health = StepHealth()
        self._health_probe = HealthProbe(self)
        self._refusals = RefusalLog(self._event_loop)

    async def stop(self) -> None:
        """Abort everything in flight and stop the loop; a start() under way is waited for,
        then stopped, a stop() under way waited for. Cancelled (a wait_for's timeout), it
        stops the engine to the end all the same (its model threads ended), then raises the
        CancelledError. RuntimeError, changing nothing, from another event loop than the
        running engine's (its step loop can be awaited only there)."""
        if self._changing is not None and self._running:
            # a shutdown() letting its requests finish: they end now (a server's second signal)
            self._check_own_loop()
            self._fail_all(_STOPPED, EngineStopped)
        await self._after_changes()
        if not self._started:
            self._left_load = None  # what it loads is dropped once loaded
            return
        if self._running:
            self._check_own_loop()
        await self._changing_by(self._stop())

    async def _stop(self) -> None:
        # in a task of its own: the await of the step loop's end below took a cancel of
        # stop()'s caller for the step loop's own and swallowed it, and a cancel during the
        # waits for the threads left them, the ranks and the step log to a later start()
        await _to_the_end(self._stopping())

    async def _stopping(self) -> None:
        self._accepting = False
        self._fail_all(_STOPPED, EngineStopped)
        self._refusals.close()  # nothing is refused from now on: what was counted is told
        if self._loop_task and not self._loop_task.done():
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the step loop's own
                await self._loop_task
        elif self._loop_task and not self._loop_task.cancelled():
            self._loop_task.exception()  # an interrupt ended it: seen, not logged at exit
        # the model thread may be inside a forward (a long CPU prefill takes seconds): wait
        # for it off the loop, which goes on serving meanwhile (it was blocked until then)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self._waiter.shutdown, wait=True)
        self.grammars.close()  # never waits for a compilation under way
        if self.ranks is not None:
            if self.runner is not None and self.ranks.lost is None:
                try:  # a step's ids the followers wait for, before STOP
                    self.runner.settle()
                except Exception as e:  # a follower gone: STOP's own send tells
                    log.warning("could not settle the followers' last step: %s", e)
            self.ranks.stop()
        self._inflight = None
        self._release_device_memory()
        trim_heap()  # what the load and the steps freed in the C heap, back to the OS
        self._started = False
        if self._step_log is not None:
            self._step_log.write()

    def _release_device_memory(self) -> None:
        """Drop the model (its weights, graphs and buffers), the KV pool's tensors and the
        req_to_token map's: a stopped engine that its owner keeps (a closed LLM) held them,
        and a start() again loaded a second model beside them, on a GPU sizing its pool
        from the memory the old one left free. What stats() reads stays; start() loads
        afresh."""
        self.runner = None
        self.planner.fill_to = None  # the prefill graphs' (they hold the model and the pool)
        self.kv_pool.release()
        self.req_to_token.release()
        if self.device.type == "cuda":  # back to the driver: other processes, the next pool
            import torch

            torch.cuda.empty_cache()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `timeout` seconds (not
        once the step loop has ended: nothing would finish them), then abort the rest as
        stop() does (their generate() and streams raise EngineStopped).
        A start() meanwhile waits for it, then starts the engine again; a stop() aborts the
        rest now; cancelled while it waits (a wait_for's timeout), the engine serves on.
        RuntimeError, as stop() raises it, from another event loop than the running engine's;
        ValueError, changing nothing, unless `timeout` is a number of seconds >= 0 (inf: no
        limit)."""
        check_shutdown_timeout(timeout)
        if self._running:
            self._check_own_loop()
        await self._after_changes()
        # its wait is a change under way: a start() meanwhile returned at once (the engine
        # ran), and its caller's next request got EngineStopped from the stop() that followed
        await self._changing_by(self._drain(timeout))
        await self.stop()  # (takes over as the change under way before any wait)

    async def _drain(self, timeout: float) -> None:
        accepting, self._accepting = self._accepting, False
        deadline = time.monotonic() + timeout
        try:
            # a step loop that has ended (an interrupt inside it) ends none of them
            while self._requests and self._running and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            # not shut down: refusing every request ('shutting down', which clients retry)
            # for a shutdown that would never end was a dead end that start() left as it was
            self._accepting = accepting
            raise


def _retrieve(load: asyncio.Future) -> None:
    """A load whose start() was cancelled: its error is nobody's (asyncio logged it)."""
    if not load.cancelled():
        load.exception()


async def _to_the_end(coro) -> None:
    """Await `coro` in a task of its own to its end, also when the caller is cancelled
    meanwhile; that CancelledError is raised once the task has ended. Raises what the task
    raises."""
    task = asyncio.ensure_future(coro)
    cancel = None
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError as e:
            if task.done():  # the task's own (its event loop ending cancels every task)
                raise
            cancel = e
    if cancel is not None:
        raise cancel
