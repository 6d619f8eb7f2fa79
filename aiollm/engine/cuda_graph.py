"""Decode steps from static buffers, replayed as CUDA graphs: one graph per batch-size bucket,
sharing one memory pool.

A decode step of a small model is mostly launch overhead: hundreds of small kernels at a
few microseconds each, plus the host's own work to feed them. A captured graph launches
them all at once, and it captures more than the forward pass, so the host's part of a decode
step is one copy in and one replay (a greedy step's result comes back with no copy):

- the inputs arrive in one host-to-device copy, packed as [4, bs] int64 rows (input ids,
  positions, KV slots, req_to_token rows) from a page-locked staging buffer;
- an input id -(i + 1) is the token the previous step sampled for its i-th sampled row (the
  overlapped loop plans a step before the last one's ids are on the host): the graph reads it
  from `prev_ids`, which every step leaves its sampled ids in;
- the graph writes the new tokens' slots into the device req_to_token map;
- after the forward pass it takes each row's argmax and whether its logits are all finite,
  packed as [2, bs] int64, and leaves the argmax in `prev_ids` for the next step. It also
  writes them into a page-locked host buffer (`results`, one row per staging turn; the
  staged inputs carry the turn after their [4, bs] rows), so a greedy step's result needs no
  copy back: the host reads `host_result()` once the step's event has completed.

Batch 1 gets a second graph, the same step sized for contexts up to SHORT_CONTEXT tokens,
when the engine's longest context is longer and the model runs a kernel in such a step that
it does not in a longer one (model.short_context_step: the fused attention + o_proj, where
it is enabled for the shape, kernels/attention_oproj.py); it is replayed when the request's
context fits it.

A batch is padded up to its bucket: padding rows read and write the req_to_token table's
padding row and the KV pool's scratch slot. Buckets are few (batch_buckets): a padding row
costs little next to the weights every step reads, and each graph costs start-up time.
Prefill and larger batches run eagerly. Without capture (the CPU) the same step function
runs eagerly on exactly the batch, no padding, so
the CPU test suite exercises what the graphs replay.
"""

from __future__ import annotations

import logging
import time

import torch

from aiollm.kernels import attention_oproj, autotune
from aiollm.kernels.decode_io import FIELDS, decode_inputs, greedy_pick
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool, ReqToTokenTable

log = logging.getLogger(__name__)

# staging buffers and result rows in turn: a turn is reused three stages later, when its
# step has completed and been collected (the loop stages a step only after collecting the
# step two before it)
STAGING = 3
# Batch 1's second graph serves contexts up to this many tokens (attention_oproj's limit)
SHORT_CONTEXT = attention_oproj.MAX_SEQ_LEN


