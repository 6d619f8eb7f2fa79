"""ForwardBatch: everything one forward step of the model reads besides the weights.

Built by the engine's model runner for a batch that mixes prefill chunks and decodes
(a decode is an extend of length 1). All tensors live on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.model.kv_pool import KVPool
from aiollm.model.prompt_logprobs import PromptScoring
from aiollm.model.rope_rows import LongPrompts


@dataclass(slots=True)
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64: KV slot of each new token
    req_rows: torch.Tensor  # [B] int32: row of each request in req_to_token
    prefix_lens: torch.Tensor  # [B] int32: tokens already in the KV pool before this step
    extend_lens: torch.Tensor  # [B] int32: new tokens of each request in this step
    seq_lens: torch.Tensor  # [B] int32: prefix_lens + extend_lens
    q_start_loc: torch.Tensor  # [B] int32: offset of each request's first new token in T
    logits_index: torch.Tensor  # [B] int64: index in T of each request's last new token
    is_decode: bool  # every extend_len is 1
    max_extend_len: int
    max_seq_len: int
    req_to_token: torch.Tensor  # [R, L] int32
    kv_pool: KVPool
    token_rows: torch.Tensor | None = None  # [T] int64: req_to_token row of each new token
    sample_index: torch.Tensor | None = None  # [S] int64: rows of the batch that sample
    # the leading requests with one new token each (the planner puts decodes first) and
    # their longest context: a mixed step runs their attention through the decode kernel
    num_decode: int = 0
    decode_max_seq_len: int = 0
    # a mixed batch's (0 < num_decode < B) per-request tensors in two parts, packed aligned
    # by build(): (req_rows, seq_lens) of the decodes, and (req_rows, prefix_lens,
    # extend_lens, q_start_loc) of the rest; q_start_loc still indexes the whole batch
    mixed_parts: tuple[tuple, tuple] | None = None
    prompt_scoring: PromptScoring | None = None  # prompt positions to score (prompt logprobs)
    # [T] int64: the rotary table row of each new token where some is not its position (a
    # LongRoPE model's long prompts, model/rope_rows.py); None: positions
    rope_rows: torch.Tensor | None = None

    @property
    def rotary_rows(self) -> torch.Tensor:
        """[T] int64: the row of the rotary table (rope.cos_sin_cache) each new token reads."""
        return self.positions if self.rope_rows is None else self.rope_rows

    @property
    def batch_size(self) -> int:
        return self.req_rows.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def build(
        cls,
        input_ids,
        out_cache_loc,
        req_rows,
        prefix_lens,
        extend_lens,
        req_to_token: torch.Tensor,
        kv_pool: KVPool,
        device: torch.device,
        sample_index: np.ndarray | None = None,
        token_coords: tuple[np.ndarray, np.ndarray] | None = None,
        long_prompts: LongPrompts | None = None,
        long_requests: np.ndarray | None = None,
    ) -> "ForwardBatch":
        """Derive positions and offsets from per-request lengths (CPU tensors or numpy arrays
        in, device tensors out; token_coords: new_token_coords() of the batch where the caller
        has it already; long_requests [B] bool: which requests are long_prompts' long ones,
        whose first tokens read other rotary rows than their positions, rope_rows.py). numpy
        does the index arithmetic (torch.repeat_interleave costs ~0.7 ms on the CPU), and
        everything reaches the device in two copies (to_device), so they stay asynchronous
        while an earlier step runs."""
        ext = np.asarray(extend_lens).astype(np.int64)
        pre = np.asarray(prefix_lens).astype(np.int64)
        rows = np.asarray(req_rows).astype(np.int64)
        ends = np.cumsum(ext)
        q_start = ends - ext
        if token_coords is None:
            token_coords = new_token_coords(rows, pre, ext)
        token_rows, positions = token_coords
        seq = pre + ext
        not_one = np.flatnonzero(ext != 1)
        num_decode = int(not_one[0]) if len(not_one) else len(ext)
        longs = [np.asarray(input_ids), positions, np.asarray(out_cache_loc), token_rows,
                 ends - 1]
        rope_rows = None
        if long_requests is not None and long_requests.any():
            rope_rows = long_prompts.rows(positions, np.repeat(long_requests, ext))
        if rope_rows is not None:
            longs.append(rope_rows)
        if sample_index is not None:
            longs.append(sample_index)
        ints = [rows, pre, ext, seq, q_start]
        n = num_decode
        if 0 < n < len(ext):  # a mixed step's decode part, then its extend part
            ints += [rows[:n], seq[:n], rows[n:], pre[n:], ext[n:], q_start[n:]]
        # two host-to-device copies for the whole batch
        ids, pos, loc, trows, last, *extra = _packed(longs, np.int64, device)
        rope_rows = extra.pop(0) if rope_rows is not None else None
        r, p, e, sl, qs, *parts = _packed(ints, np.int32, device)
        return cls(
            input_ids=ids,
            positions=pos,
            out_cache_loc=loc,
            req_rows=r,
            prefix_lens=p,
            extend_lens=e,
            seq_lens=sl,
            q_start_loc=qs,
            logits_index=last,
            is_decode=bool((ext == 1).all()),
            max_extend_len=int(ext.max()),
            max_seq_len=int(seq.max()),
            req_to_token=req_to_token,
            kv_pool=kv_pool,
            token_rows=trows,
            sample_index=extra[0] if extra else None,
            num_decode=num_decode,
            decode_max_seq_len=int(seq[:num_decode].max()) if num_decode else 0,
            mixed_parts=(tuple(parts[:2]), tuple(parts[2:])) if parts else None,
            rope_rows=rope_rows,
        )


def new_token_coords(rows, prefix_lens, extend_lens) -> tuple[np.ndarray, np.ndarray]:
    """(req_to_token row, position) of every new token of a batch, as int64 arrays: request
    i's extend_lens[i] tokens sit on row rows[i] from position prefix_lens[i] on."""
    rows = np.asarray(rows, dtype=np.int64)
    pre = np.asarray(prefix_lens, dtype=np.int64)
    ext = np.asarray(extend_lens, dtype=np.int64)
    total = int(ext.sum())
    if total == len(ext):  # a decode batch: one token per request at its prefix length
        return rows, pre
    first = np.repeat(np.cumsum(ext) - ext, ext)  # each token's request's first index
    return np.repeat(rows, ext), np.repeat(pre, ext) + np.arange(total) - first


def _packed(arrays: list, dtype, device) -> list[torch.Tensor]:
    """The arrays in one host-to-device copy, each view starting 16 bytes aligned: Triton
    specializes a kernel on whether each pointer argument is, so unaligned views would
    compile (and on a warm machine, load) extra variants of it in the middle of serving."""
    per = 16 // np.dtype(dtype).itemsize
    sizes = [len(a) for a in arrays]
    starts = np.cumsum([0] + [-(-k // per) * per for k in sizes])
    buf = np.zeros(int(starts[-1]), dtype=dtype)
    for a, st, k in zip(arrays, starts, sizes):
        buf[st : st + k] = a
    dev = to_device(buf, device)
    return [dev[st : st + k] for st, k in zip(starts.tolist(), sizes)]


def to_device(a: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """An async host-to-device copy. On a GPU it goes through page-locked memory: a copy
    from pageable memory may block the host until the stream (the step before) is done,
    which would undo the overlapped loop."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
