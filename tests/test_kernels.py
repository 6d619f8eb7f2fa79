"""Every Triton kernel against its PyTorch reference, on fresh random inputs.

Without CUDA the kernels run under Triton's CPU interpreter at tiny shapes; the tests marked
`gpu` repeat the checks at Llama-3-8B shapes in bf16. Outputs and scratch buffers are poisoned
(torch.empty fills NaN in deterministic mode) so an element a kernel fails to write shows up as
NaN in the comparison.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm import kernels  # noqa: E402
from aiollm.kernels import autotune  # noqa: E402
from aiollm.kernels.decode_attention_configs import CANDIDATES as DECODE_CANDIDATES  # noqa: E402
from aiollm.kernels.decode_splits import num_kv_splits  # noqa: E402
from aiollm.kernels.extend_attention import CANDIDATES as EXTEND_CANDIDATES  # noqa: E402

CPU = torch.device("cpu")
CUDA = torch.device("cuda") if torch.cuda.is_available() else None
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(CUDA is None, reason="needs a CUDA GPU")
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "output has unwritten (NaN) elements"
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"


# ---- elementwise kernels ---------------------------------------------------------------------

@pytest.mark.parametrize("T,H", [(1, 16), (7, 33), (5, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(T, H, dtype, with_residual, device=CPU):
    x = torch.randn(T, H, dtype=dtype, device=device)
    w = torch.randn(H, dtype=dtype, device=device)
    res = torch.randn(T, H, dtype=dtype, device=device) if with_residual else None
    out = kernels.rms_norm_triton(x, w, 1e-6, res)
    ref = kernels.rms_norm_ref(x, w, 1e-6, res)
    if with_residual:
        assert out[1].dtype == ref[1].dtype == torch.float32  # the residual stream
        assert_close(out[0], ref[0], dtype)
        assert_close(out[1], ref[1], torch.float32)
    else:
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("fn", [kernels.rms_norm_triton, kernels.rms_norm_ref])
def test_rms_norm_adds_into_the_residual_stream_in_place(fn, device=CPU):
    """residual_out = residual: the sum lands in the stream itself (the prefill graphs keep
    the stream in one static buffer); a wrong buffer is refused by name."""
    x = torch.randn(6, 40, dtype=torch.bfloat16, device=device)
    w = torch.randn(40, dtype=torch.bfloat16, device=device)
    stream = torch.randn(6, 40, dtype=torch.float32, device=device)
    want = kernels.rms_norm_ref(x, w, 1e-6, stream.clone())
    h, res = fn(x, w, 1e-6, stream, residual_out=stream)
    assert res.data_ptr() == stream.data_ptr()
    assert_close(stream, want[1], torch.float32)
    assert_close(h, want[0], torch.bfloat16)
    with pytest.raises(ValueError, match="residual_out"):
        fn(x, w, 1e-6, stream, residual_out=stream.to(torch.bfloat16))
    with pytest.raises(ValueError, match="residual_out needs a residual"):
        fn(x, w, 1e-6, None, residual_out=stream)


@pytest.mark.parametrize("T,I", [(1, 8), (7, 37), (3, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(T, I, dtype, device=CPU):
    x = torch.randn(T, 2 * I, dtype=dtype, device=device)
    assert_close(kernels.silu_and_mul_triton(x), kernels.silu_and_mul_ref(x), dtype)


def make_cos_sin(max_pos: int, D: int, device) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D)
    freqs = torch.arange(max_pos, dtype=torch.float32, device=device)[:, None] * inv_freq
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@pytest.mark.parametrize("T,HQ,HKV,D", [(1, 2, 2, 16), (7, 4, 1, 32), (5, 6, 2, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary(T, HQ, HKV, D, dtype, device=CPU):
    # q and k as views into a fused qkv projection output: strided, as the model passes them.
    qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dtype, device=device)
    q = qkv[:, : HQ * D].view(T, HQ, D)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(T, HKV, D)
    v_before = qkv[:, (HQ + HKV) * D :].clone()
    positions = torch.randint(0, 100, (T,), device=device)
    cos_sin = make_cos_sin(100, D, device)
    q_ref, k_ref = q.clone(), k.clone()
    kernels.apply_rotary_ref(q_ref, k_ref, positions, cos_sin)
    kernels.apply_rotary_triton(q, k, positions, cos_sin)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    assert torch.equal(qkv[:, (HQ + HKV) * D :], v_before), "v must be untouched"


def _rotary_store_case(T, HQ, HKV, D, dtype, device, scale=1.0):
    """q, k, v (views of one random projection [T, (HQ + 2 HKV) D]), positions, the cos/sin
    cache, T distinct KV slots and the cache size S they lie in."""
    qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=dtype, device=device) * scale
    q = qkv[:, : HQ * D].view(T, HQ, D)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(T, HKV, D)
    v = qkv[:, (HQ + HKV) * D :].view(T, HKV, D)
    S = 3 * T + 5
    return (q, k, v, torch.randint(0, 100, (T,), device=device), make_cos_sin(100, D, device),
            torch.randperm(S, device=device)[:T], S)


@pytest.mark.parametrize("T,HQ,HKV,D", [(1, 2, 2, 16), (7, 4, 1, 32), (5, 6, 3, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_store_kv(T, HQ, HKV, D, dtype, device=CPU):
    """The fused kernel equals apply_rotary then store_kv: q rotated in place, rotated k in
    its cache slot, v copied to its slot, every other slot untouched."""
    q, k, v, positions, cos_sin, loc, S = _rotary_store_case(T, HQ, HKV, D, dtype, device)
    k_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    v_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    q_ref, k_ref, kc_ref, vc_ref = q.clone(), k.clone(), k_cache.clone(), v_cache.clone()
    kernels.apply_rotary_ref(q_ref, k_ref, positions, cos_sin)
    kernels.store_kv_ref(kc_ref, vc_ref, k_ref, v.clone(), loc)
    kernels.rotary_store_kv_triton(q, k, v, positions, cos_sin, k_cache, v_cache, loc)
    assert_close(q, q_ref, dtype)
    assert_close(k_cache[loc], kc_ref[loc], dtype)
    assert torch.equal(v_cache, vc_ref)
    other = torch.ones(S, dtype=torch.bool, device=device)
    other[loc] = False
    assert torch.equal(k_cache[other], kc_ref[other])


@pytest.mark.parametrize("T,HQ,HKV,D", [(1, 2, 2, 16), (5, 6, 3, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_store_kv_with_qk_norms(T, HQ, HKV, D, dtype, device=CPU):
    """With Qwen3's per-head q/k norms folded in: each head normalised and scaled, then
    rotated and stored, against the reference in float32 (the kernel does not round the
    normalised heads before rotating them)."""
    q, k, v, positions, cos_sin, loc, S = _rotary_store_case(T, HQ, HKV, D, dtype, device, 3.0)
    qw = (torch.rand(D, device=device) + 0.5).to(dtype)
    kw = (torch.rand(D, device=device) + 0.5).to(dtype)
    k_cache = torch.zeros(S, HKV, D, dtype=dtype, device=device)
    v_cache = torch.zeros(S, HKV, D, dtype=dtype, device=device)
    kc_ref, vc_ref = k_cache.float(), v_cache.float()
    q_ref = kernels.rotary_store_kv(q.float(), k.float(), v.float(), positions, cos_sin.float(),
                                    kc_ref, vc_ref, loc, qw.float(),
                                    kw.float(), 1e-6)
    kernels.rotary_store_kv_triton(q, k, v, positions, cos_sin, k_cache, v_cache, loc, qw, kw,
                                   1e-6)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2,
                                                                         "atol": 2e-2}
    torch.testing.assert_close(q.float(), q_ref, **tol)
    torch.testing.assert_close(k_cache.float(), kc_ref, **tol)
    torch.testing.assert_close(v_cache.float(), vc_ref, **tol)
    torch.testing.assert_close(k.float(), kc_ref[loc], **tol)  # k rotated in place too


@pytest.mark.parametrize("T,HKV,D", [(1, 1, 16), (9, 2, 32), (4, 3, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv(T, HKV, D, dtype, device=CPU):
    S = 40
    k_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    v_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    k = torch.randn(T, HKV, D, dtype=dtype, device=device)
    v = torch.randn(T, HKV, D, dtype=dtype, device=device)
    loc = torch.randperm(S, device=device)[:T]
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kernels.store_kv_ref(k_ref, v_ref, k, v, loc)
    kernels.store_kv_triton(k_cache, v_cache, k, v, loc)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


# ---- attention -------------------------------------------------------------------------------

def make_pool(seq_lens: list[int], HKV: int, D: int, dtype, device, spare: int = 7):
    """A KV pool whose requests own scattered slots, and a req_to_token table whose unused
    entries point at other valid slots (a kernel reading past a length gets wrong numbers)."""
    S = sum(seq_lens) + spare
    L = max(seq_lens) + 5
    k_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    v_cache = torch.randn(S, HKV, D, dtype=dtype, device=device)
    R = len(seq_lens) + 2
    table = torch.randint(0, S, (R, L), dtype=torch.int32, device=device)
    rows = torch.randperm(R, device=device)[: len(seq_lens)].to(torch.int32)
    slots = torch.randperm(S, device=device).to(torch.int32)
    start = 0
    for row, n in zip(rows.tolist(), seq_lens):
        table[row, :n] = slots[start : start + n]
        start += n
    return k_cache, v_cache, table, rows


DECODE_CASES = [
    # seq_lens, HQ, HKV, D, num_splits (None: the rule)
    ([1], 2, 2, 16, None),
    ([45], 4, 1, 32, 3),
    ([1, 17, 45], 4, 2, 16, 1),
    ([1, 17, 45], 4, 2, 16, 4),
    ([33, 5], 6, 2, 32, None),
    # Qwen2.5-0.5B's heads (7 query heads in a 16-row tile, D 64), a context ending on a
    # block's end, MAX_SPLITS splits (most of them empty), merged in the kernel
    ([16, 97], 14, 2, 64, 64),
]


@pytest.mark.parametrize("seq_lens,HQ,HKV,D,num_splits", DECODE_CASES)
# float16, not bfloat16, on the CPU: Triton 3.9's interpreter returns garbage for tl.dot of
# bfloat16 operands (relative error ~1e9, 2026-12-01); the gpu tests run bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_attention(seq_lens, HQ, HKV, D, num_splits, dtype, device=CPU, config=None,
                          merge_in_kernel=None, long_only=None):
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, device)
    B = len(seq_lens)
    q = torch.randn(B, HQ, D, dtype=dtype, device=device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    args = (q, k_cache, v_cache, table, rows, lens, D**-0.5, max(seq_lens))
    out = kernels.decode_attention_triton(*args, num_splits=num_splits, config=config,
                                          merge_in_kernel=merge_in_kernel, long_only=long_only)
    assert_close(out, kernels.decode_attention_ref(*args), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_attention_splits_only_long_contexts(dtype, device=CPU):
    """A launch of one split still splits a context over twice the batch's mean (one long
    conversation among short ones): up to `long_only` splits for it, the others whole and
    written directly, their empty splits returning at once. Twice, so an arrival counter
    left non-zero shows; a batch with no long context; a batch of one."""
    for _ in range(2):
        test_decode_attention([10, 12, 9, 11, 300, 7], 4, 2, 16, 1, dtype, device,
                              long_only=4)
    test_decode_attention([40, 33, 47, 35], 4, 2, 16, 1, dtype, device, long_only=4)
    test_decode_attention([301], 6, 2, 32, 1, dtype, device, long_only=8)
    # two long ones of different lengths (over twice the mean of 32: 64 tokens in whole
    # blocks), one of them past long_only x that: 100 in two splits, 225 in three (of 80)
    test_decode_attention([5, 6, 100, 7, 225, 4, 5, 6, 5, 6, 7, 4], 4, 1, 16, 1, dtype,
                          device, long_only=3)
    # long_only takes the place of one split only: an explicit split count stands
    test_decode_attention([10, 12, 9, 11, 300, 7], 4, 2, 16, 3, dtype, device, long_only=4)


def test_long_only_launches_from_eight_thousand_tokens():
    """long_splits offers splits to long contexts only where a launch's bound allows four or
    more of them; launch_variant names the long-only kernel for the warm-up."""
    from aiollm.kernels.decode_attention import launch_variant
    from aiollm.kernels.decode_splits import long_splits

    assert [long_splits(n) for n in (4096, 8191, 8192, 16384, 131072)] == [1, 1, 4, 4, 4]
    cpu = torch.device("cpu")
    assert launch_variant(64, 8, 2, 64, torch.float32, cpu, 8192)[1:] == (True, True, True)
    assert launch_variant(64, 8, 2, 64, torch.float32, cpu, 4096)[1:] == (False, False, False)
    assert launch_variant(1, 8, 2, 64, torch.float32, cpu, 8192)[1:] == (True, True, False)


@pytest.mark.parametrize("merge_in_kernel", [True, False])
def test_decode_attention_merge(merge_in_kernel, device=CPU):
    """Splits merged by the last split program or by a reduce launch, some of them empty;
    the long request uses 10 of its 11 splits (32 tokens each), more than the merge reads at a
    time (4 at these heads: 16 query heads to a KV head, D 64), so the merge crosses two of
    its chunk boundaries; twice, so a counter left non-zero shows. Under the CPU interpreter
    the cost is the program count (B x HKV x splits), not the context length."""
    for _ in range(2):
        test_decode_attention([1, 40, 97], 8, 2, 16, 7, torch.float32, device,
                              merge_in_kernel=merge_in_kernel)
        test_decode_attention([1, 40, 300], 16, 1, 64, 11, torch.float32, device,
                              merge_in_kernel=merge_in_kernel)


EXTEND_CASES = [
    # prefix_lens, extend_lens, HQ, HKV, D
    ([0], [23], 2, 2, 16),
    ([30], [1], 4, 1, 32),
    ([0, 5, 13], [1, 19, 7], 4, 2, 16),
    ([17, 0], [33, 16], 2, 1, 32),
]


@pytest.mark.parametrize("prefix_lens,extend_lens,HQ,HKV,D", EXTEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extend_attention(prefix_lens, extend_lens, HQ, HKV, D, dtype, device=CPU, config=None):
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_cache, v_cache, table, rows = make_pool(seq_lens, HKV, D, dtype, device)
    T = sum(extend_lens)
    q = torch.randn(T, HQ, D, dtype=dtype, device=device)
    ext = torch.tensor(extend_lens, dtype=torch.int32, device=device)
    starts = torch.cumsum(ext, 0, dtype=torch.int32) - ext
    pre = torch.tensor(prefix_lens, dtype=torch.int32, device=device)
    args = (q, k_cache, v_cache, table, rows, pre, ext, starts, D**-0.5, max(extend_lens))
    out = kernels.extend_attention_triton(*args, config=config)
    assert_close(out, kernels.extend_attention_ref(*args), dtype)


@pytest.mark.parametrize("lazy", [0, 1])
def test_extend_attention_other_blocks(lazy):
    # BLOCK_M != BLOCK_N takes other loop paths; both ways of rescaling the softmax.
    cfg = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1, "LAZY": lazy}
    test_extend_attention([3, 0], [21, 40], 4, 2, 16, torch.float32, config=cfg)


def test_extend_attention_lazy_rescale_with_growing_scores():
    # Scores that rise along the keys force the lazy path to rescale several times.
    HQ, HKV, D, n = 2, 1, 16, 64
    k_cache, v_cache, table, rows = make_pool([n], HKV, D, torch.float32, CPU)
    slots = table[rows[0], :n].long()
    k_cache[slots] = torch.linspace(0, 30, n)[:, None, None] * torch.ones(HKV, D)
    q = torch.ones(n, HQ, D)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    args = (q, k_cache, v_cache, table, rows, i32(0), i32(n), i32(0), D**-0.5, n)
    assert_close(kernels.extend_attention_triton(*args), kernels.extend_attention_ref(*args),
                 torch.float32)


@pytest.mark.parametrize("impl", ["triton", "ref"])
def test_attention_writes_into_a_given_out(impl, device=CPU):
    """out=: a mixed step's extend rows and decode rows land in one buffer (the prefill
    graphs' static o), the rest of it untouched; a buffer of another shape is refused."""
    ext_fn = getattr(kernels, f"extend_attention_{impl}")
    dec_fn = getattr(kernels, f"decode_attention_{impl}")
    HQ, HKV, D = 4, 2, 16
    seq = [9, 14, 5, 20]  # two decodes (contexts 9, 14), then two prompts of 5 and 20 tokens
    k_cache, v_cache, table, rows = make_pool(seq, HKV, D, torch.float32, device)
    T = 2 + 5 + 20
    q = torch.randn(T, HQ, D, device=device)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    e_args = (q, k_cache, v_cache, table, rows[2:], i32(0, 0), i32(5, 20), i32(2, 7),
              D**-0.5, 20)
    d_args = (q[:2], k_cache, v_cache, table, rows[:2], i32(9, 14), D**-0.5, 14)
    buf = torch.full((T + 3, HQ, D), 7.0, device=device)
    out = buf[:T]
    assert ext_fn(*e_args, out=out).data_ptr() == out.data_ptr()
    assert dec_fn(*d_args, out=out[:2]).data_ptr() == out.data_ptr()
    assert_close(out[2:], kernels.extend_attention_ref(*e_args)[2:], torch.float32)
    assert_close(out[:2], kernels.decode_attention_ref(*d_args), torch.float32)
    assert (buf[T:] == 7.0).all()
    with pytest.raises(ValueError, match="attention out"):
        ext_fn(*e_args, out=buf)


