"""The kernels Gemma adds or stretches, against their PyTorch references.

GELU's tanh approximation gated by up (GeGLU: activation.py, and the fused one-token GEMV's
GELU epilogue, gemv.py), RMSNorm with Gemma's float32 norm weights over a bfloat16 stream,
and every attention kernel at Gemma's head_dim of 256 (gemma-2b: 8 query heads on 1 KV
head; gemma-7b: 16 on 16): decode (direct and split-K), extend, attention fused with o_proj,
and the fused GEMV of q/k/v with rotary and the KV store. Without CUDA the kernels run under
Triton's CPU interpreter (float16, not bfloat16, for the attention kernels' tl.dot there:
tests/test_kernels.py says why); the test marked `gpu` repeats them on a GPU in bfloat16.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm import kernels  # noqa: E402
from aiollm.kernels import attention_oproj as ao  # noqa: E402
from aiollm.kernels import gemv  # noqa: E402
from test_gemv import CONFIGS, rel_err  # noqa: E402
from test_kernels import make_pool  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
HALF = torch.bfloat16 if torch.cuda.is_available() else torch.float16
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1.5e-2}


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty fills NaN
    yield
    torch.use_deterministic_algorithms(False)


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(*shape, device=DEV)).to(dtype)


# ---- GELU-tanh gated activation -------------------------------------------------------------

@pytest.mark.parametrize("T,I", [(1, 8), (7, 37), (3, 1500)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_tanh_and_mul(T, I, dtype):
    """Against the reference, which is torch's gelu(approximate="tanh") (what transformers'
    gelu_pytorch_tanh applies): inputs up to +-12, where the tails of tanh and of the
    sigmoid form matter."""
    x = rand(T, 2 * I, dtype=dtype, scale=4.0)
    out = kernels.gelu_tanh_and_mul_triton(x)
    ref = kernels.gelu_tanh_and_mul_ref(x)
    assert rel_err(out, ref) <= (1e-6 if dtype == torch.float32 else 1e-2)
    by_torch = F.gelu(x[:, :I].float(), approximate="tanh") * x[:, I:].float()
    assert torch.equal(ref, by_torch.to(dtype))
    # not SiLU: the two activations differ by far more than the tolerance
    assert rel_err(kernels.silu_and_mul_triton(x), ref) > 1e-2


def test_gelu_tanh_and_mul_of_no_rows():
    assert kernels.gelu_tanh_and_mul_triton(rand(0, 16)).shape == (0, 8)


@pytest.fixture(params=CONFIGS, ids=lambda c: "x".join(map(str, c)))
def config(request, monkeypatch):
    monkeypatch.setattr(gemv, "DEFAULT", request.param)
    return request.param


@pytest.mark.parametrize("M,K,I", [(1, 37, 13), (3, 64, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_norm_gelu_tanh(M, K, I, dtype, config):
    """The fused one-token MLP input: norm (Gemma's float32 1 + w), gate/up GEMV, GELU-tanh
    gate times up; the residual stream x in float32, as the model runs it."""
    x, g = rand(M, K, scale=3.0), 1 + rand(K, scale=0.3)
    w = rand(2 * I, K, dtype=dtype, scale=K**-0.5)  # gates of order 1, where GELU != SiLU
    out = gemv.gemv_norm_gelu_tanh_triton(x, g, 1e-6, w)
    ref = gemv.gemv_norm_gelu_tanh_ref(x, g, 1e-6, w)
    assert rel_err(out, ref) <= TOL[dtype]
    assert rel_err(gemv.gemv_norm_silu_triton(x, g, 1e-6, w), ref) > 1e-2


@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_with_float32_weights_over_bfloat16(with_residual):
    """Gemma's norms keep 1 + w in float32 while x is bfloat16: the product in float32,
    rounded once to x's dtype, as transformers' GemmaRMSNorm computes it."""
    x, w = rand(5, 48, dtype=torch.bfloat16), 1 + rand(48, scale=0.3)
    res = rand(5, 48) if with_residual else None
    out = kernels.rms_norm_triton(x, w, 1e-6, res)
    ref = kernels.rms_norm_ref(x, w, 1e-6, res)
    if with_residual:
        (out, out_res), (ref, ref_res) = out, ref
        assert torch.allclose(out_res, ref_res)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("stream", [torch.float32, torch.bfloat16])
def test_rms_norm_add_adds_the_normed_output_to_the_stream(stream):
    """Gemma 2/3's one-token steps: stream + rmsnorm(a) * (1 + w) in float32, a sub-block's
    output a in bfloat16 normed before it is added; in place on a float32 stream (the
    model's), a new float32 tensor on layer 0's bfloat16 embedding."""
    a, w = rand(3, 48, dtype=torch.bfloat16, scale=4.0), 1 + rand(48, scale=0.3)
    res = rand(3, 48, dtype=stream)
    before = res.clone()
    ref = kernels.rms_norm_add_ref(a, w, 1e-6, before.clone())
    out = kernels.rms_norm_add_triton(a, w, 1e-6, res)
    assert out.dtype == torch.float32 and (out is res) == (stream == torch.float32)
    assert rel_err(out, ref) <= 1e-5
    normed = kernels.rms_norm_ref(a.float(), w, 1e-6)
    assert torch.allclose(ref, before.float() + normed, atol=1e-6)
    assert rel_err(kernels.rms_norm_add_ref(a, w - 1, 1e-6, before), ref) > 1e-2  # w matters
    assert kernels.rms_norm_add_triton(a[:0], w, 1e-6, res[:0]).shape == (0, 48)


@pytest.mark.parametrize("M,K,N", [(1, 37, 13), (3, 64, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_plain(M, K, N, bias, config):
    """x @ w^T (+ bias) with no prologue or epilogue (Gemma 2/3's o_proj and down_proj at
    one token), in w's dtype."""
    x, w = rand(M, K, dtype=torch.bfloat16), rand(N, K, dtype=torch.bfloat16, scale=K**-0.5)
    b = rand(N, dtype=torch.bfloat16) if bias else None
    out = gemv.gemv_plain_triton(x, w, b)
    assert out.dtype == torch.bfloat16 and rel_err(out, gemv.gemv_plain_ref(x, w, b)) <= 1e-2


# ---- head_dim 256 ----------------------------------------------------------------------------

@pytest.mark.parametrize("seq_lens,HQ,HKV,num_splits", [
    ([1, 37], 8, 1, 1),     # gemma-2b's heads, direct
    ([1, 37], 8, 1, None),  # the split rule
    ([70], 8, 1, 3),        # split-K, merged in the kernel
    ([9, 40], 4, 4, 2),     # gemma-7b's grouping (one query head a KV head)
])
def test_decode_attention_at_head_dim_256(seq_lens, HQ, HKV, num_splits):
    D, dtype = 256, HALF
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    q = rand(len(seq_lens), HQ, D, dtype=dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    args = (q, k_cache, v_cache, table, rows, lens, D**-0.5, max(seq_lens))
    out = kernels.decode_attention_triton(*args, num_splits=num_splits)
    assert rel_err(out, kernels.decode_attention_ref(*args)) <= TOL[dtype]


@pytest.mark.parametrize("prefix_lens,extend_lens,HQ,HKV", [
    ([0], [23], 8, 1), ([17, 0], [19, 5], 4, 4)])
def test_extend_attention_at_head_dim_256(prefix_lens, extend_lens, HQ, HKV):
    D, dtype = 256, HALF
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    q = rand(sum(extend_lens), HQ, D, dtype=dtype)
    ext = torch.tensor(extend_lens, dtype=torch.int32, device=DEV)
    starts = torch.cumsum(ext, 0, dtype=torch.int32) - ext
    pre = torch.tensor(prefix_lens, dtype=torch.int32, device=DEV)
    args = (q, k_cache, v_cache, table, rows, pre, ext, starts, D**-0.5, max(extend_lens))
    out = kernels.extend_attention_triton(*args)
    assert rel_err(out, kernels.extend_attention_ref(*args)) <= TOL[dtype]


@pytest.mark.parametrize("seq_len", [1, 17, 40])
def test_attention_oproj_at_head_dim_256(seq_len):
    """gemma-2b's attention (8 heads on 1 KV head of 256) fused with o_proj (hidden 2,048
    there; 40 rows here) and the residual add; a candidate config exists at this head dim."""
    from test_attention_oproj import check

    assert ao.candidates(256), "no config of the fused kernel fits head_dim 256"
    check(seq_len, 8, 1, 256, 40, HALF)


@pytest.mark.parametrize("M,HQ,HKV", [(1, 2, 1), (1, 1, 1)])
def test_gemv_norm_rope_kv_at_head_dim_256(M, HQ, HKV):
    """The one-token q/k/v GEMV with the norm, rotary (pairs 128 apart) and the KV store,
    under the default config (a narrow one takes minutes under the interpreter here)."""
    D, K, dtype = 256, 48, torch.bfloat16
    N = (HQ + 2 * HKV) * D
    x, g, w = rand(M, K), 1 + rand(K, scale=0.3), rand(N, K, dtype=dtype)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=DEV).float() / D)
    cos_sin = torch.arange(20, device=DEV).float()[:, None] * inv_freq
    cos_sin = torch.cat((cos_sin.cos(), cos_sin.sin()), dim=-1)
    pos = torch.tensor([13] * M, device=DEV)
    loc = torch.tensor([2] * M, device=DEV)
    kc, vc = rand(5, HKV, D, dtype=dtype), rand(5, HKV, D, dtype=dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q = gemv.gemv_norm_rope_kv_triton(x, g, 1e-6, w, None, pos, cos_sin, kc, vc, loc, HQ)
    q_ref = gemv.gemv_norm_rope_kv_ref(x, g, 1e-6, w, None, pos, cos_sin, kc_ref, vc_ref,
                                       loc, HQ)
    assert rel_err(q, q_ref) <= TOL[dtype]
    assert rel_err(kc, kc_ref) <= TOL[dtype] and rel_err(vc, vc_ref) <= TOL[dtype]


def test_rotary_store_kv_at_head_dim_256():
    D, dtype = 256, torch.bfloat16
    q, k, v = rand(3, 8, D, dtype=dtype), rand(3, 1, D, dtype=dtype), rand(3, 1, D, dtype=dtype)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=DEV).float() / D)
    cos_sin = torch.arange(20, device=DEV).float()[:, None] * inv_freq
    cos_sin = torch.cat((cos_sin.cos(), cos_sin.sin()), dim=-1)
    pos = torch.tensor([0, 7, 19], device=DEV)
    loc = torch.tensor([4, 0, 2], device=DEV)
    kc, vc = rand(6, 1, D, dtype=dtype), rand(6, 1, D, dtype=dtype)
    q_ref, k_ref, kc_ref, vc_ref = q.clone(), k.clone(), kc.clone(), vc.clone()
    kernels.rotary_store_kv_triton(q, k, v, pos, cos_sin, kc, vc, loc)
    kernels.apply_rotary_ref(q_ref, k_ref, pos, cos_sin)
    kernels.store_kv_ref(kc_ref, vc_ref, k_ref, v, loc)
    assert rel_err(q, q_ref) <= TOL[dtype] and rel_err(kc, kc_ref) <= TOL[dtype]
    assert torch.equal(vc, vc_ref)


