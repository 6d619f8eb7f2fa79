"""TensorParallel: one rank's view of the tensor-parallel group and the collectives it runs.

Two torch.distributed process groups over the same ranks: the device group (NCCL on GPUs,
gloo on the CPU) carries the model's all-reduces, the logits' all-gathers and the sampled ids;
a gloo group on the host carries the step messages rank 0 sends the followers, so that a
follower receives step N+1's inputs while step N still runs on the devices (a message on
the device group would wait in the stream behind step N). On the CPU both are the one gloo
group.

A step message is int64: a header (kind, requests, tokens, sampled rows, flags, payload
length, row-write length, scored positions) and the payload (the step's input ids, KV slots
and per-request lengths; for a LongRoPE model served past its original context, which of an
eager step's requests are long, model/rope_rows.py; the sampled rows, the rows of its new
tokens whose prompt logprobs it scores, their prompt tokens and the top-k, which every rank
scores on its part of the vocabulary (model/prompt_logprobs.py), then the req_to_token row
writes rank 0 made since the last message: a prefix-cache hit's slots, as (row, start,
count, slots...) runs, which a follower applies before the step so its map matches rank
0's). Decode batches up to INLINE / 4 requests fit inline, so such a step costs one
broadcast; a larger payload follows in a second broadcast of its exact size. Rank 0 with
no step to send sends an IDLE message every KEEPALIVE_S: a follower's wait for the next
message gives up after the host group's timeout (gloo's), and an idle server lost its
followers.

Start-up checkpoints: the collectives of start-up (the KV pool size every rank agrees on, then
"every pool is allocated" before the graph captures' and the warm-up's collectives) each carry
every rank's status too. A rank whose start-up raised before a checkpoint (its weights, its
pool size, its pool) meets the others at that checkpoint with its error (start_failed), and
every rank raises RankLost naming it, its exception type and message: the ranks of another
node, and those beside the failing one (which met gloo's "Connection closed by peer" from
their neighbour), learn the cause too, and no rank waits for a peer that will never come.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

# the name of torch >= 2.12; all_gather_into_tensor before
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

HEADER = 8
INLINE = 1024  # payload longs carried in the first broadcast
STOP, DECODE, EAGER, IDLE = 0, 1, 2, 3
# flags
ARGMAX_ONLY, PLACEHOLDERS, REMOTE_SAMPLING = 1, 2, 4

log = logging.getLogger(__name__)
# rank 0 with no step to send sends an IDLE message this often: a follower's wait for the
# next message gives up after the host group's timeout (placement.HOST_GROUP_TIMEOUT, 30 min)
KEEPALIVE_S = 60.0
FAILURE_BYTES = 2048  # of a rank's start-up error, as a start-up checkpoint carries it


class RankLost(RuntimeError):
    """Another rank failed or exited during start-up; the message names it and why."""


@dataclass(slots=True)
class StepMessage:
    kind: int
    n: int  # requests
    tokens: int
    sampled: int  # rows of sample_index, -1: none (every request samples, or none does)
    flags: int
    payload: np.ndarray  # int64: the step's arrays, the prompt scoring last
    row_writes: list  # (row, start, slots int64 array): req_to_token writes to apply first
    scored: int = 0  # rows of the new tokens whose prompt logprobs the step scores

    @property
    def scoring(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(rows [scored] int64 of the new tokens to score, their prompt tokens [scored]
        int64, top-k): the payload's tail; None when the step scores none."""
        if not self.scored:
            return None
        tail = self.payload[self.payload.size - 2 * self.scored - 1:]
        return tail[: self.scored], tail[self.scored: -1], int(tail[-1])


