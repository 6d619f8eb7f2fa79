"""EngineStats: the Engine's counts of now, as its owner and the HTTP edge read them (GET
/metrics' gauges, /load, LightLLM's /token_load, `aiollm serve`'s start-up line), the
scheduler's predicted KV peak, and the emptying of the prefix cache (POST /flush_cache,
LLM.reset_prefix_cache). None of it changes what the step loop does; it reads the planner,
the KV pool, the request table and the prefix cache the engine set up at start.
"""

from __future__ import annotations


class EngineStats:
    """Counts and the prefix cache's flush, for Engine, which inherits them (a mixin with
    no state of its own). It reads what Engine's start() set up (planner, kv_pool, table,
    prefix_cache) and checks through AddRequest's _check_started and _check_own_loop."""

    def stats(self) -> dict[str, int]:
        """Counts of now. running, waiting: the clients' requests admitted and queued (a
        health probe is none); kv_used: KV slots held by requests (their shared cached
        prefixes included); kv_cached: slots the prefix cache holds, kv_evictable the part
        of them no request uses (free for allocation; an idle engine has kv_used 0).
        RuntimeError before the engine was first started (nothing is counted yet)."""
        self._check_started()
        evictable = self.prefix_cache.evictable if self.prefix_cache else 0
        # the clients' requests: a health probe (Request.counted False) is none, as it is
        # none of the request metrics; its KV and table slot are held all the same
        return {
            "running": sum(r.counted for r in self.planner.running),
            "waiting": sum(r.counted for r in self.planner.waiting),
            "kv_used": self.kv_pool.n_used - evictable,
            "kv_evictable": evictable,
            "kv_total": self.kv_pool.capacity,
            "table_used": self.table.n_used,
            "table_total": self.table.capacity,
            "evictions": self.planner.evictions,
            "kv_cached": self.prefix_cache.size if self.prefix_cache else 0,
        }

    def predicted_kv_peak(self) -> int:
        """The most KV slots the running requests are predicted to hold at once as they
        finish, none admitted meanwhile (Planner.predicted_peak; 0 with none running).
        RuntimeError before the engine was first started."""
        self._check_started()
        return self.planner.predicted_peak()

    def flush_cache(self) -> int:
        """Empty the prefix cache of what no request uses; returns the KV slots freed.
        RuntimeError before the engine was first started, or from another thread or event
        loop than its running one's."""
        self._check_started()
        self._check_own_loop()
        return self._flush_prefix_cache()

    def _flush_prefix_cache(self) -> int:
        """flush_cache without its caller's checks: the step loop's own recovery."""
        return self.prefix_cache.flush() if self.prefix_cache else 0