@pytest.mark.parametrize("num_splits,merge_in_kernel", [(1, True), (5, True), (5, False)])
def test_decode_attention_writes_into_a_strided_view(num_splits, merge_in_kernel, device=CPU):
    """The split paths write their merged rows through out's strides: a view of a larger
    buffer (rows and heads around it) gets the reference, and nothing around it changes."""
    HQ, HKV, D = 6, 2, 16
    seq = [1, 40, 97]
    k_cache, v_cache, table, rows = make_pool(seq, HKV, D, torch.float32, device)
    q = torch.randn(len(seq), HQ, D, device=device)
    args = (q, k_cache, v_cache, table, rows, torch.tensor(seq, dtype=torch.int32,
                                                           device=device), D**-0.5, max(seq))
    buf = torch.full((len(seq) + 4, HQ + 3, D), 7.0, device=device)
    out = buf[2 : 2 + len(seq), 1 : 1 + HQ]
    kernels.decode_attention_triton(*args, num_splits=num_splits,
                                    merge_in_kernel=merge_in_kernel, out=out)
    assert_close(out, kernels.decode_attention_ref(*args), torch.float32)
    outside = torch.ones_like(buf, dtype=torch.bool)
    outside[2 : 2 + len(seq), 1 : 1 + HQ] = False
    assert (buf[outside] == 7.0).all()


