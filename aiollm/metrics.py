"""Prometheus metrics of one engine, on a registry of its own (several engines per process,
as in tests, do not collide)."""

from __future__ import annotations

import gc
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

_P = "aiollm_"

# Engine.stats()' keys: the gauge of each, read when scraped
_GAUGES = {
    "running": (_P + "requests_running", "Requests holding KV and decoding"),
    "waiting": (_P + "requests_waiting", "Requests queued for admission"),
    "kv_used": (_P + "kv_tokens_used", "KV pool slots held by requests (the prefix cache's "
                "unused part counts as free)"),
    "kv_total": (_P + "kv_tokens_total", "KV pool capacity in tokens"),
    "kv_cached": (_P + "prefix_cache_tokens", "KV slots held by the prefix cache (shared "
                  "prefixes of running requests and reusable ones)"),
    # every request holds one from submission to its end (waiting, paused and finishing
    # ones too): a count that stays up on an idle server is a leak, and a full table
    # refuses requests with 503
    "table_used": (_P + "request_table_slots_used", "Request table slots held by requests "
                   "(running, waiting, paused)"),
    "table_total": (_P + "request_table_slots_total", "Request table capacity"),
}

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                    1.0, 2.0, 5.0, 10.0, 30.0)
# a whole request's times (end to end, its phases): minutes too
_REQUEST_BUCKETS = _LATENCY_BUCKETS + (60.0, 120.0, 300.0)


