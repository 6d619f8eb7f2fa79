"""Steps with prompt tokens, replayed as CUDA graphs between eager attention calls.

A mixed step of the 8B shape (a 1,024-token prompt among ~100 decodes) launches ~350 kernels
from Python, and on an H200 that launch took 20-40 ms of host time against ~30 ms of device
time: the device waited for the host (bench/README.md, "Serving on the H200"). Everything in
a step but attention has shapes fixed by its token count alone: embedding, norms, GEMMs,
rotary and KV store, SiLU-and-mul. Those run here as captured segments, L + 1 per token-count
bucket (LlamaForCausalLM.segment), and each layer's attention is launched eagerly between
them, since its grid follows the batch's requests and lengths. The host's part of a step
becomes L + 1 replays and L attention calls. (vLLM splits its graphs at attention too, as
"piecewise" CUDA graphs; this is our own implementation over our kernels.)

The segments read and write static buffers (SegmentIO, sized for the largest bucket). A step
of T tokens runs at the smallest bucket of at least T tokens: its padding rows embed a stale
token at a stale position and store their K/V in the pool's scratch slot, and no real row
reads them (attention covers the real tokens only; every other kernel works row by row). A
bucket is captured the first time a step needs it, a one-off pause of the pipeline, so
start-up pays nothing for buckets a workload never reaches. Without capture (the CPU) the
same segments run eagerly on the padded buffers, which is what the CPU tests check.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from aiollm.kernels import autotune
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool
from aiollm.model.llama import FUSED_MAX_TOKENS, SegmentIO

log = logging.getLogger(__name__)

# Steps above this many tokens run eagerly: their device time (~50 ms at 2,048 tokens of the
# 8B shape on an H200) hides the launch, and larger buckets cost graph memory.
MAX_TOKENS = 2048


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts the segments are captured at, ascending, up to max_tokens itself: steps
    of 16 to 256, of 32 beyond (a padding row costs its share of the GEMMs: at most 31 rows,
    under 3% of a 1,024-token step). Raises ValueError for max_tokens < 1."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    edges = list(range(16, 256, 16)) + list(range(256, max_tokens, 32))
    return [b for b in edges if b < max_tokens] + [max_tokens]


def enabled() -> bool:
    """AIOLLM_PREFILL_GRAPHS=0 turns the prefill graphs off (eager steps, for comparison)."""
    return os.environ.get("AIOLLM_PREFILL_GRAPHS", "1") != "0"


class PrefillGraphs:
    """Runs eager steps (prompt tokens, or decode batches past the decode graphs) of at most
    max_tokens tokens through the model's graph segments. forward(batch) returns what
    model.forward(batch) does: logits [B, vocab] float32."""

    def __init__(self, model: torch.nn.Module, kv_pool: KVPool, max_tokens: int = MAX_TOKENS,
                 *, capture: bool = True):
        if not model.graph_segments:
            raise ValueError("prefill graphs need a model without tensor parallelism")
        self.model = model
        self.capture = capture
        self.max_tokens = max_tokens
        self.buckets = token_buckets(max_tokens)
        self.scratch = kv_pool.scratch_slot
        cfg = model.shard_config
        dev = kv_pool.device
        dt = model.embed_tokens.weight.dtype
        T = max_tokens
        self.q_size, self.heads, self.head_dim = cfg.q_size, cfg.num_heads, cfg.head_dim
        self.io = SegmentIO(
            input_ids=torch.zeros(T, dtype=torch.int64, device=dev),
            positions=torch.zeros(T, dtype=torch.int64, device=dev),
            out_cache_loc=torch.full((T,), self.scratch, dtype=torch.int64, device=dev),
            kv_pool=kv_pool,
            qkv=torch.zeros(T, cfg.q_size + 2 * cfg.kv_size, dtype=dt, device=dev),
            o=torch.zeros(T, cfg.q_size, dtype=dt, device=dev),
            residual=torch.zeros(T, cfg.hidden_size, dtype=torch.float32, device=dev),
            x=torch.zeros(T, cfg.hidden_size, dtype=dt, device=dev))
        # bucket -> its segments' graphs; None where the capture failed (eager segments)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph] | None] = {}
        self._pool = self._stream = None

    def covers(self, batch: ForwardBatch) -> bool:
        """Whether forward() takes this batch: more tokens than the fused one-token path
        takes, at most max_tokens, and no prompt logprobs (they read every row's logits)."""
        return (FUSED_MAX_TOKENS < batch.num_tokens <= self.max_tokens
                and batch.prompt_scoring is None)

    def bucket(self, t: int) -> int:
        """The token count a step of t tokens runs at."""
        return next(b for b in self.buckets if b >= t)

    def fill_to(self, t: int) -> int:
        """Rows a step of t tokens computes: its bucket when the graphs take such a step,
        else t. The planner fills the padding with prompt tokens (Planner.fill_to)."""
        return self.bucket(t) if FUSED_MAX_TOKENS < t <= self.max_tokens else t

    def _view(self, rows: int) -> SegmentIO:
        io = self.io
        return SegmentIO(io.input_ids[:rows], io.positions[:rows], io.out_cache_loc[:rows],
                         io.kv_pool, io.qkv[:rows], io.o[:rows], io.residual[:rows],
                         io.x[:rows])

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [B, vocab] float32 of each request's last new token (model.forward's)."""
        t = batch.num_tokens
        tp = self.bucket(t)
        if self.capture and tp not in self.graphs:
            self.graphs[tp] = self._capture(tp)
        io = self.io
        io.input_ids[:t].copy_(batch.input_ids)
        io.positions[:t].copy_(batch.rotary_rows)  # the segments read positions for rotary
        io.out_cache_loc[:t].copy_(batch.out_cache_loc)
        if tp > t:  # padding rows store their K/V in the scratch slot, never a live one
            io.out_cache_loc[t:tp].fill_(self.scratch)
        view = self._view(tp)
        graphs = self.graphs.get(tp)

        def segment(k: int) -> None:
            if graphs is not None:
                graphs[k].replay()
            else:
                self.model.segment(k, view)

        q = io.qkv[:t, : self.q_size].view(t, self.heads, self.head_dim)
        o = io.o[:t].view(t, self.heads, self.head_dim)
        segment(0)
        for k, layer in enumerate(self.model.layers):
            layer.self_attn.attend(q, batch, out=o)  # the next segment reads io.o
            segment(k + 1)
        return self.model.logits(io.x[:t], io.residual[:t], batch)

    def _capture(self, rows: int) -> list[torch.cuda.CUDAGraph] | None:
        """Bucket `rows`' segments captured, or None where the capture failed: running out
        of memory mid-serving (the graphs' pool comes on top of the KV pool), or a kernel
        that cannot be captured, must not fail every step of that size, which then runs
        its segments eagerly instead."""
        t0 = time.monotonic()
        try:
            graphs = self._capture_segments(rows)
        except Exception:
            log.warning("capturing the prefill graph segments for %d tokens failed: steps "
                        "of that size run them eagerly", rows, exc_info=True)
            return None
        log.info("captured the prefill graph segments for %d tokens (%d graphs) in %.2fs",
                 rows, len(graphs), time.monotonic() - t0)
        return graphs

    def _capture_segments(self, rows: int) -> list[torch.cuda.CUDAGraph]:
        """Capture the segments on a side stream, after one eager run of each (its kernels
        compile and its cuBLAS workspace exists outside the capture). Kernel configs come
        from the committed tables (autotune.untuned), as in the decode graphs."""
        dev = self.io.qkv.device  # the engine's, which need not be the current device
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(device=dev)
        stream, view = self._stream, self._view(rows)
        main = torch.cuda.current_stream(dev)
        stream.wait_stream(main)  # the step in flight uses the buffers
        graphs = []
        try:
            with autotune.untuned(), torch.cuda.stream(stream):
                view.out_cache_loc.fill_(self.scratch)  # the runs here write only the scratch slot
                for k in range(len(self.model.layers) + 1):
                    self.model.segment(k, view)
                    g = torch.cuda.CUDAGraph()
                    g.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                    try:
                        self.model.segment(k, view)
                    finally:
                        g.capture_end()
                    graphs.append(g)
        finally:  # the step writes the buffers after the eager runs here, failed or not
            main.wait_stream(stream)
        return graphs