@pytest.mark.parametrize("impl", ["triton", "ref"])
def test_attention_out_of_another_kind_is_refused_saying_what_differs(impl, device=CPU):
    """A transposed head dim is named by its strides (its dtype and shape are right), and a
    buffer on another device is refused, not copied into."""
    fn = getattr(kernels, f"decode_attention_{impl}")
    HQ, HKV, D = 4, 2, 16
    k_cache, v_cache, table, rows = make_pool([5, 9], HKV, D, torch.float32, device)
    q = torch.randn(2, HQ, D, device=device)
    args = (q, k_cache, v_cache, table, rows,
            torch.tensor([5, 9], dtype=torch.int32, device=device), D**-0.5, 9)
    with pytest.raises(ValueError, match=r"strides \(64, 1, 4\)"):
        fn(*args, out=torch.empty(2, D, HQ, device=device).transpose(1, 2))
    with pytest.raises(ValueError, match="on meta"):
        fn(*args, out=torch.empty(2, HQ, D, device="meta"))


def test_extend_without_prefix_matches_decode_of_last_token():
    # The last query of a prefill sees exactly what a decode step at that length sees.
    HQ, HKV, D, n = 4, 2, 16, 21
    k_cache, v_cache, table, rows = make_pool([n], HKV, D, torch.float32, CPU)
    q = torch.randn(n, HQ, D)
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    ext = kernels.extend_attention_triton(q, k_cache, v_cache, table, rows, i32(0), i32(n),
                                          i32(0), D**-0.5, n)
    dec = kernels.decode_attention_triton(q[-1:], k_cache, v_cache, table, rows, i32(n),
                                          D**-0.5, n)
    assert_close(dec[0], ext[-1], torch.float32)


