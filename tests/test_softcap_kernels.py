"""The attention kernels with Gemma 2's attention logit soft-capping against their references,
and the references against transformers' Gemma2 eager attention.

Each scaled score s becomes cap x tanh(s / cap) before the mask and softmax. The caps here
(2 and 5) are small next to the scores (q and k of std 1, head dim 16 and 32: scores of a few
units after the scale of 4 or 8 by query_pre_attn_scalar), so the cap changes every output:
each test also checks that the uncapped reference is far from the capped one. Shapes are
odd, with and without a sliding window, in float32 and (on the CPU, under Triton's
interpreter) float16.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm import kernels  # noqa: E402
from aiollm.kernels import attention_oproj as ao  # noqa: E402
from test_kernels import TOL, assert_close, make_pool  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
HALF = torch.bfloat16 if torch.cuda.is_available() else torch.float16
SCALE = 0.25  # query_pre_attn_scalar 16 ** -0.5: larger scores than 1/sqrt(32) would give


def far(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.float() - b.float()).abs().max().item() > 1e-2


def test_reference_caps_as_transformers_gemma2_does():
    """extend_attention_ref of one 13-token sequence against transformers' Gemma2
    eager_attention_forward (causal mask, scaling, softcap) on the same q, k, v."""
    from types import SimpleNamespace

    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    T, HQ, HKV, D, cap = 13, 4, 2, 16, 2.0
    k_cache, v_cache, table, rows = make_pool([T], HKV, D, torch.float32, torch.device("cpu"))
    q = torch.randn(T, HQ, D)
    slots = table[rows[0], :T].long()
    k, v = k_cache[slots], v_cache[slots]
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    module = SimpleNamespace(num_key_value_groups=HQ // HKV, training=False, head_dim=D)
    want, _ = eager_attention_forward(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                      v.transpose(0, 1)[None], mask, scaling=SCALE,
                                      softcap=cap)
    z, t = torch.zeros(1, dtype=torch.int32), torch.tensor([T], dtype=torch.int32)
    args = (q, k_cache, v_cache, table, rows, z, t, z, SCALE, T)
    got = kernels.extend_attention_ref(*args, softcap=cap)
    assert (got - want[0]).abs().max() < 1e-5
    assert far(kernels.extend_attention_ref(*args), got)
    dec = kernels.decode_attention_ref(q[-1:], k_cache, v_cache, table, rows, t, SCALE, T,
                                       softcap=cap)
    assert (dec - want[0, -1:]).abs().max() < 1e-5


@pytest.mark.parametrize("prefix_lens,extend_lens,window", [
    ([0], [23], 0), ([0, 17], [37, 5], 0), ([30], [1], 7), ([45, 0], [19, 33], 20)])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_extend_attention_with_a_softcap(prefix_lens, extend_lens, window, dtype):
    HQ, HKV, D, cap = 4, 2, 16, 2.0
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    q = torch.randn(sum(extend_lens), HQ, D, device=DEV).to(dtype)
    ext = torch.tensor(extend_lens, dtype=torch.int32, device=DEV)
    starts = torch.cumsum(ext, 0, dtype=torch.int32) - ext
    pre = torch.tensor(prefix_lens, dtype=torch.int32, device=DEV)
    args = (q, k_cache, v_cache, table, rows, pre, ext, starts, SCALE, max(extend_lens))
    ref = kernels.extend_attention_ref(*args, window=window, softcap=cap)
    out = kernels.extend_attention_triton(*args, window=window, softcap=cap)
    assert_close(out, ref, dtype)
    assert far(kernels.extend_attention_ref(*args, window=window), ref)


@pytest.mark.parametrize("seq_lens,window,num_splits,kw", [
    ([1, 17, 45], 0, 1, {}),
    ([45, 9], 0, 3, {}),  # split-K, merged in the kernel
    ([45, 9], 0, 3, {"merge_in_kernel": False}),  # ... and by the reduce launch
    ([10, 12, 9, 300, 7], 0, 1, {"long_only": 4}),  # long-only splits
    ([1, 17, 45], 20, 4, {}),
    ([97, 16], 31, None, {}),
])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_decode_attention_with_a_softcap(seq_lens, window, num_splits, kw, dtype):
    HQ, HKV, D, cap = 6, 2, 32, 5.0
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    q = (2 * torch.randn(len(seq_lens), HQ, D, device=DEV)).to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    args = (q, k_cache, v_cache, table, rows, lens, SCALE, max(seq_lens))
    ref = kernels.decode_attention_ref(*args, window=window, softcap=cap)
    out = kernels.decode_attention_triton(*args, num_splits=num_splits, window=window,
                                          softcap=cap, **kw)
    assert_close(out, ref, dtype)
    assert far(kernels.decode_attention_ref(*args, window=window), ref)


@pytest.mark.parametrize("seq_len,window", [(1, 0), (50, 0), (50, 7), (20, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, HALF])
def test_attention_oproj_with_a_softcap(seq_len, window, dtype):
    HQ, HKV, D, H, cap = 8, 2, 16, 40, 2.0
    k_cache, v_cache, table, rows = make_pool([seq_len], HKV, D, dtype, DEV)
    q = (2 * torch.randn(1, HQ, D, device=DEV)).to(dtype)
    w_o = (torch.randn(H, HQ * D, device=DEV) / (HQ * D) ** 0.5).to(dtype)
    lens = torch.tensor([seq_len], dtype=torch.int32, device=DEV)
    res = torch.randn(1, H, device=DEV)
    tail = (table, rows, lens, SCALE, table.shape[1], w_o)
    ref = ao.attention_oproj_ref(q, k_cache, v_cache, *tail, res.clone(), window=window,
                                 softcap=cap)
    out = ao.attention_oproj_triton(q, k_cache, v_cache, *tail, res.clone(), window=window,
                                    softcap=cap)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= max(TOL[dtype], 1e-5)
    if seq_len > 1:  # one key: softmax weight 1 whatever its score
        plain = ao.attention_oproj_ref(q, k_cache, v_cache, *tail, res.clone(), window=window)
        assert far(plain, ref)


def test_a_bad_softcap_is_refused():
    from aiollm.kernels.extend_attention import softcap_args

    with pytest.raises(ValueError, match="softcap must be a positive number, got -1"):
        softcap_args(0.25, -1.0)
