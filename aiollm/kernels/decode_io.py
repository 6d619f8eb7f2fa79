"""The small kernels around a decode graph's forward pass: its inputs and its greedy pick.

At batch 1 a 1B model's decode step is about 1.4 ms, and the torch ops around the forward
pass cost more than they compute. Measured on an H100 (bench/profile_step.py), the argmax of
one 128k-vocab row ran 32 us in torch's single-block reduction and the finite check
(isfinite, all) 13 us more; the placeholder resolution, the req_to_token write and the
int32 views were some twelve launches of 1-2 us each. Two kernels replace them:

- decode_inputs: from the packed [4, B] int64 inputs (ids with placeholders, positions, KV
  slots, rows): resolve each placeholder -(i + 1) to prev_ids[i], write every token's slot
  into req_to_token, and give the int32 rows, positions and sequence lengths, in one launch.
- greedy_pick: per row, the first index of the largest logit and whether any logit is not
  finite, as [2, B] int64, with the argmax also left in prev_ids for the next step. The row is
  cut into blocks so that a batch of one still spreads over the GPU; a second, tiny launch
  combines the blocks. Given a page-locked host buffer and a slot index (a device tensor, so
  that a captured graph reads each step's own), that launch also writes the [2, B] result
  straight into the host buffer's slot: the host reads it once the step's event has
  completed, with no device-to-host copy queued behind the graph (on an H200 such a copy
  of 16 bytes added 8.8 us to a 1B model's 788 us batch-1 step, bench/README.md "Decode").

Each has a PyTorch reference (the CPU path and the tests use it).

Both are launched once per captured batch size, so they take the batch size unspecialised
(Triton would compile a variant for 1, for multiples of 16 and for the rest), and the int32
rows decode_inputs gives start 16-byte aligned at every batch size (the kernels reading them
would specialise on the alignment too): one compiled variant each serves every graph.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

FIELDS = 4  # the rows of the packed inputs: ids, positions, KV slots, req_to_token rows
PICK_BLOCK = 4096


def resolve_placeholders(ids: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
    """ids with each placeholder -(i + 1) replaced by prev_ids[i]."""
    return torch.where(ids < 0, prev_ids.index_select(0, (-ids - 1).clamp(min=0)), ids)


def write_slots(table: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                slots: torch.Tensor) -> None:
    """table[rows[i], positions[i]] = slots[i] (a req_to_token map, [R, L] int32)."""
    flat = rows.long() * table.shape[1] + positions.long()
    table.view(-1).index_copy_(0, flat, slots.to(torch.int32))


def decode_inputs_ref(inp: torch.Tensor, bs: int, prev_ids: torch.Tensor, table: torch.Tensor):
    """(input ids [bs] int64, [3, bs] int32 rows / positions / sequence lengths), and
    table[rows, positions] = slots."""
    raw, pos, loc, rows = inp[: FIELDS * bs].view(FIELDS, bs).unbind(0)
    write_slots(table, rows, pos, loc)
    return resolve_placeholders(raw, prev_ids), torch.stack([rows, pos, pos + 1]).to(torch.int32)


def greedy_pick_ref(logits: torch.Tensor, prev_ids: torch.Tensor,
                    host: torch.Tensor | None = None, slot: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """[2, B] int64: the argmax of each row and 1 where the row has a non-finite logit; the
    argmax also goes to prev_ids[:B], and with host [S, >= 2B] int64 (host memory) and slot
    [1] int64 the result, flattened, to host[slot, :2B]."""
    top = logits.argmax(dim=-1)
    prev_ids[: top.shape[0]].copy_(top)
    bad = ~torch.isfinite(logits).all(dim=-1)
    out = torch.stack([top, bad.to(torch.int64)])
    if host is not None:
        host[int(slot[0]), : out.numel()].copy_(out.view(-1))
    return out


if triton is not None:

    @triton.jit(do_not_specialize=["bs", "stride_out"])
    def _decode_inputs_kernel(
        Inp, Prev, Table, Ids, Out32, bs, stride_table, stride_out, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < bs
        raw = tl.load(Inp + offs, mask=mask, other=0)
        pos = tl.load(Inp + bs + offs, mask=mask, other=0)
        loc = tl.load(Inp + 2 * bs + offs, mask=mask, other=0)
        row = tl.load(Inp + 3 * bs + offs, mask=mask, other=0)
        is_ph = raw < 0
        prev = tl.load(Prev + tl.where(is_ph, -raw - 1, 0), mask=mask & is_ph, other=0)
        tl.store(Ids + offs, tl.where(is_ph, prev, raw), mask=mask)
        tl.store(Table + row * stride_table + pos, loc.to(tl.int32), mask=mask)
        tl.store(Out32 + offs, row.to(tl.int32), mask=mask)
        tl.store(Out32 + stride_out + offs, pos.to(tl.int32), mask=mask)
        tl.store(Out32 + 2 * stride_out + offs, (pos + 1).to(tl.int32), mask=mask)

    @triton.jit
    def _pick_blocks_kernel(
        Logits, Max, Idx, Bad, V, stride_l, n_blocks, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        cols = blk * BLOCK + tl.arange(0, BLOCK)
        mask = cols < V
        v = tl.load(Logits + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32)
        finite = (v == v) & (tl.abs(v) < float("inf"))
        bad = tl.max((mask & ~finite).to(tl.int32), axis=0)
        v = tl.where(finite, v, float("-inf"))  # a bad row's pick only has to be in range
        out = row * n_blocks + blk
        tl.store(Max + out, tl.max(v, axis=0))
        tl.store(Idx + out, blk * BLOCK + tl.argmax(v, axis=0, tie_break_left=True))
        tl.store(Bad + out, bad)

    @triton.jit(do_not_specialize=["B"])
    def _pick_rows_kernel(
        Max, Idx, Bad, Out, Prev, Host, Slot, B, V, n_blocks, stride_host,
        BLOCK_S: tl.constexpr, HOST: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        s = tl.arange(0, BLOCK_S)
        mask = s < n_blocks
        base = row.to(tl.int64) * n_blocks
        m = tl.load(Max + base + s, mask=mask, other=float("-inf"))
        first = tl.argmax(m, axis=0, tie_break_left=True)  # the first block holding the max
        idx = tl.load(Idx + base + first).to(tl.int64)
        idx = tl.minimum(tl.maximum(idx, 0), V - 1)
        bad = tl.max(tl.load(Bad + base + s, mask=mask, other=0), axis=0)
        tl.store(Out + row, idx)
        tl.store(Out + B + row, bad.to(tl.int64))
        tl.store(Prev + row, idx)
        if HOST:  # the same two values into the host buffer's slot (page-locked memory)
            dst = Host + tl.load(Slot) * stride_host
            tl.store(dst + row, idx)
            tl.store(dst + B + row, bad.to(tl.int64))


def decode_inputs_triton(inp: torch.Tensor, bs: int, prev_ids: torch.Tensor,
                         table: torch.Tensor):
    assert inp.is_contiguous() and table.stride(1) == 1 and table.dtype == torch.int32
    ids = torch.empty(bs, dtype=torch.int64, device=inp.device)
    stride = -(-bs // 4) * 4  # each int32 row starts 16-byte aligned
    out32 = torch.empty(3, stride, dtype=torch.int32, device=inp.device)[:, :bs]
    block = 128
    _decode_inputs_kernel[(triton.cdiv(bs, block),)](
        inp, prev_ids, table, ids, out32, bs, table.stride(0), stride, BLOCK=block,
        num_warps=4)
    return ids, out32


def greedy_pick_triton(logits: torch.Tensor, prev_ids: torch.Tensor,
                       host: torch.Tensor | None = None, slot: torch.Tensor | None = None,
                       block: int = PICK_BLOCK) -> torch.Tensor:
    b, v = logits.shape
    assert logits.stride(1) == 1
    assert host is None or (host.dim() == 2 and host.shape[1] >= 2 * b and host.stride(1) == 1
                            and host.dtype == torch.int64 and slot is not None)
    block = min(block, triton.next_power_of_2(v))
    n_blocks = triton.cdiv(v, block)
    mx = torch.empty(b, n_blocks, dtype=torch.float32, device=logits.device)
    idx = torch.empty(b, n_blocks, dtype=torch.int32, device=logits.device)
    bad = torch.empty(b, n_blocks, dtype=torch.int32, device=logits.device)
    out = torch.empty(2, b, dtype=torch.int64, device=logits.device)
    _pick_blocks_kernel[(b, n_blocks)](logits, mx, idx, bad, v, logits.stride(0), n_blocks,
                                       BLOCK=block, num_warps=8 if block > 1024 else 4)
    _pick_rows_kernel[(b,)](mx, idx, bad, out, prev_ids, host if host is not None else out,
                            slot if slot is not None else out, b, v, n_blocks,
                            host.stride(0) if host is not None else 0,
                            BLOCK_S=max(16, triton.next_power_of_2(n_blocks)),
                            HOST=host is not None, num_warps=1)
    return out


def decode_inputs(inp: torch.Tensor, bs: int, prev_ids: torch.Tensor, table: torch.Tensor):
    """Triton on CUDA, the reference otherwise (see decode_inputs_ref)."""
    if inp.is_cuda and triton is not None:
        return decode_inputs_triton(inp, bs, prev_ids, table)
    return decode_inputs_ref(inp, bs, prev_ids, table)


def greedy_pick(logits: torch.Tensor, prev_ids: torch.Tensor,
                host: torch.Tensor | None = None, slot: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Triton on CUDA, the reference otherwise (see greedy_pick_ref). host: page-locked
    [S, >= 2B] int64 where the GPU runs it."""
    if logits.is_cuda and triton is not None and logits.shape[0] > 0:
        return greedy_pick_triton(logits, prev_ids, host, slot)
    return greedy_pick_ref(logits, prev_ids, host, slot)