def test_split_rule():
    # Many requests fill the GPU alone; a single long request is cut into many splits;
    # short contexts are never cut below split_tokens.
    assert num_kv_splits(256, 8, 4096, 132, 256) == 1
    assert num_kv_splits(1, 8, 4096, 132, 256) == 16
    assert num_kv_splits(1, 8, 300, 132, 256) == 2
    # one program an SM (batch x KV heads >= SMs) is enough: no split (bench/decode_splits.py)
    assert num_kv_splits(64, 8, 4096, 132, 256) == 1
    assert num_kv_splits(17, 8, 4096, 132, 256) == 1
    assert num_kv_splits(33, 4, 1200, 132, 32) == 1
    assert num_kv_splits(16, 8, 4096, 132, 256) == 5  # 128 programs: toward four an SM
    assert num_kv_splits(32, 4, 4096, 132, 1024) == 4


def test_dispatch_uses_reference_on_cpu():
    x = torch.randn(3, 8)
    assert torch.equal(kernels.silu_and_mul(x), kernels.silu_and_mul_ref(x))
    w = torch.randn(8)
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), kernels.rms_norm_ref(x, w, 1e-5))


def test_autotune_on_cpu_uses_default(monkeypatch):
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "2")
    called = []
    cfg = autotune.get_config("k", "key", CPU, {"a": 1}, [{"a": 2}], lambda c: called.append(c))
    assert cfg == {"a": 1} and not called
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "3")
    with pytest.raises(ValueError, match="AIOLLM_AUTOTUNE"):
        autotune.autotune_mode()
    monkeypatch.delenv("AIOLLM_AUTOTUNE")
    assert autotune.autotune_mode() == autotune.AUTO


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_time_graph_times_the_device_not_the_host():
    """A forward whose host work dwarfs its device work (a 20 ms sleep between two tiny
    launches): time_config times the host, time_graph the graph's two kernels."""
    import time

    x = torch.ones(1024, device="cuda")

    def fn():
        x.add_(1)
        time.sleep(0.02)
        x.mul_(1)

    assert autotune.time_config(fn) > 15
    assert autotune.time_graph(fn) < 1


