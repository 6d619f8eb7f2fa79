"""CUDA graphs for decode steps: one graph per batch-size bucket, sharing one memory pool.

A decode step of a small model is mostly launch overhead: hundreds of small kernels at a
few microseconds each. Replaying a captured graph launches them all at once. Graphs are
captured for buckets of batch sizes up to a maximum; a batch is padded up to its bucket
(padding rows write their KV to the pool's scratch slot and attend to one token), and
prefill or larger batches run eagerly.
"""

from __future__ import annotations

import logging
import time

import torch

from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable

log = logging.getLogger(__name__)


def batch_buckets(max_bs: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b < max_bs]
    return small + list(range(16, max_bs, 16)) + [max_bs]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_pool: KVPool, r2t: ReqToTokenTable,
                 max_bs: int, max_seq_len: int):
        self.model = model
        self.kv_pool = kv_pool
        self.max_bs = max_bs
        self.max_seq_len = max_seq_len
        self.buckets = batch_buckets(max_bs)
        dev = kv_pool.device
        n = max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.full((n,), kv_pool.scratch_slot, dtype=torch.int64, device=dev)
        self.req_rows = torch.zeros(n, dtype=torch.int32, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.prefix_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.extend_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.q_start_loc = torch.arange(n, dtype=torch.int32, device=dev)
        self.logits_index = torch.arange(n, dtype=torch.int64, device=dev)
        self.r2t = r2t
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._capture()

    def _static_batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs], req_rows=self.req_rows[:bs],
            prefix_lens=self.prefix_lens[:bs], extend_lens=self.extend_lens[:bs],
            seq_lens=self.seq_lens[:bs], q_start_loc=self.q_start_loc[:bs],
            logits_index=self.logits_index[:bs], is_decode=True, max_extend_len=1,
            max_seq_len=self.max_seq_len, req_to_token=self.r2t.table, kv_pool=self.kv_pool)

    @torch.inference_mode()
    def _capture(self) -> None:
        t0 = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        # largest first, so smaller graphs reuse the pool's blocks
        for bs in reversed(self.buckets):
            fb = self._static_batch(bs)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile / autotune every kernel outside the capture
                    self.model.forward(fb)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, stream=stream):
                out = self.model.forward(fb)
            self.graphs[bs] = (g, out)
        torch.cuda.synchronize()
        log.info("captured %d decode CUDA graphs (batch <= %d) in %.1fs", len(self.graphs),
                 self.max_bs, time.monotonic() - t0)

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.is_decode and fb.batch_size <= self.max_bs

    def run(self, fb: ForwardBatch) -> torch.Tensor:
        b = fb.batch_size
        bs = next(x for x in self.buckets if x >= b)
        self.input_ids[:b].copy_(fb.input_ids)
        self.positions[:b].copy_(fb.positions)
        self.out_cache_loc[:b].copy_(fb.out_cache_loc)
        self.req_rows[:b].copy_(fb.req_rows)
        self.seq_lens[:b].copy_(fb.seq_lens)
        self.prefix_lens[:b].copy_(fb.prefix_lens)
        if bs > b:  # padding rows: harmless one-token attention, KV written to scratch
            self.out_cache_loc[b:bs].fill_(self.kv_pool.scratch_slot)
            self.seq_lens[b:bs].fill_(1)
            self.prefix_lens[b:bs].fill_(0)
            self.positions[b:bs].fill_(0)
        g, out = self.graphs[bs]
        g.replay()
        return out[:b]
