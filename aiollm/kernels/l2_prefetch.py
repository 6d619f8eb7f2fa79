"""Prefetch into L2 from inside a kernel: the next kernel's weights, while this one waits.

At batch 1 a decode step reads its weights at copy bandwidth only inside the GEMVs; the
attention between them is a chain of dependent round trips over a few hundred KiB of K/V, and
memory idles while it runs (H200, Llama-3.2-1B shape: ~4 us a layer of the ~40). A kernel
in such a window can ask the L2 for bytes that the next kernel will read: with the bulk
prefetch of sm_90 (PTX `cp.async.bulk.prefetch.L2.global [addr], size`: no registers, no
completion to wait for, a hint the memory system may drop) a program issues one instruction
per contiguous run of bytes, and the next kernel finds them in L2 instead of HBM. The L2 holds
50 MB on an H100/H200, so a window prefetches a part of a weight, not all of it.

What to prefetch is a set of rows of a weight [N, K] (row stride in elements): the first
`nbytes` bytes of every row r with r mod `group` < `rows` (the rows a GEMV reads first: for
gate/up, whose programs read gate row n and up row I + n together, group I; for a plain
weight, group N). Bytes in all: (N / group) * rows * nbytes.

Compiled only for the GPU: Triton's interpreter runs no inline PTX, so a kernel calls this
under a constexpr that is off on the CPU (`enabled`), and its results never depend on it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ALIGN = 16  # the bulk prefetch's address and size granule (bytes)


@triton.jit
def _bulk_prefetch(ptrs, nbytes):
    # one instruction per element: [ptrs, ptrs + nbytes) into L2 (16-byte aligned, 16k bytes)
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;",
                              "=r,l,r", [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_runs_l2(W, n_items, rows, group, row_bytes, pid, nprog):
    """prefetch_rows_l2 for whole rows of a contiguous weight (row stride = row_bytes): this
    program's items are one run of rows, or two where it crosses a group's end; one
    instruction each."""
    per = tl.cdiv(n_items, nprog)
    start = pid * per
    end = tl.minimum(start + per, n_items)
    if start < end:
        k = tl.arange(0, 2)
        # piece 0: from start to the end of its group's rows; piece 1: the rest (next group)
        split = tl.minimum((start // rows + 1) * rows, end)
        first = tl.where(k == 0, start, split)
        count = tl.where(k == 0, split - start, end - split)
        r = (first // rows) * group + first % rows
        nbytes = tl.where(count > 0, count, 1) * row_bytes  # an empty piece repeats one row
        _bulk_prefetch(W.to(tl.pointer_type(tl.int8)) + r.to(tl.int64) * row_bytes,
                       nbytes.to(tl.int32))


@triton.jit
def prefetch_rows_l2(W, n_items, rows, group, stride_w, nbytes, pid, nprog,
                     BLOCK: tl.constexpr):
    """This program's share (pid of nprog) of the n_items = (N / group) * rows prefetches of
    a weight W [N, K] (see the module doc): item i is row (i // rows) * group + i % rows."""
    per = tl.cdiv(n_items, nprog)
    start = pid * per
    for i0 in range(start, tl.minimum(start + per, n_items), BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        i = tl.minimum(i, tl.minimum(start + per, n_items) - 1)  # a repeat, never out of range
        r = (i // rows) * group + i % rows
        _bulk_prefetch(W + r.to(tl.int64) * stride_w, nbytes + 0 * i)


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` can prefetch this way (sm_90 and later; not the CPU)."""
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 9


def plan(w: torch.Tensor, group: int, spec) -> tuple[int, int, int]:
    """(n_items, rows, nbytes) of a prefetch spec [rows per group, bytes per row] for w
    [N, K] (0 for either: all of them; bytes rounded down to the 16-byte granule), or
    (0, 1, 0) for no prefetch (spec None or empty). ValueError for a group that does not
    divide N."""
    if not spec:
        return 0, 1, 0
    n, k = w.shape
    if group <= 0 or n % group:
        raise ValueError(f"prefetch group {group} does not divide the weight's {n} rows")
    rows = min(spec[0] or group, group)
    row_bytes = k * w.element_size()
    nbytes = min(spec[1] or row_bytes, row_bytes) // ALIGN * ALIGN
    if nbytes == 0 or w.data_ptr() % ALIGN or (w.stride(0) * w.element_size()) % ALIGN:
        return 0, 1, 0
    return n // group * rows, rows, nbytes