def test_nearest_class_matches_the_shape_and_takes_an_adjacent_class():
    entries = {"hq32-hkv8-d128-bfloat16-b256-n1024": {"c": 1},
               "hq32-hkv8-d128-bfloat16-b256-n4096": {"c": 2},
               "hq32-hkv8-d128-bfloat16-b64-n2048": {"c": 3},
               "hq32-hkv8-d128-bfloat16-b1-n512": {"c": 7},
               "hq32-hkv4-d128-bfloat16-b256-n2048": {"c": 4},  # another shape
               "hq32-hkv8-d128-float16-b256-n2048": {"c": 5}}  # another dtype
    near = autotune.nearest_class
    sizes = {"b": (1, 4, 16, 64, 256), "n": (512, 1024, 2048, 4096)}
    key = "hq32-hkv8-d128-bfloat16-b256-n2048"
    # three classes one step away: the tie goes to the larger classes
    assert near(entries, key, sizes) == ("hq32-hkv8-d128-bfloat16-b256-n4096", {"c": 2})
    assert near(entries, "hq32-hkv8-d128-bfloat16-b16-n2048", sizes)[1] == {"c": 3}
    # two steps away (b4-n1024 from b1-n512) is too far: tune instead
    assert near(entries, "hq32-hkv8-d128-bfloat16-b4-n1024", sizes) is None
    assert near(entries, "hq32-hkv8-d128-bfloat16-b4-n1024", sizes, max_steps=2)[1] == {"c": 7}
    assert near(entries, "hq32-hkv2-d128-bfloat16-b256-n2048", sizes) is None
    assert near(entries, key, {}) is None  # no size classes: nothing to borrow from
    # "bfloat16" is no class part though it ends in digits; other shape parts must match
    t = {"t": (16, 32, 64)}
    assert near({"e8-n64-k32-top2-t16": {"c": 6}}, "e8-n64-k32-top2-t32", t)[1] == {"c": 6}
    assert near({"e8-n64-k32-top2-t16": {"c": 6}}, "e8-n64-k64-top2-t32", t) is None


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """get_config on a pretend GPU whose config table is tmp_path/Fake_GPU.json: write the
    table, then look keys up on the returned device."""
    monkeypatch.setattr(autotune, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(autotune, "_tables", {})
    monkeypatch.setattr(autotune, "_resolved", {})
    monkeypatch.setattr(autotune, "gpu_slug", lambda index: "Fake_GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return torch.device("cuda")


def test_autotune_modes(fake_gpu, tmp_path, monkeypatch):
    # The cache logic on a pretend GPU: tune when missing, reuse, retune in mode 2, never in 0.
    dev = fake_gpu
    timed = []

    def bench(cfg):
        timed.append(cfg)
        return 1.0 / cfg["a"]  # larger a is faster

    def lookup(key, mode):
        monkeypatch.setenv("AIOLLM_AUTOTUNE", str(mode))
        return autotune.get_config("k", key, dev, {"a": 0}, [{"a": 1}, {"a": 3}, {"a": 2}], bench)

    assert lookup("x", 0) == {"a": 0} and not timed
    assert lookup("y", 1) == {"a": 3} and len(timed) == 3
    assert json.loads((tmp_path / "Fake_GPU.json").read_text()) == {"k": {"y": {"a": 3}}}
    assert lookup("y", 1) == {"a": 3} and len(timed) == 3
    autotune._resolved.clear()
    autotune._tables.clear()
    assert lookup("y", 0) == {"a": 3} and len(timed) == 3  # read back from the file
    autotune._resolved.clear()
    assert lookup("y", 2) == {"a": 3} and len(timed) == 6

    # size classes (AIOLLM_AUTOTUNE=auto, the default): a key missing from the table takes
    # its nearest class's config untimed when the table knows the shape, and tunes otherwise
    def lookup_sized(key, mode):
        if mode is None:
            monkeypatch.delenv("AIOLLM_AUTOTUNE", raising=False)
        else:
            monkeypatch.setenv("AIOLLM_AUTOTUNE", str(mode))
        return autotune.get_config("s", key, dev, {"a": 0}, [{"a": 1}, {"a": 3}], bench,
                                   classes={"b": (1, 4, 16, 64, 256)})

    assert lookup_sized("h4-b64", None) == {"a": 3} and len(timed) == 8  # unknown shape: tuned
    assert lookup_sized("h4-b256", None) == {"a": 3} and len(timed) == 8  # borrowed from b64
    assert "h4-b256" not in json.loads((tmp_path / "Fake_GPU.json").read_text())["s"]
    assert lookup_sized("h8-b256", 0) == {"a": 0} and len(timed) == 8  # no h8 class: default
    assert lookup_sized("h4-b4", 0) == {"a": 0} and len(timed) == 8  # 2 classes off: default
    autotune._resolved.clear()
    assert lookup_sized("h4-b4", None) == {"a": 3} and len(timed) == 10  # auto: tuned
    assert lookup_sized("h4-b1", 1) == {"a": 3} and len(timed) == 12  # mode 1 tunes it
    with autotune.untuned():  # a capture: b16 borrows from b64 (the larger tie), timing nothing
        assert lookup_sized("h4-b16", None) == {"a": 3} and len(timed) == 12


def test_a_tuned_config_that_cannot_be_saved_leaves_no_temporary_file(fake_gpu, tmp_path,
                                                                      monkeypatch, caplog):
    # the table is written to a temporary file in its folder (the package's own), then
    # renamed over it: a write that failed after the temporary file was made (a full disk,
    # a rename refused: here a folder in the table's place) left that file behind, one
    # more at each tuning; the failure is still only a warning and the tuned config serves
    (tmp_path / "Fake_GPU.json").mkdir()
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "1")
    for key in ("x", "y"):
        assert autotune.get_config("k", key, fake_gpu, {"a": 0}, [{"a": 1}, {"a": 3}],
                                   lambda cfg: 1.0 / cfg["a"]) == {"a": 3}
    assert "could not write tuned kernel configs" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Fake_GPU.json"]


def test_autotune_tunes_a_borrowed_class_once_mode_1_is_set(fake_gpu, tmp_path, monkeypatch):
    # bench/attention.py --tune-serving-shapes times kernels in the default mode first (classes
    # missing from the table borrow), then sets AIOLLM_AUTOTUNE=1 to tune those classes: the
    # borrowed answer this process remembered must not stand in for the tuning
    (tmp_path / "Fake_GPU.json").write_text(json.dumps({"s": {"h4-b64": {"a": 1}}}))
    timed = []

    def lookup(mode):
        if mode is None:
            monkeypatch.delenv("AIOLLM_AUTOTUNE", raising=False)
        else:
            monkeypatch.setenv("AIOLLM_AUTOTUNE", mode)
        return autotune.get_config("s", "h4-b256", fake_gpu, {"a": 0}, [{"a": 1}, {"a": 3}],
                                   lambda cfg: timed.append(cfg) or 1.0 / cfg["a"],
                                   classes={"b": (1, 4, 16, 64, 256)})

    assert lookup(None) == {"a": 1} and not timed  # borrowed from b64
    assert lookup("0") == {"a": 1} and not timed
    assert lookup("1") == {"a": 3} and len(timed) == 2  # tuned now, and written back
    assert json.loads((tmp_path / "Fake_GPU.json").read_text())["s"]["h4-b256"] == {"a": 3}
    assert lookup(None) == {"a": 3} and lookup("2") == {"a": 3} and len(timed) == 2


def test_autotune_borrows_a_config_the_key_could_be_tuned_to_first(fake_gpu, tmp_path,
                                                                    monkeypatch):
    # Of two adjacent classes, the one whose config is among this key's candidates (extend
    # attention's BLOCK_M up to the longest extend, a MoE BLOCK_M near the pairs per expert)
    # is borrowed before the larger one; a lone neighbour outside them is still borrowed
    (tmp_path / "Fake_GPU.json").write_text(json.dumps({"s": {"h4-m64": {"a": 1},
                                                              "h4-m1024": {"a": 3}}}))
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "0")
    sized = {"m": (64, 256, 1024, 4096)}
    assert autotune.get_config("s", "h4-m256", fake_gpu, {"a": 0}, [{"a": 1}, {"a": 2}], None,
                               classes=sized) == {"a": 1}
    assert autotune.get_config("s", "h4-m4096", fake_gpu, {"a": 0}, [{"a": 1}], None,
                               classes=sized) == {"a": 3}