def test_wide_kv_rows_default_to_one_stage_of_smaller_blocks(monkeypatch):
    """Head dim 256 in float32 (1 KiB K/V rows): the untuned default (the warm-up's and a
    graph capture's, until tuning runs) is one pipeline stage of 32-row blocks, whose shared
    memory fits an H100; narrower rows keep the default they had."""
    from aiollm.kernels import decode_attention_configs as dc

    seen = []
    monkeypatch.setattr(dc, "get_config", lambda kernel, key, device, default, *args, **kw:
                        seen.append(default) or default)
    for D, dtype in ((256, torch.float32), (256, torch.bfloat16), (128, torch.float32)):
        dc._config(1, 8, 1, D, dtype, DEV, 512, None)
    assert seen == [dc.WIDE_ROW_CONFIG, dc.DEFAULT_CONFIG, dc.DEFAULT_CONFIG]


def test_wide_row_defaults_compute_attention_at_head_dim_256_in_float32():
    """The wide-row defaults (one stage, 32-row K/V blocks) are the configs a float32 Gemma's
    untuned GPU run launches: decode and extend attention under them equal their
    references (the interpreter runs them as given, the CPU configs aside)."""
    import importlib

    from aiollm.kernels import decode_attention_configs as dc

    # the module: aiollm.kernels exports a function of the same name
    ea = importlib.import_module("aiollm.kernels.extend_attention")
    D, dtype, HQ, HKV = 256, torch.float32, 8, 1
    seq_lens, prefix_lens, extend_lens = [1, 70], [0, 41], [1, 29]
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, DEV)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    q = rand(len(seq_lens), HQ, D, dtype=dtype)
    args = (q, k_cache, v_cache, table, rows, lens, D**-0.5, max(seq_lens))
    out = kernels.decode_attention_triton(*args, config=dc.WIDE_ROW_CONFIG)
    assert rel_err(out, kernels.decode_attention_ref(*args)) <= TOL[dtype]
    q = rand(sum(extend_lens), HQ, D, dtype=dtype)
    ext = torch.tensor(extend_lens, dtype=torch.int32, device=DEV)
    starts = torch.cumsum(ext, 0, dtype=torch.int32) - ext
    pre = torch.tensor(prefix_lens, dtype=torch.int32, device=DEV)
    args = (q, k_cache, v_cache, table, rows, pre, ext, starts, D**-0.5, max(extend_lens))
    out = kernels.extend_attention_triton(*args, config=ea.WIDE_ROW_CONFIG)
    assert rel_err(out, kernels.extend_attention_ref(*args)) <= TOL[dtype]
