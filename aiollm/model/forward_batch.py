"""ForwardBatch: everything one forward step of the model reads besides the weights.

Built by the engine's model runner for a batch that mixes prefill chunks and decodes
(a decode is an extend of length 1). All tensors live on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        """Derive positions and offsets from per-request lengths (CPU tensors in, device out)."""
        extend_lens = extend_lens.to(torch.int32)
        prefix_lens = prefix_lens.to(torch.int32)
        seq_lens = prefix_lens + extend_lens
        ends = torch.cumsum(extend_lens, 0, dtype=torch.int64)
        q_start = ends - extend_lens
        total = int(ends[-1])
        # position of each token = its request's prefix + its index within the request
        req_of_token = torch.repeat_interleave(torch.arange(len(extend_lens)), extend_lens.long())
        positions = prefix_lens.long()[req_of_token] + (
            torch.arange(total, dtype=torch.int64) - q_start[req_of_token]
        )
        to = dict(device=device, non_blocking=True)
        return cls(
            input_ids=input_ids.to(**to),
            positions=positions.to(**to),
            out_cache_loc=out_cache_loc.to(**to),
            req_rows=req_rows.to(torch.int32).to(**to),
            prefix_lens=prefix_lens.to(**to),
            extend_lens=extend_lens.to(**to),
            seq_lens=seq_lens.to(**to),
            q_start_loc=q_start.to(torch.int32).to(**to),
            logits_index=(ends - 1).to(**to),
            is_decode=bool((extend_lens == 1).all()),
            max_extend_len=int(extend_lens.max()),
            max_seq_len=int(seq_lens.max()),
            req_to_token=req_to_token,
            kv_pool=kv_pool,
        )