def test_moe_borrows_a_block_m_of_its_own_token_class(fake_gpu, tmp_path, monkeypatch):
    # Qwen3-30B-A3B's shape (128 experts, top 8): 256 tokens are 16 pairs per expert, tuned
    # among BLOCK_M 16 and 32. With its class missing, the tie between t128 (BLOCK_M 16) and
    # t512 (BLOCK_M 64, 4x the rows an expert fills) goes to the config t256 could have had
    from aiollm.kernels.fused_moe_gemm_configs import moe_configs

    def up(bm):
        return {"BLOCK_M": bm, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4,
                "num_stages": 4}

    down = {"BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
    down_big = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "TMA": 1, "num_warps": 4,
                "num_stages": 4}
    shape = "e128-n1536-k2048-top8"
    (tmp_path / "Fake_GPU.json").write_text(json.dumps({
        "fused_moe_gate_up": {f"{shape}-t128": up(16), f"{shape}-t512": up(64)},
        "fused_moe_down": {"e128-n2048-k768-top8-t128-m16": down,
                           "e128-n2048-k768-top8-t512-m64": down_big}}))
    monkeypatch.delenv("AIOLLM_AUTOTUNE", raising=False)
    assert moe_configs(200, 128, 2048, 768, 8, fake_gpu) == (up(16), {"BLOCK_M": 16, **down})



