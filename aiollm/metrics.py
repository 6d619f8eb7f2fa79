"""Prometheus metrics of one engine, on a registry of its own (several engines per process,
as in tests, do not collide)."""

from __future__ import annotations

import gc
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                    1.0, 2.0, 5.0, 10.0, 30.0)


class EngineMetrics:
    def __init__(self, stats: Callable[[], dict[str, int]]):
        r = self.registry = CollectorRegistry()
        p = "aiollm_"
        gauges = {
            "running": Gauge(p + "requests_running", "Requests holding KV and decoding", registry=r),
            "waiting": Gauge(p + "requests_waiting", "Requests queued for admission", registry=r),
            "kv_used": Gauge(p + "kv_tokens_used", "KV pool slots held by requests (the "
                             "prefix cache's unused part counts as free)", registry=r),
            "kv_total": Gauge(p + "kv_tokens_total", "KV pool capacity in tokens", registry=r),
            "kv_cached": Gauge(p + "prefix_cache_tokens", "KV slots held by the prefix cache "
                               "(shared prefixes of running requests and reusable ones)",
                               registry=r),
            # every request holds one from submission to its end (waiting, paused and
            # finishing ones too): a count that stays up on an idle server is a leak, and a
            # full table refuses requests with 503
            "table_used": Gauge(p + "request_table_slots_used", "Request table slots held by "
                                "requests (running, waiting, paused)", registry=r),
            "table_total": Gauge(p + "request_table_slots_total", "Request table capacity",
                                 registry=r),
        }
        # gauges read the engine when scraped, so the hot path never updates them
        for key, g in gauges.items():
            g.set_function(lambda key=key: stats()[key])
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
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
        # every request's end counts: finished, aborted (a client gone) or failed
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to the end of a "
                             "request", buckets=_LATENCY_BUCKETS + (60.0, 120.0, 300.0),
                             registry=r)
        self.queue_time = Histogram(p + "queue_time_seconds", "Arrival to admission",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(p + "gc_pause_seconds", "Python garbage collections while "
                                  "serving: each stalls the event loop and every stream",
                                  ["generation"], buckets=step_buckets, registry=r)
        self._gc_start = 0.0

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