def batch_buckets(max_bs: int) -> list[int]:
    """The batch sizes decode graphs are captured at, ascending, up to max_bs itself.

    Powers of two to 16, then steps of 16 to 64 and of 32 beyond: 14 graphs up to 256,
    against 20 in steps of 16. A decode step reads every weight once whatever its batch, and
    a padding row adds only its own share of the small kernels (norms, rotary, a one-token
    attention, its logits row); GEMMs of 64-256 rows run in row tiles, so a few more rows
    within a tile cost little (bench/README.md, "Start-up on the GPU": decode at padded
    batches within run-to-run noise). With every kernel compiled, 14 graphs of the 8B shape
    took 2.0 s on an H200 and 20 took 1.9 s; what a cold start pays for is the kernel
    variants that new batch sizes compile, kept to one per config (decode_io, decode_attention).
    """
    if max_bs < 1:
        raise ValueError(f"max_bs must be >= 1, got {max_bs}")
    edges = [1, 2, 4, 8, 16, 32, 48, 64] + list(range(96, max_bs, 32))
    return [b for b in edges if b < max_bs] + [max_bs]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_pool: KVPool, r2t: ReqToTokenTable,
                 prev_ids: torch.Tensor, max_bs: int, *, capture: bool = True):
        self.model = model
        self.kv_pool = kv_pool
        self.r2t = r2t
        self.prev_ids = prev_ids  # [>= max_bs] int64: the last step's sampled ids
        self.max_bs = max_bs
        self.capture = capture
        self.pad = capture  # pad batches up to their bucket (a test pads without capture)
        self.buckets = batch_buckets(max_bs)
        dev = kv_pool.device
        # the packed inputs, then the step's turn (which row of `results` its graph writes)
        self.inp = torch.zeros(FIELDS * max_bs + 1, dtype=torch.int64, device=dev)
        pin = dev.type == "cuda"
        self._stage = [torch.zeros(FIELDS * max_bs + 1, dtype=torch.int64, pin_memory=pin)
                       for _ in range(STAGING)]
        self._stage_np = [t.numpy() for t in self._stage]
        self.results = torch.zeros((STAGING, 2 * max_bs), dtype=torch.int64, pin_memory=pin)
        self._turn = 0
        self._staged_turn = 0
        self._ones = torch.ones(max_bs, dtype=torch.int32, device=dev)
        self._arange32 = torch.arange(max_bs, dtype=torch.int32, device=dev)
        self._arange64 = torch.arange(max_bs, dtype=torch.int64, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # batch 1 at contexts up to short_len (None: no second graph); whether the batch
        # staged last takes it (stage() and run() alternate: the engine launches each step
        # right after preparing it)
        self.short_len = (SHORT_CONTEXT if capture and r2t.max_len > SHORT_CONTEXT
                          and model.short_context_step(SHORT_CONTEXT) else None)
        self.short_graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        self._short = False
        if capture:
            self._capture()

    def bucket(self, b: int) -> int:
        """The batch size a batch of b requests runs at (b itself without padding)."""
        if not self.pad:
            return b
        return next(x for x in self.buckets if x >= b)

    def stage(self, b: int, input_ids, positions, out_cache_loc, req_rows) -> int:
        """Queue the copy of a decode batch's inputs (b requests) into the static buffer;
        returns the bucket it runs at. The copy is ordered on the stream after the step
        running now, which may still read the buffer."""
        bs = self.bucket(b)
        turn = self._staged_turn = self._turn
        buf, arr = self._stage[turn], self._stage_np[turn]
        self._turn = (turn + 1) % STAGING
        v = arr[: FIELDS * bs].reshape(FIELDS, bs)
        v[0, :b] = input_ids
        v[1, :b] = positions
        v[2, :b] = out_cache_loc
        v[3, :b] = req_rows
        self._pad(v, b)
        arr[FIELDS * bs] = turn
        self._short = bs == 1 and self.short_len is not None and int(v[1, 0]) < self.short_len
        self.inp[: FIELDS * bs + 1].copy_(buf[: FIELDS * bs + 1], non_blocking=True)
        return bs

    def host_result(self, bs: int) -> torch.Tensor:
        """The staged step's [2 * bs] int64 result (argmaxes, then non-finite flags) in host
        memory, written by its graph: valid once the step has completed, until the step
        STAGING stages later runs."""
        return self.results[self._staged_turn, : 2 * bs]

    def _pad(self, v, b: int) -> None:
        """Fill columns b: of packed inputs v ([FIELDS, bs], numpy or torch) as padding rows:
        token 0 at position 0 on the table's padding row, KV to the scratch slot."""
        v[0:2, b:] = 0
        v[2, b:] = self.kv_pool.scratch_slot
        v[3, b:] = self.r2t.pad_row

    def _step(self, bs: int, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode step on the static inputs of bucket bs, for contexts up to max_len
        tokens (default the table's longest): (logits [bs, V], [2, bs])."""
        _, pos, loc, rows = self.inp[: FIELDS * bs].view(FIELDS, bs).unbind(0)
        table = self.r2t.table
        # placeholders resolved from prev_ids, slots written to req_to_token, int32 views
        ids, i32 = decode_inputs(self.inp[: FIELDS * bs], bs, self.prev_ids, table)
        fb = ForwardBatch(
            input_ids=ids, positions=pos, out_cache_loc=loc, req_rows=i32[0],
            prefix_lens=i32[1], extend_lens=self._ones[:bs], seq_lens=i32[2],
            q_start_loc=self._arange32[:bs], logits_index=self._arange64[:bs], is_decode=True,
            max_extend_len=1, max_seq_len=max_len or self.r2t.max_len, req_to_token=table,
            kv_pool=self.kv_pool, token_rows=rows)
        logits = self.model.forward(fb)
        turn = self.inp[FIELDS * bs : FIELDS * bs + 1]
        return logits, greedy_pick(logits, self.prev_ids, self.results, turn)

    @torch.inference_mode()
    def _capture(self) -> None:
        """Capture one graph per bucket, largest first so that the smaller graphs reuse the
        shared pool's blocks. Kernel configs come from the committed tables
        (aiollm.kernels.autotune.untuned): the inputs here are all padding rows (one-token
        contexts), on which tuning would time launch overhead, not the kernels."""
        t0 = time.monotonic()
        dev = self.inp.device  # the engine's, which need not be the current device
        reserved = torch.cuda.memory_reserved(dev)
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(device=dev)
        main = torch.cuda.current_stream(dev)
        with autotune.untuned(), torch.cuda.device(dev):
            for bs in reversed(self.buckets):
                self.graphs[bs] = self._capture_one(bs, None, pool, stream, main)
            if self.short_len is not None:
                self.short_graph = self._capture_one(1, self.short_len, pool, stream, main)
        torch.cuda.synchronize(dev)
        log.info("captured %d decode CUDA graphs (batch sizes %s%s, %.0f MiB) in %.1fs",
                 len(self.graphs) + (self.short_graph is not None),
                 ",".join(map(str, self.buckets)),
                 f"; batch 1 again for contexts up to {self.short_len}" if self.short_len else "",
                 (torch.cuda.memory_reserved(dev) - reserved) / 2**20, time.monotonic() - t0)

    def _capture_one(self, bs: int, max_len: int | None, pool, stream, main):
        """(graph, logits, packed) of the step at bucket bs for contexts up to max_len."""
        self._pad(self.inp[: FIELDS * bs].view(FIELDS, bs), 0)
        self.inp[FIELDS * bs] = 0  # a valid turn for the eager step and the capture
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            self._step(bs, max_len)  # one eager step: its kernels compile outside the capture
        main.wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool, stream=stream):
            logits, packed = self._step(bs, max_len)
        return g, logits, packed

    def run(self, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the staged batch at bucket bs: (logits [bs, V], packed [2, bs] int64 of the
        argmax and the non-finite flag of each row)."""
        if not self.capture:  # (a test may set short_len here)
            return self._step(bs, self.short_len if self._short else None)
        g, logits, packed = self.short_graph if self._short else self.graphs[bs]
        g.replay()
        return logits, packed