def test_moe_path_and_gemv_classes_borrow_too(fake_gpu, tmp_path, monkeypatch):
    # The layer's path is tuned per token class by timing whole forwards (and the GEMV path's
    # configs per class too): a class missing next to tuned ones borrows like the GEMMs'
    # configs, instead of stalling a server for the forwards' timings (no bench_inputs here:
    # a tuning would fail)
    from aiollm.kernels.fused_moe import moe_path
    from aiollm.kernels.fused_moe_gemm_configs import TOKEN_CLASSES
    from aiollm.kernels.fused_moe_gemv import gemv_configs

    gemv_up = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 2, "num_stages": 3}
    gemv_down = {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 8, "num_stages": 2}
    (tmp_path / "Fake_GPU.json").write_text(json.dumps({
        "fused_moe_path": {"e128-n1536-k2048-top8-t8192": {"GEMV": 0, "TORCH_MM": 1},
                           "e128-n1536-k2048-top8-t8": {"GEMV": 1}},
        "fused_moe_gemv_gate_up": {"e128-n1536-k2048-top8-t8": gemv_up},
        "fused_moe_gemv_down": {"e128-n2048-k768-top8-t8": gemv_down}}))
    monkeypatch.delenv("AIOLLM_AUTOTUNE", raising=False)
    assert moe_path(10000, 128, 2048, 768, 8, fake_gpu) == {"GEMV": 0, "TORCH_MM": 1}
    assert moe_path(16, 128, 2048, 768, 8, fake_gpu) == {"GEMV": 1}
    assert gemv_configs(16, TOKEN_CLASSES, 128, 2048, 768, 8, fake_gpu) == (gemv_up, gemv_down)

# ---- GPU: real shapes (Llama-3-8B heads), bf16 -------------------------------------------------

@gpu
@needs_cuda
def test_gpu_rms_norm_adds_into_the_residual_stream_in_place():
    test_rms_norm_adds_into_the_residual_stream_in_place(kernels.rms_norm_triton, device=CUDA)


@gpu
@needs_cuda
@pytest.mark.parametrize("T", [1, 333])
def test_gpu_elementwise(T):
    dt = torch.bfloat16
    test_rms_norm(T, 4096, dt, True, device=CUDA)
    test_rms_norm(T, 4096, dt, False, device=CUDA)
    test_silu_and_mul(T, 14336, dt, device=CUDA)
    test_apply_rotary(T, 32, 8, 128, dt, device=CUDA)
    test_store_kv(min(T, 40), 8, 128, dt, device=CUDA)
    test_rotary_store_kv(T, 32, 8, 128, dt, device=CUDA)
    test_rotary_store_kv_with_qk_norms(T, 32, 4, 128, dt, device=CUDA)


@gpu
@needs_cuda
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_gpu_decode_attention(num_splits):
    test_decode_attention([1, 300, 1000, 4097], 32, 8, 128, num_splits, torch.bfloat16, CUDA)
    test_decode_attention([129] * 64, 32, 8, 128, num_splits, torch.bfloat16, CUDA)
    for merge in (True, False):  # batch 1, the Llama-3.2-1B heads, up to MAX_SPLITS splits
        for splits in (5, 64):
            test_decode_attention([700], 32, 8, 64, splits, torch.bfloat16, CUDA,
                                  merge_in_kernel=merge)


@gpu
@needs_cuda
def test_gpu_decode_attention_splits_long_contexts_only():
    """The rule's long-only launch at serving batches with one long context (8B and
    Qwen3-30B-A3B heads), and explicit long-only launches with no long context at all."""
    test_decode_attention([700] * 40 + [9000], 32, 8, 128, None, torch.bfloat16, CUDA)
    test_decode_attention([1200] * 95 + [32768], 32, 4, 128, None, torch.bfloat16, CUDA)
    test_decode_attention([129] * 64, 32, 8, 128, 1, torch.bfloat16, CUDA, long_only=4)
    test_decode_attention([1, 5000, 3, 40000], 32, 8, 128, 1, torch.bfloat16, CUDA,
                          long_only=8)


@gpu
@needs_cuda
def test_gpu_decode_attention_merge_in_graph_replays():
    """The split launch merging in-kernel, captured in a CUDA graph (with PDL where the GPU
    has it) and replayed on fresh queries and lengths: the arrival counters the graph holds
    must be back at zero after every replay, or no program (or the wrong one) merges the
    next. Qwen2.5-0.5B heads (a group of 7 query heads in a 16-row tile)."""
    dt, HQ, HKV, D, splits = torch.bfloat16, 14, 2, 64, 7
    k_cache, v_cache, table, rows = make_pool([4097, 700, 64], HKV, D, dt, CUDA)
    q = torch.randn(3, HQ, D, dtype=dt, device=CUDA)
    lens = torch.tensor([4097, 700, 64], dtype=torch.int32, device=CUDA)
    args = (q, k_cache, v_cache, table, rows, lens, D**-0.5, table.shape[1])

    def launch():
        return kernels.decode_attention_triton(*args, config=DECODE_CANDIDATES[1],
                                               num_splits=splits, merge_in_kernel=True)

    assert_close(launch(), kernels.decode_attention_ref(*args), dt)  # compiles outside
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launch()
    for new_lens in ([1, 4097, 700], [64, 65, 4000], [4097, 1, 1]):
        q.copy_(torch.randn_like(q))
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        graph.replay()
        assert_close(out, kernels.decode_attention_ref(*args), dt)