def one_two_five(limit: int) -> tuple[int, ...]:
    """Bucket bounds 1, 2, 5, 10, 20, 50, ... up to `limit` (a token count), the bounds vLLM
    gives its per-request token histograms."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


class EngineMetrics:
    """The metrics of one engine. `stats`: a callable giving the counts the gauges report
    when scraped (Engine.stats' keys); a key it lacks reads 0 (the engine's own passes a
    weak_method, which gives {} once the engine is gone). max_model_len: the largest token
    count the per-request token histograms bound."""

    def __init__(self, stats: Callable[[], dict[str, int]], max_model_len: int = 8192):
        r = self.registry = CollectorRegistry()
        p = _P
        # gauges read the engine when scraped, so the hot path never updates them
        r.register(_Counts(stats))
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed (each "
                                     "request's, once its prefill is done)", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter(p + "requests_finished", "Finished requests", ["finish_reason"],
                                registry=r)
        self.evictions = Counter(p + "evictions", "Requests paused to free KV (resumed later)",
                                 registry=r)
        self.queried = Counter(p + "prefix_cache_queried_tokens", "Prompt tokens looked up "
                               "in the prefix cache", registry=r)
        self.hit = Counter(p + "prefix_cache_hit_tokens", "Prompt tokens whose KV the prefix "
                           "cache held", registry=r)
        self.evicted = Counter(p + "prefix_cache_evicted_tokens", "Cached tokens evicted to "
                               "make room", registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between output tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        step_buckets = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)
        self.step_host = Histogram(p + "step_host_seconds", "Loop time per step outside the model "
                                   "(planning, batch metadata, stop checks, waking streams)",
                                   buckets=step_buckets, registry=r)
        self.step_model = Histogram(p + "step_model_seconds", "Model time per step (forward, "
                                    "sampling, the copy of sampled ids back; device time on a GPU)",
                                    buckets=step_buckets, registry=r)
        self.step_gpu_gap = Histogram(p + "step_gpu_gap_seconds", "Device idle time between "
                                      "a step and the next one planned while it ran (GPU only)",
                                      buckets=(1e-6, 5e-6, 1e-5, 2e-5, 5e-5) + step_buckets,
                                      registry=r)
        # every request's end counts: finished, aborted (a client gone) or failed (error)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to the end of a "
                             "request", buckets=_REQUEST_BUCKETS,
                             registry=r)
        token_buckets = one_two_five(max(1, max_model_len))
        self.request_prompt = Histogram(p + "request_prompt_tokens", "Prompt tokens of each "
                                        "ended request", buckets=token_buckets, registry=r)
        self.request_generation = Histogram(p + "request_generation_tokens", "Tokens generated "
                                            "by each ended request", buckets=token_buckets,
                                            registry=r)
        self.queue_time = Histogram(p + "queue_time_seconds", "Arrival to admission",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        # each ended request's phases, as vLLM splits them (its RequestStateStats): pauses
        # to free KV count in the phase they fall in; requests without a token have none
        self.prefill_time = Histogram(p + "request_prefill_time_seconds", "First admission "
                                      "to first token of each ended request",
                                      buckets=_REQUEST_BUCKETS, registry=r)
        self.decode_time = Histogram(p + "request_decode_time_seconds", "First token to last "
                                     "token of each ended request", buckets=_REQUEST_BUCKETS,
                                     registry=r)
        self.inference_time = Histogram(p + "request_inference_time_seconds", "First admission "
                                        "to last token of each ended request",
                                        buckets=_REQUEST_BUCKETS, registry=r)
        self.prefill_token_time = Histogram(p + "request_prefill_time_per_token_seconds",
                                            "Prefill time of each ended request over its "
                                            "prompt tokens", buckets=(0.001, 0.002, 0.005, 0.01,
                                                                      0.02, 0.05, 0.1, 0.2, 0.5,
                                                                      1.0), registry=r)
        # an API request's choices as a whole (vLLM's parent request), measured once each
        # with vLLM's bounds: its n, the most tokens one of its choices generated
        self.request_n = Histogram(p + "request_n", "n of each request (a prompt and its "
                                   "choices) once its choices ended, none aborted",
                                   buckets=(1, 2, 5, 10, 20), registry=r)
        self.request_max_generation = Histogram(p + "request_max_generation_tokens", "The "
                                                "most tokens one choice of each request "
                                                "generated", buckets=token_buckets, registry=r)
        self.request_kv_computed = Histogram(p + "request_prefill_kv_computed_tokens",
                                             "Prompt tokens each ended request computed in its "
                                             "prefill (the prefix cache's left out), once it "
                                             "got a token",
                                             buckets=token_buckets, registry=r)
        self.request_time_per_output_token = Histogram(
            p + "request_time_per_output_token_seconds", "Decode time of each ended request "
            "over its tokens after the first (of 2 tokens or more)", buckets=_LATENCY_BUCKETS,
            registry=r)
        # each request's prompt once its prefill is done, split as vLLM splits it (no KV
        # comes from another instance here)
        self.prompt_by_source = Counter(p + "prompt_tokens_by_source", "Prompt tokens "
                                        "processed, by where their KV came from",
                                        ["source"], registry=r)
        self.prompt_computed, self.prompt_hit, _ = (
            self.prompt_by_source.labels(source)
            for source in ("local_compute", "local_cache_hit", "external_kv_transfer"))
        self.prompt_cached = Counter(p + "prompt_tokens_cached", "Prompt tokens processed "
                                     "whose KV the prefix cache held", registry=r)
        self.request_max_tokens = Histogram(p + "request_max_tokens", "max_tokens of each "
                                            "ended request (the rest of the context when it "
                                            "set none)", buckets=token_buckets, registry=r)
        self.step_tokens = Histogram(p + "step_tokens", "Tokens computed per step (prompt "
                                     "tokens prefilled and tokens decoded)",
                                     buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                              8192, 16384), registry=r)
        self.gc_pause = Histogram(p + "gc_pause_seconds", "Python garbage collections while "
                                  "serving: each stalls the event loop and every stream",
                                  ["generation"], buckets=step_buckets, registry=r)
        self._gc_start = 0.0

    def admitted(self, req, now: float) -> None:
        """A request admitted at `now` (time.monotonic()): its wait in the queue, counted
        at its first admission only (not a paused request's resumption, also one paused
        before its first token) and not for a health probe's."""
        if req.first_admitted < 0:
            req.first_admitted = now
            if req.counted:
                self.queue_time.observe(now - req.arrival)

    def prefilled(self, req) -> None:
        """A client's request whose prefill is done (its first token sampled): its prompt
        tokens processed, counted once (not again after a pause), split by where their KV
        came from: the sources add up to the prompt. (vLLM also counts as a cache hit the
        last token of a prompt found whole in its cache, which it computes all the same;
        the cache here gives no prompt's last token, and a match one token short of the
        prompt does not say whether that token was cached.)"""
        prompt, cached = len(req.prompt_ids), max(req.cached_tokens, 0)
        self.prompt_tokens.inc(prompt)
        self.prompt_cached.inc(cached)
        self.prompt_computed.inc(prompt - cached)
        self.prompt_hit.inc(cached)

    def ended(self, req, reason: str, now: float) -> None:
        """A client's request ended at `now` (time.monotonic()) with finish `reason`: stop
        or length (finished), abort (cancelled, stopped or refused) or error (the engine
        failed it)."""
        self.requests.labels(reason).inc()
        self.e2e.observe(now - req.arrival)
        generated = len(req.output_ids)
        self.request_prompt.observe(len(req.prompt_ids))
        self.request_generation.observe(generated)
        if req.params.max_tokens:  # resolved at submission; 0: prompt scoring, no output
            self.request_max_tokens.observe(req.params.max_tokens)
        if req.t_first_ns and req.first_admitted >= 0:
            first, last = req.t_first_ns / 1e9, req.t_last_ns / 1e9
            prefill = first - req.first_admitted
            self.prefill_time.observe(prefill)
            self.prefill_token_time.observe(prefill / max(1, len(req.prompt_ids)))
            self.decode_time.observe(last - first)
            self.inference_time.observe(last - req.first_admitted)
            self.request_kv_computed.observe(len(req.prompt_ids) - max(req.cached_tokens, 0))
            if generated > 1:
                self.request_time_per_output_token.observe((last - first) / (generated - 1))
        # the request's choices as a whole, once (vLLM's parent request): not when one was
        # aborted, as vLLM measures only requests its engine ended
        group = req.group
        if group is None:
            if reason != "abort":
                self.request_n.observe(1)
                self.request_max_generation.observe(generated)
        elif group.ended(generated, reason == "abort"):
            self.request_n.observe(group.n)
            self.request_max_generation.observe(group.most)

    def paused(self, req) -> None:
        """A request paused to free KV (resumed later)."""
        self.evictions.inc()

    def _on_gc(self, phase: str, info: dict) -> None:
        # a collection can start at any depth of the stack, also a few frames short of the
        # recursion limit (a deeply nested request body being decoded): this callback's own
        # calls then overflow it, and Python reports the RecursionError as unraisable on
        # stderr; that collection goes untimed instead
        try:
            if phase == "start":
                self._gc_start = time.perf_counter()
            else:
                self.gc_pause.labels(str(info["generation"])).observe(
                    time.perf_counter() - self._gc_start)
        except RecursionError:
            pass

    def watch_gc(self, on: bool = True) -> None:
        """Time every garbage collection from now on (off again with on=False)."""
        if on and self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        elif not on and self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)


class _Counts:
    """The gauges of _GAUGES, one stats() call per scrape. A collector of its own, not
    Gauge.set_function: each such gauge is a reference cycle (prometheus_client binds the
    function to the gauge), which outlived a stopped engine until Python's collector ran."""

    def __init__(self, stats: Callable[[], dict[str, int]]):
        self._stats = stats

    def describe(self):
        return [GaugeMetricFamily(name, doc) for name, doc in _GAUGES.values()]

    def collect(self):
        counts = self._stats()
        for key, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=counts.get(key, 0))