class TensorParallel:
    """This process's rank in a tensor-parallel group of `size` ranks on `device`."""

    def __init__(self, rank: int, size: int, device: torch.device, cpu_group=None):
        self.rank, self.size, self.device = rank, size, device
        self.group = None  # the default group: the device backend
        self.cpu_group = cpu_group  # gloo on the host (None: the default group is gloo)
        self._buf = np.zeros(HEADER + INLINE, dtype=np.int64)
        # rank 0: req_to_token row writes made outside steps, for the next step message
        # (ReqToTokenTable.write_row appends here; see ModelRunner)
        self.row_writes: list[tuple[int, int, np.ndarray]] = []
        self.starting = True  # until the last start-up checkpoint passed (or one failed)
        self._last_sent = time.monotonic()  # rank 0: its latest step message
        self._meeting = None  # a checkpoint's collective under way (see release)

    def release(self) -> None:
        """The group was left (destroy_process_group): drop the host group, whose store
        it holds (rank 0: the rendezvous' server, listening at --dist-init-addr as long as
        this object, which the stopped Engine keeps, held it). No collective after this.
        Kept while a checkpoint's collective was left under way (Ctrl-C): the group's
        destructor would wait for it, which no rank may ever complete; it then holds only
        a client of rank 0's store, whose server the rendezvous' close shuts (Rendezvous
        keeps it apart), so a new start at the same address can host it."""
        if self._meeting is None:
            self.cpu_group = None

    # -- the model's collectives (on the device stream, inside CUDA graphs too) --------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the ranks, in place."""
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [*S] on each rank -> [size, *S], rank r's at [r]."""
        # the backends (gloo) want the ranks' tensors concatenated along their first dim
        out = torch.empty((self.size * x.shape[0], *x.shape[1:]), dtype=x.dtype,
                          device=x.device)
        _all_gather(out, x.contiguous(), group=self.group)
        return out.view(self.size, *x.shape)

    def all_gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """[T, C] on each rank -> [T, size * C], rank r's columns at [r C, (r + 1) C)."""
        t, c = x.shape
        return self.all_gather(x).permute(1, 0, 2).reshape(t, self.size * c)

    def broadcast_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Rank 0's sampled ids [S] int64 on every rank (in place)."""
        dist.broadcast(ids, 0, group=self.group)
        return ids

    # -- start-up checkpoints (host) ---------------------------------------------------------
    def start_check(self, value: int = 0, last: bool = False) -> int:
        """A start-up checkpoint, which every rank passes at the same point of start-up: the
        smallest of the ranks' `value`s (e.g. the KV tokens each has room for). Raises
        RankLost on every rank when a rank's start-up failed before it (that rank met the
        others here with start_failed): "tensor parallel rank R failed: Type: message", of
        the lowest such rank. `last`: no checkpoint follows; a failure past it is not met.
        A collective's error (RuntimeError, DistError) when a rank's process is gone."""
        return self._meet(value, None, last)

    def start_failed(self, error: BaseException) -> None:
        """This rank's start-up raised `error`: meet the other ranks at the checkpoint they
        will reach next, so that they raise RankLost naming this rank and `error` rather than
        wait there for the group's timeout, or meet gloo's "Connection closed by peer" without
        the cause. Blocks until every rank reaches it. Does nothing past the last checkpoint
        or a failed one (every rank has raised there), when the group is already broken
        (a rank's process is gone), and for a KeyboardInterrupt or SystemExit (its caller
        ends the ranks; the wait could not be interrupted): the caller raises its own error
        in all cases."""
        if not self.starting or not isinstance(error, Exception):
            return
        why = f"{type(error).__name__}: {error}"
        # the others may come minutes later (rank 0 loads its weights): not without a word
        log.error("tensor parallel rank %d failed to start: %s; waiting for the other ranks "
                  "at their next start-up checkpoint to tell them", self.rank, why)
        try:
            self._meet(0, why, last=True)
        except RankLost:
            pass  # (this rank's own failure, or a lower rank's)
        except Exception as e:  # a rank is gone: its node's lead names it
            log.debug("tensor parallel rank %d could not report its start-up failure: %s",
                      self.rank, e)

    def _meet(self, value: int, failure: str | None, last: bool) -> int:
        # each rank's [value, failure's length in bytes (-1: none), its UTF-8 bytes...]: a
        # tensor of fixed size, not a pickled object (nothing another node sends is
        # unpickled); a longer message is cut
        mine = torch.zeros(2 + FAILURE_BYTES, dtype=torch.int64)
        text = (failure or "").encode()[:FAILURE_BYTES]
        mine[0], mine[1] = value, -1 if failure is None else len(text)
        if text:
            mine[2:2 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        outcomes = [torch.empty_like(mine) for _ in range(self.size)]
        try:
            self._meeting = work = dist.all_gather(outcomes, mine, group=self.cpu_group,
                                                   async_op=True)
            # polled: a wait inside gloo holds Python's signal handler, and Ctrl-C on a node's
            # lead process did nothing until the last rank came (minutes, while rank 0 loads)
            while not work.is_completed():
                time.sleep(0.01)
            work.wait()
            self._meeting = None
        except BaseException:
            self.starting = False  # the group is broken: no later checkpoint meets
            if self._meeting is not None and self._meeting.is_completed():
                self._meeting = None  # (it failed: not under way)
            raise
        failed = [(rank, int(t[1])) for rank, t in enumerate(outcomes) if t[1] >= 0]
        if failed or last:
            self.starting = False
        if failed:
            rank, n = failed[0]
            why = bytes(outcomes[rank][2:2 + n].tolist()).decode(errors="replace")
            raise RankLost(f"tensor parallel rank {rank} failed: {why}")
        return min(int(t[0]) for t in outcomes)

    # -- step messages (host, rank 0 -> followers) ----------------------------------------
    def step_message(self, inp, tokens: int, sampled: int, arrays: tuple) -> tuple:
        """send_step's arguments for a prepared step (a model_runner.StepInputs) of `tokens`
        tokens, `sampled` rows of sample_index (-1: none) and these host arrays, followed by
        the rows its prompt logprobs score (with their prompt tokens and the top-k) and the
        row writes pending since the last message (taken: the next message has none)."""
        flags = ((ARGMAX_ONLY if inp.argmax_only else 0)
                 | (PLACEHOLDERS if inp.placeholders else 0)
                 | (REMOTE_SAMPLING if inp.sampling is not None else 0))
        scoring = inp.batch.prompt_scoring if inp.batch is not None else None
        scored = 0
        if scoring is not None:
            scored = scoring.index_host.size
            arrays = arrays + (scoring.index_host, scoring.targets_host, (scoring.top_k,))
        writes = 0
        if self.row_writes:
            runs = [np.concatenate(([row, start, len(slots)], slots))
                    for row, start, slots in self.row_writes]
            self.row_writes.clear()
            writes = sum(r.size for r in runs)
            arrays = arrays + tuple(runs)
        return (DECODE if inp.decode_bs else EAGER, inp.n, tokens, sampled, flags, arrays,
                writes, scored)

    def send_step(self, kind: int, n: int = 0, tokens: int = 0, sampled: int = -1,
                  flags: int = 0, arrays: tuple = (), writes: int = 0, scored: int = 0
                  ) -> None:
        """Rank 0: broadcast one step's inputs (the arrays, concatenated; the last `writes`
        longs are row writes, the 2 `scored` + 1 before them the prompt scoring) to the
        followers."""
        body = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays]
                              ) if arrays else np.zeros(0, np.int64)
        buf = self._buf
        buf[:HEADER] = (kind, n, tokens, sampled, flags, body.size, writes, scored)
        inline = body.size <= INLINE
        if inline:
            buf[HEADER: HEADER + body.size] = body
        dist.broadcast(torch.from_numpy(buf), 0, group=self.cpu_group)
        if not inline:
            dist.broadcast(torch.from_numpy(np.ascontiguousarray(body)), 0, group=self.cpu_group)
        self._last_sent = time.monotonic()

    def idle_wait(self) -> float:
        """Rank 0 without a step to send: the seconds it may wait before keep_alive()."""
        return max(0.0, self._last_sent + KEEPALIVE_S - time.monotonic())

    def keep_alive(self) -> None:
        """Rank 0 without a step to send: an IDLE message to the followers when KEEPALIVE_S
        passed since the last message (a follower's wait times out after the host group's
        timeout, and an idle server lost its followers). Call it where the steps are sent
        from, never beside a step's send."""
        if self.idle_wait() == 0.0:
            self.send_step(IDLE)

    def recv_step(self) -> StepMessage:
        """A follower: the next step message from rank 0 (blocks)."""
        buf = self._buf
        dist.broadcast(torch.from_numpy(buf), 0, group=self.cpu_group)
        kind, n, tokens, sampled, flags, size, writes, scored = (int(v) for v in buf[:HEADER])
        if size <= INLINE:
            payload = buf[HEADER: HEADER + size].copy()
        else:
            payload = np.empty(size, dtype=np.int64)
            dist.broadcast(torch.from_numpy(payload), 0, group=self.cpu_group)
        row_writes, i = [], size - writes
        while i < size:
            row, start, count = (int(v) for v in payload[i: i + 3])
            row_writes.append((row, start, payload[i + 3: i + 3 + count]))
            i += 3 + count
        return StepMessage(kind, n, tokens, sampled, flags, payload[: size - writes],
                           row_writes, scored)