@gpu
@needs_cuda
@pytest.mark.parametrize("prefix_lens,extend_lens", [([0], [2048]), ([0, 100, 700], [1, 257, 1000])])
def test_gpu_extend_attention(prefix_lens, extend_lens):
    test_extend_attention(prefix_lens, extend_lens, 32, 8, 128, torch.bfloat16, CUDA)


@gpu
@needs_cuda
def test_gpu_every_candidate_config_is_correct():
    for cfg in DECODE_CANDIDATES:
        test_decode_attention([3, 700, 2000], 32, 8, 128, None, torch.bfloat16, CUDA, config=cfg)
    for cfg in EXTEND_CANDIDATES:
        test_extend_attention([0, 300], [100, 513], 32, 8, 128, torch.bfloat16, CUDA, config=cfg)


@gpu
@needs_cuda
def test_gpu_autotune_writes_config(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(autotune, "_tables", {})
    monkeypatch.setattr(autotune, "_resolved", {})
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "2")
    test_decode_attention([50, 900], 4, 2, 64, None, torch.bfloat16, CUDA)
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    (cfg,) = saved["decode_attention"].values()
    assert cfg in DECODE_CANDIDATES


# ---- the decode graph's inputs and greedy pick ---------------------------------------------------

@pytest.mark.parametrize("bs", [1, 5, 130])
def test_decode_inputs(bs, device=CPU):
    from aiollm.kernels import decode_io

    g = torch.Generator().manual_seed(bs)
    rows, max_len = 300, 64
    raw = torch.randint(0, 1000, (bs,), generator=g)
    ph = torch.rand(bs, generator=g) < 0.5
    raw[ph] = -(torch.randint(0, 150, (int(ph.sum()),), generator=g) + 1)  # placeholders
    pos = torch.randint(0, max_len, (bs,), generator=g)
    loc = torch.randperm(100000, generator=g)[:bs]
    row = torch.randperm(rows, generator=g)[:bs]  # distinct rows, as in a batch
    inp = torch.cat([raw, pos, loc, row]).to(device)
    prev = torch.randint(0, 1000, (rows + 1,), generator=g).to(device)
    tables = [torch.randint(0, 9, (rows + 1, max_len), dtype=torch.int32, generator=g).to(device)
              for _ in range(2)]
    tables[1].copy_(tables[0])
    want_ids, want32 = decode_io.decode_inputs_ref(inp, bs, prev, tables[0])
    got_ids, got32 = decode_io.decode_inputs_triton(inp, bs, prev, tables[1])
    assert torch.equal(got_ids, want_ids) and torch.equal(got32, want32)
    assert torch.equal(tables[1], tables[0])
    assert torch.equal(want_ids[ph.to(device)], prev[(-raw[ph] - 1).to(device)])


@pytest.mark.parametrize("B,V,block", [(1, 1000, 128), (3, 5000, 256), (2, 77, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_pick(B, V, block, dtype, device=CPU):
    from aiollm.kernels import decode_io

    logits = torch.randn(B, V, dtype=torch.float32).to(dtype).to(device)
    logits[0, V // 3] = logits[0, V - 1] = logits[0].max() + 1  # a tie: the first index wins
    if B > 2:
        logits[1, 7] = float("nan")
        logits[2, V - 1] = float("-inf")
    prev = [torch.full((B + 4,), -5, dtype=torch.int64, device=device) for _ in range(2)]
    # the result also goes to slot 1 of a host buffer (page-locked where there is a GPU)
    hosts = [torch.full((3, 2 * B + 2), -7, dtype=torch.int64,
                        pin_memory=device.type == "cuda") for _ in range(2)]
    slot = torch.tensor([1], dtype=torch.int64, device=device)
    want = decode_io.greedy_pick_ref(logits, prev[0], hosts[0], slot)
    got = decode_io.greedy_pick_triton(logits, prev[1], hosts[1], slot, block=block)
    if device.type == "cuda":
        torch.cuda.synchronize()
    for host, out in zip(hosts, (want, got)):
        assert torch.equal(host[1, : 2 * B], out.cpu().view(-1))
        assert (host[1, 2 * B:] == -7).all() and (host[0] == -7).all() and (host[2] == -7).all()
    assert got.dtype == torch.int64 and got.shape == (2, B)
    assert torch.equal(got[1], want[1])  # the non-finite flags
    ok = want[1] == 0  # a bad row's pick only has to be a valid id
    assert torch.equal(got[0][ok], want[0][ok]) and int(got[0][0]) == V // 3
    assert ((got[0] >= 0) & (got[0] < V)).all()
    assert torch.equal(prev[1][:B], got[0]) and (prev[1][B:] == -5).all()


@gpu
@needs_cuda
def test_gpu_decode_io():
    test_decode_inputs(256, device=CUDA)
    test_greedy_pick(1, 128256, 4096, torch.float32, device=CUDA)
    test_greedy_pick(256, 128256, 4096, torch.float32, device=CUDA)
    test_greedy_pick(3, 49152, 4096, torch.bfloat16, device=CUDA)
