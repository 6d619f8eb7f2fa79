"""Step planning: which requests run in the next step, with how many tokens each.

One step mixes decodes (one token each) and prefill chunks under a token budget, so a long
prompt is prefilled over several steps while running decodes go on (chunked prefill). A
waiting request is admitted when its prefill can start in the step, not only when all of it
fits: the last one admitted takes what is left of the budget and goes on as a running
request still prefilling in the next step, so a burst of prompts fills every step.
The planner owns the running set, the waiting queue, KV allocation and eviction;
admission decisions come from the scheduler policy (aiollm.scheduler). With a prefix cache
(prefix_cache.py) it matches requests at admission (prefix_admission.py), hands it planned
prefill chunks and released KV, and counts its evictable tokens as free.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import numpy as np

from aiollm.engine.prefix_admission import cache_matches, locked_by, prefix_in_flight
from aiollm.engine.prefix_cache import PrefixCache
from aiollm.engine.request import Phase, Request
from aiollm.model.forward_batch import new_token_coords
from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.native import RequestTable, ReqState
from aiollm.scheduler import Candidates, RunningBatch, Scheduler


@dataclass(slots=True)
class Step:
    reqs: list[Request]
    input_ids: list[int]
    extend_lens: list[int]
    prefix_lens: list[int]
    out_cache_loc: np.ndarray  # [T] int64
    sample: list[bool]  # does this request's last new token produce a sampled token
    out_pos: list[int]  # for each sampled request: the output index of the token it samples
    token_coords: tuple[np.ndarray, np.ndarray]  # (row, position) of each new token
    after_busy_device: bool = False  # planned while the step before it was still running

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class Planner:
    def __init__(
        self,
        table: RequestTable,
        kv_pool: KVPool,
        req_to_token: ReqToTokenTable,
        scheduler: Scheduler,
        max_running: int,
        token_budget: int,
        on_evict=None,
        on_admit=None,
        mixed_budget: int | None = None,
        prefix_cache: PrefixCache | None = None,
        fill_to=None,
    ):
        self.table = table
        self.kv = kv_pool
        self.r2t = req_to_token
        self.scheduler = scheduler
        self.max_running = min(max_running, req_to_token.rows)
        self.token_budget = token_budget
        self.mixed_budget = mixed_budget  # most prefill tokens in a step that decodes
        # fill_to(t): the rows a step of t tokens computes (the prefill graphs pad a step to
        # its bucket); a step whose prompt tokens are capped takes more up to that count,
        # which costs no step time: those rows are computed anyway
        self.fill_to = fill_to
        self.running: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()
        # health probes (Request.counted False) waiting or running: no client's place
        self._probes = 0
        self._admit_counter = 0
        self._on_evict = on_evict
        self._on_admit = on_admit
        self.evictions = 0
        self.cache = prefix_cache

    # -- queue ---------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """Queue req last; a health probe (req.counted False) first: it checks that steps
        complete, and waits behind no client's request (as vLLM's /health queues nothing)."""
        if req.counted:
            self.waiting.append(req)
        else:
            self.waiting.appendleft(req)
            self._probes += 1

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def waiting_beyond_batch(self) -> int:
        """Waiting requests (paused ones included) beyond the running batch's free rows:
        those that truly wait, for a running request to end. The rest the next admissions
        can take without one ending (as the token budget and the KV pool let them in, over
        a step or a few), so a burst at an idle engine is not counted as a backlog. Free
        rows are counted as room even where the KV pool is what holds the queue back (paused
        requests, a Past-Future refusal), or an out-of-memory step lowered max_running for a
        while (oom.py): the queue is then bounded by both limits together, as configured, so
        that what generate_batch keeps in flight is never refused. A health probe takes no
        client's place: waiting, it is not counted; running, its row counts as free."""
        return max(len(self.waiting) - self._probes - self.r2t.n_free_rows, 0)

    def release(self, req: Request) -> None:
        """Give back everything req holds (KV slots, row, queue place). Idempotent."""
        if req.phase is Phase.RUNNING:
            self._free_kv(req)
            self.running.remove(req)
        elif req.phase in (Phase.WAITING, Phase.PAUSED):
            try:
                self.waiting.remove(req)
            except ValueError:
                return
        else:
            return
        self._probes -= not req.counted

    def readers_of(self, slots: np.ndarray, skip: list[Request]) -> list[Request]:
        """Running requests but those in `skip` whose KV (their own, or a cached prefix they
        reuse) holds any of the KV slots `slots` (int64)."""
        return [r for r in self.running if r not in skip and r.kv_len
                and np.isin(self.r2t.slots_of(r.row, 0, r.kv_len), slots).any()]

    def free_tokens(self) -> int:
        """KV slots an allocation can get: free ones and unreferenced cached ones."""
        return self.kv.n_free + (self.cache.evictable if self.cache else 0)

    def _free_kv(self, req: Request) -> None:
        if self.cache is not None:
            self.cache.release(req)
        elif req.kv_len:
            self.kv.free(self.r2t.slots_of(req.row, 0, req.kv_len))
        self.r2t.free_row(req.row)
        req.row = -1
        req.kv_len = 0
        self.table.col("kv_len")[req.slot] = 0

    def pause(self, req: Request) -> None:
        """Pause req: free its KV, keep its tokens, put it first in the queue (recomputed
        on resume, so its client sees nothing but a delay)."""
        self._free_kv(req)
        self.running.remove(req)
        req.phase = Phase.PAUSED
        self.table.col("state")[req.slot] = ReqState.PAUSED
        self.waiting.appendleft(req)
        self.evictions += 1
        if self._on_evict:
            self._on_evict(req)

    def _evict_latest(self, keep: Request | None = None) -> bool:
        victims = [r for r in self.running if r is not keep]
        if not victims:
            return False
        self.pause(max(victims, key=lambda r: r.admitted_seq))
        return True

    # -- planning ------------------------------------------------------------------------
    def plan(self) -> Step | None:
        budget = self.token_budget
        # 1. decodes first: each needs one slot; evict the latest admitted when short.
        # A request whose pending token is its last (max_tokens) has nothing left to decode.
        # One that only scores its prompt (max_tokens 0) still samples the token that ends
        # it (the table counts it as max(1, max_tokens)), so a chunk that left it one prompt
        # token makes it a decode like any other.
        def decoding(r: Request) -> bool:
            return (r.num_tokens - r.kv_len == 1
                    and len(r.output_ids) + r.pending < max(1, r.params.max_tokens))

        decodes = [r for r in self.running if decoding(r)]
        while len(decodes) > self.free_tokens():
            if not self._evict_latest():
                break
            decodes = [r for r in self.running if decoding(r)]
        decodes = decodes[:budget]
        chunks: list[tuple[Request, int]] = [(r, 1) for r in decodes]
        budget -= len(decodes)
        if decodes and self.mixed_budget is not None and self._queued() <= len(decodes):
            # the cap holds while the streams outnumber the prompts in line; in a burst (a
            # longer queue) the prompts take the full budget, as the streams are few
            budget = min(budget, self.mixed_budget)
        if self.fill_to is not None and budget > 0:
            filled = min(self.fill_to(len(decodes) + budget), self.token_budget)
            budget = max(budget, filled - len(decodes))
        taken = len(decodes)  # KV slots this step allocates
        free = self.free_tokens() - taken
        # 2. running requests still prefilling (new or resumed) continue with a chunk
        for r in self.running:
            remaining = r.num_tokens - r.kv_len
            if remaining > 1:
                n = min(remaining, budget, free)
                if n > 0:
                    chunks.append((r, n))
                    budget -= n
                    free -= n
                    taken += n
        # 3. admission of waiting requests, as the scheduler policy allows: each starts
        # within the budget (the last may get a first chunk only: 2. goes on with it)
        if self.waiting and budget > 0 and len(self.running) < self.max_running:
            admitted = self._admit(budget, free, chunks)
            # a cache hit locks cached tokens that counted as free (evictable) before
            free = self.free_tokens() - taken
            for r in admitted:
                n = min(r.num_tokens - r.kv_len, budget, free)
                if n <= 0:  # no free slot left (the budget covers every admitted one)
                    break
                chunks.append((r, n))
                budget -= n
                free -= n
        if not chunks:
            # everything running is stuck mid-prefill with the pool full: make room
            stuck = any(r.num_tokens - r.kv_len > 1 for r in self.running)
            if stuck and self.free_tokens() == 0 and self._evict_latest():
                return self.plan()
            return None
        return self._build(chunks)

    def _queued(self) -> int:
        """Requests whose prompt is not all in the KV cache: waiting, or admitted mid-prefill."""
        return len(self.waiting) + sum(1 for r in self.running if r.num_tokens - r.kv_len > 1)

    def _admit(self, budget: int, free: int,
               chunks: list[tuple[Request, int]]) -> list[Request]:
        """Admit what the scheduler allows of the waiting queue, given this step's planned
        chunks of running requests and the budget and free slots they leave (tokens)."""
        tab = self.table
        run_slots, running = self._running_batch(chunks)
        if len(run_slots):  # the scheduler's view, kept in the table for metrics and debugging
            tab.col("predicted_output_len")[run_slots] = self.scheduler.predict(
                running.output_len, running.max_new_tokens, running.ignore_eos)
        limit = min(len(self.waiting), self.max_running - len(self.running), self.r2t.n_free_rows)
        head = [self.waiting[i] for i in range(limit)]
        matches = cache_matches(self.cache, head, budget)
        head = head[:len(matches)]
        cand_slots = np.fromiter((r.slot for r in head), np.int32, len(head))
        crec = tab.gather_fields(("output_len", "max_new_tokens", "ignore_eos"), cand_slots)
        new_tokens = [r.num_tokens - (m[1] if m else 0) for r, m in zip(head, matches)]
        locked = locked_by(self.cache, matches)
        cands = Candidates(prompt_len=np.array(new_tokens, np.int64),
                           output_len=crec["output_len"], max_new_tokens=crec["max_new_tokens"],
                           ignore_eos=crec["ignore_eos"].astype(bool),
                           locked=np.array(locked, np.int64))
        n = self.scheduler.admit(running, cands, pool_capacity=self.kv.capacity,
                                 pool_free=free, prefill_budget=budget)
        admitted = []
        now = time.monotonic()
        taken = self.free_tokens() - free  # by this step's decodes and chunks
        prefilling = [r for r in self.running if r.num_tokens - r.kv_len > 1] if n else []
        for r, m in zip(head[:n], matches):
            if m is not None and prefix_in_flight(self.cache, r, m[1], prefilling):
                break  # another request computes more of its prefix now: reuse it next step
            if m is not None and self.free_tokens() - self.cache.tree.unreferenced(m[0]) <= taken:
                # its hit would lock cached tokens this step's chunks are counting on, or
                # leave no slot for a token of its own: admitted, it would only be paused
                # again (plan()'s stuck case), then admitted again, for ever
                break
            self.waiting.popleft()
            r.row = self.r2t.alloc_row()
            assert r.row is not None
            r.phase = Phase.RUNNING
            r.admitted_seq = self._admit_counter
            self._admit_counter += 1
            tab[r.slot]["state"] = ReqState.RUNNING
            tab[r.slot]["req_row"] = r.row
            if self.cache is not None:
                self.cache.admit(r, m)
                tab.col("kv_len")[r.slot] = r.kv_len
            self.running.append(r)
            admitted.append(r)
            if r.num_tokens - r.kv_len > 1:
                prefilling.append(r)
            if self._on_admit:
                self._on_admit(r, now)
        return admitted

    def _running_batch(self, chunks: list[tuple[Request, int]]
                       ) -> tuple[np.ndarray, RunningBatch]:
        """(table slots, the scheduler's view) of the running requests, given the chunks
        planned for them in the coming step (none between steps)."""
        n_run = len(self.running)
        run_slots = np.fromiter((r.slot for r in self.running), np.int32, n_run)
        rec = self.table.gather_fields(("output_len", "max_new_tokens", "ignore_eos"),
                                       run_slots)
        # a running request holds (or is about to hold, mid-prefill) KV for all its tokens;
        # its cached prefix is the tree's (shared, held outside the batch: counted once)
        held = np.fromiter((r.num_tokens - r.cache_len for r in self.running), np.int64, n_run)
        # prefill tokens each has left after its chunk of this step: it starts decoding up
        # to that many steps late (aiollm/scheduler/batch.py). A single token left (its last
        # prompt token or its pending one) is a decode.
        planned = {r.slot: n for r, n in chunks}
        left = np.fromiter((max(r.num_tokens - r.kv_len - planned.get(r.slot, 0), 0)
                            if r.num_tokens - r.kv_len > 1 else 0 for r in self.running),
                           np.int64, n_run)
        return run_slots, RunningBatch(kv_len=held, output_len=rec["output_len"],
                                       max_new_tokens=rec["max_new_tokens"],
                                       ignore_eos=rec["ignore_eos"].astype(bool),
                                       prefill_left=left)

    def predicted_peak(self) -> int:
        """KV tokens the pool is predicted to hold at its fullest while the running requests
        finish, none admitted meanwhile (the scheduler's prediction of their lengths,
        Scheduler.predicted_peak): the peak of what they hold of their own, plus what is held
        outside them (cached prefixes in use) counted as held to the end, as admission counts
        it. 0 with nothing running.

        Each request is taken as admission takes a candidate: it holds the KV of all its
        tokens but the newest (which the next step writes) and has generated its pending
        tokens too (sampled, not yet handed out), so that it ends holding its prompt and
        every output token but the last; one whose last token is sampled holds what it will
        hold. (Admission's view of the running batch, read as it
        plans, counts each request one token over, plus its pending one: a conservative
        margin there, an overstatement here, read between steps.)"""
        if not self.running:
            return 0
        _, running = self._running_batch([])
        pending = np.fromiter((r.pending for r in self.running), np.int64, len(self.running))
        g = running.output_len.astype(np.int64) + pending
        # its last token sampled, a request holds now all it will hold: one step left, the
        # one that ends it (the scheduler's predictions run at least one token past g)
        done = g >= running.max_new_tokens
        running.output_len = np.where(done, running.max_new_tokens - 1, g)
        running.kv_len = np.maximum(running.kv_len - 1 - done, 0)
        own_now = sum(max(r.kv_len - r.cache_len, 0) for r in self.running)
        used = self.kv.n_used - (self.cache.evictable if self.cache else 0)
        return max(used - own_now, 0) + self.scheduler.predicted_peak(running)

    def _build(self, chunks: list[tuple[Request, int]]) -> Step:
        total = sum(n for _, n in chunks)
        if self.cache is not None and total > self.kv.n_free:
            self.cache.evict(total - self.kv.n_free)
        slots = self.kv.alloc(total)
        assert slots is not None, "planner allocated past the free KV slots"
        slots = slots.numpy()
        reqs, input_ids, ext, pre, sample, out_pos = [], [], [], [], [], []
        for r, n in chunks:
            start = r.kv_len
            input_ids.extend(r.token_at(start, start + n))
            reqs.append(r)
            ext.append(n)
            pre.append(start)
            sampled = start + n == r.num_tokens
            sample.append(sampled)
            if sampled:  # its token stays pending until the step's results are processed
                out_pos.append(r.num_tokens - len(r.prompt_ids))
                r.pending += 1
                r.pending_row = len(out_pos) - 1
            r.kv_len = start + n
        # (row, position) of every new token, for the req_to_token map
        coords = new_token_coords(np.fromiter((r.row for r in reqs), np.int64, len(reqs)),
                                  pre, ext)
        self.r2t.write_cpu(*coords, slots)
        kv_col = self.table.col("kv_len")
        for r in reqs:
            kv_col[r.slot] = r.kv_len
        if self.cache is not None:
            for r, n in chunks:
                if n > 1:  # prefill chunks; decoded tokens go in when the request ends
                    self.cache.on_chunk(r)
        return Step(reqs, input_ids, ext, pre, slots, sample, out_pos, coords)
