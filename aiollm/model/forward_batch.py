"""ForwardBatch: everything one forward step of the model reads besides the weights.

Built by the engine's model runner for a batch that mixes prefill chunks and decodes
(a decode is an extend of length 1). All tensors live on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.model.kv_pool import KVPool


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

    @property
    def batch_size(self) -> int:
        return self.req_rows.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def build(
        cls,
        input_ids: torch.Tensor,
        out_cache_loc: torch.Tensor,
        req_rows: torch.Tensor,
        prefix_lens: torch.Tensor,
        extend_lens: torch.Tensor,
        req_to_token: torch.Tensor,
        kv_pool: KVPool,
        device: torch.device,
    ) -> "ForwardBatch":
        """Derive positions and offsets from per-request lengths (CPU tensors in, device out).
        numpy does the index arithmetic: torch.repeat_interleave costs ~0.7 ms on the CPU."""
        ext = extend_lens.numpy().astype(np.int64)
        pre = prefix_lens.numpy().astype(np.int64)
        ends = np.cumsum(ext)
        q_start = ends - ext
        if (ext == 1).all():  # a decode batch: one token per request at its prefix length
            positions = pre
        else:
            req_of_token = np.repeat(np.arange(len(ext)), ext)
            positions = pre[req_of_token] + np.arange(int(ends[-1])) - q_start[req_of_token]
        seq = pre + ext
        to = dict(device=device, non_blocking=True)

        def dev(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(a).to(dtype).to(**to)

        return cls(
            input_ids=input_ids.to(**to),
            positions=dev(positions, torch.int64),
            out_cache_loc=out_cache_loc.to(**to),
            req_rows=req_rows.to(torch.int32).to(**to),
            prefix_lens=dev(pre, torch.int32),
            extend_lens=dev(ext, torch.int32),
            seq_lens=dev(seq, torch.int32),
            q_start_loc=dev(q_start, torch.int32),
            logits_index=dev(ends - 1, torch.int64),
            is_decode=bool((ext == 1).all()),
            max_extend_len=int(ext.max()),
            max_seq_len=int(seq.max()),
            req_to_token=req_to_token,
            kv_pool=kv_pool,
        )
