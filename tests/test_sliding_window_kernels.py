"""The attention kernels with a sliding window against their references, and the references
against transformers' sliding-window mask.

A query at position p sees the keys (p - W, p] (W of them, itself included), as transformers'
masking_utils.sliding_window_causal_mask_function masks them. Without CUDA the kernels run
under Triton's CPU interpreter (CPU configs: 16-key blocks), so windows of 1, of 7 and 20
(cutting blocks in the middle), of 16 (a block's length) and longer than the sequence are
checked at odd lengths, with a prefix in the KV (chunked prefill) and batches mixing lengths.
The K/V the kernels must skip (blocks wholly before every query's window) are NaN in the
kernels' cache: a kernel that reads them returns NaN.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm import kernels  # noqa: E402
from aiollm.kernels import attention_oproj as ao  # noqa: E402
from test_kernels import TOL, assert_close, make_pool  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
# float16 on the CPU: Triton 3.9's interpreter returns garbage for tl.dot of bfloat16
HALF = torch.bfloat16 if torch.cuda.is_available() else torch.float16
# the key block of the extend kernel's CPU config; on the GPU the largest a tuned one has
# (the positions before a multiple of it are before one of every smaller block too)
BLOCK = 128 if torch.cuda.is_available() else 16


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty fills NaN
    yield
    torch.use_deterministic_algorithms(False)


def poisoned(cache: torch.Tensor, table: torch.Tensor, rows: torch.Tensor,
             before: list[int]) -> torch.Tensor:
    """A copy of cache whose slots of request b's positions [0, before[b]) are NaN, but for
    slot 0: the extend kernel's masked lanes (past a request's end) read slot 0, unused."""
    out = cache.clone()
    for row, n in zip(rows.tolist(), before):
        out[table[row, :n].long()] = float("nan")
    out[0] = cache[0]
    return out


def dense_reference(q, k, v, window: int) -> torch.Tensor:
    """Attention of q [T, H, D] over k, v [T, H, D] of one sequence at positions 0..T-1
    under transformers' own sliding-window mask function, float64."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    allowed = sliding_window_causal_mask_function(window)
    T = q.shape[0]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = allowed(torch.tensor(0), torch.tensor(0), i, j)
    scores = torch.einsum("thd,shd->hts", q.double(), k.double()) / math.sqrt(q.shape[-1])
    p = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
    return torch.einsum("hts,shd->thd", p, v.double())


@pytest.mark.parametrize("window", [1, 5, 16, 40])
def test_references_mask_as_transformers_does(window):
    """Prefill and the decode of the last token of a 23-token sequence, against attention
    under transformers' mask (the references compute in float32: 1e-5; a key off the boundary
    is off by ~0.1); a window shorter than the sequence changes the output."""
    T, H, D = 23, 2, 16
    k_cache, v_cache, table, rows = make_pool([T], H, D, torch.float64, torch.device("cpu"))
    q = torch.randn(T, H, D, dtype=torch.float64)
    slots = table[rows[0], :T].long()
    want = dense_reference(q, k_cache[slots], v_cache[slots], window)
    z, t = torch.zeros(1, dtype=torch.int32), torch.tensor([T], dtype=torch.int32)
    args = (q, k_cache, v_cache, table, rows, z, t, z, D**-0.5, T)
    ext = kernels.extend_attention_ref(*args, window=window)
    assert (ext - want).abs().max() < 1e-5
    dec = kernels.decode_attention_ref(q[-1:], k_cache, v_cache, table, rows, t, D**-0.5, T,
                                       window=window)
    assert (dec - want[-1:]).abs().max() < 1e-5
    full = kernels.extend_attention_ref(*args)
    assert (full - ext).abs().max() > 1e-3 if window < T else torch.equal(full, ext)


EXTEND_CASES = [
    # prefix_lens, extend_lens, window
    ([0], [23], 1),
    ([0], [23], 7),
    ([0], [37], 16),
    ([0], [23], 40),  # longer than the sequence
    ([30], [1], 7),  # a decode through the extend kernel
    ([45], [19], 20),  # a chunk after a prefix in the KV, the window cutting blocks
    ([0, 35, 13], [1, 19, 33], 9),  # a batch mixing lengths and prefixes
    ([50, 0], [3, 50], 1),
]


def check_extend(prefix_lens, extend_lens, window, dtype, HQ=4, HKV=2, D=16, config=None):
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    T = sum(extend_lens)
    q = torch.randn(T, HQ, D, dtype=dtype, device=DEV)
    ext = torch.tensor(extend_lens, dtype=torch.int32, device=DEV)
    starts = torch.cumsum(ext, 0, dtype=torch.int32) - ext
    pre = torch.tensor(prefix_lens, dtype=torch.int32, device=DEV)
    tail = (q, table, rows, pre, ext, starts, D**-0.5, max(extend_lens))
    ref = kernels.extend_attention_ref(tail[0], k_cache, v_cache, *tail[1:], window=window)
    block = (config or {}).get("BLOCK_N", BLOCK)
    # the blocks before the first query's window: no tile reads them
    before = [max(p - window + 1, 0) // block * block for p in prefix_lens]
    kc, vc = (poisoned(c, table, rows, before) for c in (k_cache, v_cache))
    out = kernels.extend_attention_triton(tail[0], kc, vc, *tail[1:], window=window,
                                          config=config)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("prefix_lens,extend_lens,window", EXTEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_extend_attention_with_a_window(prefix_lens, extend_lens, window, dtype):
    check_extend(prefix_lens, extend_lens, window, dtype)


@pytest.mark.parametrize("lazy", [0, 1])
def test_extend_attention_with_a_window_other_blocks(lazy):
    """Query tiles taller than the key blocks (the windowed kernel never rescales lazily: a
    row may see no key in a tile's first blocks), windows shorter and longer than a tile."""
    cfg = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "LAZY": lazy}
    for window in (3, 24, 70):
        check_extend([3, 40], [21, 40], window, torch.float32, config=cfg)


DECODE_CASES = [
    # seq_lens, window, num_splits (None: the rule)
    ([1], 1, None),
    ([45], 1, 3),
    ([45], 7, 3),
    ([1, 17, 45], 16, 1),
    ([1, 17, 45], 20, 4),
    ([33, 5], 100, None),  # longer than every context
    ([97, 16], 31, 8),  # more splits than the window has blocks: most of them empty
]


def check_decode(seq_lens, window, num_splits, dtype, HQ=4, HKV=2, D=16, **kw):
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    B = len(seq_lens)
    q = torch.randn(B, HQ, D, dtype=dtype, device=DEV)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    tail = (table, rows, lens, D**-0.5, max(seq_lens))
    ref = kernels.decode_attention_ref(q, k_cache, v_cache, *tail, window=window)
    before = [max(n - window, 0) for n in seq_lens]  # never read
    kc, vc = (poisoned(c, table, rows, before) for c in (k_cache, v_cache))
    out = kernels.decode_attention_triton(q, kc, vc, *tail, num_splits=num_splits,
                                          window=window, **kw)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("seq_lens,window,num_splits", DECODE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_decode_attention_with_a_window(seq_lens, window, num_splits, dtype):
    check_decode(seq_lens, window, num_splits, dtype)


def test_decode_attention_with_a_window_merged_apart_and_long_only():
    """Split outputs merged by a reduce launch; a long-only launch (the long context split,
    the others whole); twice, so a counter left non-zero shows."""
    for _ in range(2):
        check_decode([1, 40, 97], 33, 7, torch.float32, merge_in_kernel=False)
        check_decode([10, 12, 9, 300, 7], 50, 1, torch.float32, long_only=4)
        check_decode([10, 12, 9, 300, 7], 5, 1, torch.float32, long_only=4)


@pytest.mark.parametrize("seq_len,window", [(1, 1), (17, 1), (50, 7), (50, 16), (50, 33),
                                            (20, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_attention_oproj_with_a_window(seq_len, window, dtype):
    HQ, HKV, D, H = 8, 2, 16, 40
    k_cache, v_cache, table, rows = make_pool([seq_len], HKV, D, dtype, DEV)
    q = torch.randn(1, HQ, D, device=DEV).to(dtype)
    w_o = (torch.randn(H, HQ * D, device=DEV) / (HQ * D) ** 0.5).to(dtype)
    lens = torch.tensor([seq_len], dtype=torch.int32, device=DEV)
    res = torch.randn(1, H, device=DEV)
    tail = (table, rows, lens, D**-0.5, table.shape[1], w_o)
    ref = ao.attention_oproj_ref(q, k_cache, v_cache, *tail, res.clone(), window=window)
    kc, vc = (poisoned(c, table, rows, [max(seq_len - window, 0)])
              for c in (k_cache, v_cache))
    out = ao.attention_oproj_triton(q, kc, vc, *tail, res, window=window)
    assert not out.isnan().any()
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= max(TOL[dtype], 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mistral_shape_past_its_window_on_gpu(dtype):
    """Mistral-7B's attention (32 query heads, 8 KV heads of 128) with its 4,096-token window
    on contexts past it, under the tuned configs: a 1,000-token chunk after a 4,500-token
    prefix beside a whole 700-token prompt, and decodes of one and of three requests (split
    and unsplit launches)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    check_extend([4500, 0], [1000, 700], 4096, dtype, HQ=32, HKV=8, D=128)
    check_decode([6000], 4096, None, dtype, HQ=32, HKV=8, D=128)
    check_decode([5000, 300, 4097], 4096, None, dtype, HQ=32, HKV=8, D=128)
