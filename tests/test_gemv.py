"""The fused decode GEMVs (aiollm/kernels/gemv.py) against their PyTorch references.

Without CUDA the kernels run under Triton's CPU interpreter at small odd shapes, with the
default launch config and a narrow one (blocks past the last row, K not a multiple of the
block, many K steps); a whole decode layer's GEMVs run at an odd model shape under wide
configs, and on a GPU at Qwen2.5-0.5B's and Llama 3.2 3B's shapes under every candidate.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from aiollm.kernels import gemv  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
CONFIGS = [gemv.DEFAULT, (1, 64, 4, 1)]  # the default, and a narrow one taking many K steps


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "output has unwritten (NaN) elements"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(params=CONFIGS, ids=lambda c: "x".join(map(str, c)))
def config(request, monkeypatch):
    monkeypatch.setattr(gemv, "DEFAULT", request.param)
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty fills NaN
    yield request.param
    torch.use_deterministic_algorithms(False)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEV).to(dtype)


@pytest.mark.parametrize("M,K,N", [(1, 37, 19), (3, 64, 33), (4, 1024, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_norm(M, K, N, dtype, config):
    x, g, w, b = rand(M, K) * 3, rand(K, dtype=dtype), rand(N, K, dtype=dtype), rand(N, dtype=dtype)
    for bias, out_dtype in ((None, None), (b, torch.float32)):
        out = gemv.gemv_norm_triton(x, g, 1e-5, w, bias, out_dtype)
        assert rel_err(out, gemv.gemv_norm_ref(x, g, 1e-5, w, bias, out_dtype)) <= TOL[dtype]


@pytest.mark.parametrize("M,K,N", [(1, 37, 19), (3, 50, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_residual_in_place(M, K, N, dtype, config):
    x, w, b = rand(M, K, dtype=dtype), rand(N, K, dtype=dtype), rand(N, dtype=dtype)
    res = rand(M, N)
    ref = gemv.gemv_residual_ref(x, w, b, res.clone())
    out = gemv.gemv_residual_triton(x, w, b, res)
    assert out.data_ptr() == res.data_ptr(), "a float32 residual is updated in place"
    assert rel_err(out, ref) <= TOL[dtype]
    if dtype == torch.float32:
        return
    # a residual stream that starts in the model dtype (the embedding) comes back in float32
    res16 = rand(M, N, dtype=dtype)
    out = gemv.gemv_residual_triton(x, w, None, res16)
    assert out.dtype == torch.float32 and out.data_ptr() != res16.data_ptr()
    assert rel_err(out, gemv.gemv_residual_ref(x, w, None, res16)) <= TOL[dtype]


@pytest.mark.parametrize("M,K,I", [(1, 37, 13), (3, 64, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_norm_silu(M, K, I, dtype, config):
    x, g, w = rand(M, K, dtype=dtype), rand(K, dtype=dtype), rand(2 * I, K, dtype=dtype)
    out = gemv.gemv_norm_silu_triton(x, g, 1e-6, w)
    assert rel_err(out, gemv.gemv_norm_silu_ref(x, g, 1e-6, w)) <= TOL[dtype]


@pytest.mark.parametrize("M,K,HQ,HKV,D", [(1, 40, 4, 2, 16), (3, 33, 6, 3, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_norm_rope_kv(M, K, HQ, HKV, D, dtype, with_bias, config):
    """q comes back rotated; rotated k and v land in their cache slots; no other slot moves."""
    N = (HQ + 2 * HKV) * D
    x, g, w = rand(M, K), rand(K, dtype=dtype), rand(N, K, dtype=dtype)
    bias = rand(N, dtype=dtype) if with_bias else None
    P, S = 50, 3 * M + 4
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=DEV).float() / D)
    freqs = torch.arange(P, device=DEV).float()[:, None] * inv_freq
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    pos = torch.randint(0, P, (M,), device=DEV)
    loc = torch.randperm(S, device=DEV)[:M]
    kc, vc = rand(S, HKV, D, dtype=dtype), rand(S, HKV, D, dtype=dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q = gemv.gemv_norm_rope_kv_triton(x, g, 1e-6, w, bias, pos, cos_sin, kc, vc, loc, HQ)
    q_ref = gemv.gemv_norm_rope_kv_ref(x, g, 1e-6, w, bias, pos, cos_sin, kc_ref, vc_ref, loc,
                                       HQ)
    assert rel_err(q, q_ref) <= TOL[dtype]
    assert rel_err(kc[loc], kc_ref[loc]) <= TOL[dtype]
    assert rel_err(vc[loc], vc_ref[loc]) <= TOL[dtype]
    other = torch.ones(S, dtype=torch.bool, device=DEV)
    other[loc] = False
    assert torch.equal(kc[other], kc_ref[other]) and torch.equal(vc[other], vc_ref[other])


def test_more_rows_than_a_gemv_takes_is_refused():
    x, w = rand(gemv.MAX_ROWS + 1, 8), rand(4, 8)
    with pytest.raises(AssertionError, match="rows"):
        gemv.gemv_residual_triton(x, w, None, rand(gemv.MAX_ROWS + 1, 4))


def test_tuning_runs_change_no_result(monkeypatch):
    """On a GPU a shape without a cached config is tuned on the caller's own tensors: each
    candidate runs many times before the real launch. The residual GEMV adds into the float32
    stream in place, so its timed runs must not write the stream (they added o_proj's output
    once per run: the layer's residual came back as residual + n * y). Here the tuner is
    stood in for by one that runs each of two candidates three times."""
    def tune_two(kernel, key, device, default, candidates, bench):
        for c in candidates[:2]:
            bench(c)
        return default

    monkeypatch.setattr(gemv, "get_config", tune_two)
    monkeypatch.setattr(gemv, "time_config", lambda fn: [fn() for _ in range(3)] and 0.0)
    M, K, N = 1, 37, 19
    x, w, b, res = rand(M, K), rand(N, K), rand(N), rand(M, N)
    ref = gemv.gemv_residual_ref(x, w, b, res.clone())
    assert rel_err(gemv.gemv_residual_triton(x, w, b, res), ref) <= TOL[torch.float32]
    g = rand(K)
    assert rel_err(gemv.gemv_norm_triton(x, g, 1e-5, w, b),
                   gemv.gemv_norm_ref(x, g, 1e-5, w, b)) <= TOL[torch.float32]
    w2 = rand(2 * N, K)
    assert rel_err(gemv.gemv_norm_silu_triton(x, g, 1e-5, w2),
                   gemv.gemv_norm_silu_ref(x, g, 1e-5, w2)) <= TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tuning_in_place_residual(tmp_path, monkeypatch):
    """The same through the real tuner (AIOLLM_AUTOTUNE=2, an empty config table): a Qwen2.5-
    0.5B-shaped o_proj (896 x 896) adding into a float32 stream, in bf16."""
    from aiollm.kernels import autotune

    monkeypatch.setattr(autotune, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(autotune, "_tables", {})
    monkeypatch.setattr(autotune, "_resolved", {})
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "2")
    x, w = rand(1, 896, dtype=torch.bfloat16), rand(896, 896, dtype=torch.bfloat16)
    res = rand(1, 896)
    ref = gemv.gemv_residual_ref(x, w, None, res.clone())
    assert rel_err(gemv.gemv_residual_triton(x, w, None, res), ref) <= TOL[torch.bfloat16]


def check_model_shape(H, HQ, HKV, D, I, V, candidates, monkeypatch, tmp_path):
    """Every GEMV of a one-token decode layer and the lm_head at one model's shape, in bf16,
    under each launch config, against references in float32: q, the KV slots at the end of
    the pool (the last position of the rotary table), the SiLU-and-mul activations, the two
    residual adds and the float32 logits."""
    from aiollm.kernels import autotune

    monkeypatch.setattr(autotune, "CONFIG_DIR", tmp_path)  # nothing cached: the default runs
    monkeypatch.setattr(autotune, "_tables", {})
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "0")
    bf = torch.bfloat16
    x, g = rand(1, H) * 3, rand(H, dtype=bf)
    w_qkv, b_qkv = rand((HQ + 2 * HKV) * D, H, dtype=bf), rand((HQ + 2 * HKV) * D, dtype=bf)
    w_o, w_up, w_down = rand(H, HQ * D, dtype=bf), rand(2 * I, H, dtype=bf), rand(H, I, dtype=bf)
    w_lm = rand(V, H, dtype=bf)
    P, S = 64, 32
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=DEV).float() / D)
    angles = torch.arange(P, device=DEV).float()[:, None] * inv_freq
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1)
    pos = torch.tensor([P - 1], device=DEV)
    loc = torch.tensor([S - 1], device=DEV)
    o, act = rand(1, HQ * D, dtype=bf), rand(1, I, dtype=bf)
    f = {t: t.float() for t in (g, w_qkv, b_qkv, w_o, w_up, w_down, w_lm, o, act)}
    kc_ref, vc_ref = torch.zeros(S, HKV, D, device=DEV), torch.zeros(S, HKV, D, device=DEV)
    q_ref = gemv.gemv_norm_rope_kv_ref(x, f[g], 1e-6, f[w_qkv], f[b_qkv], pos, cos_sin, kc_ref,
                                       vc_ref, loc, HQ)
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty fills NaN
    try:
        for c in candidates:
            monkeypatch.setattr(gemv, "DEFAULT", c)
            monkeypatch.setattr(autotune, "_resolved", {})
            kc, vc = rand(S, HKV, D, dtype=bf), rand(S, HKV, D, dtype=bf)
            q = gemv.gemv_norm_rope_kv_triton(x, g, 1e-6, w_qkv, b_qkv, pos, cos_sin, kc, vc,
                                              loc, HQ)
            errs = [rel_err(q.float(), q_ref), rel_err(kc[loc].float(), kc_ref[loc]),
                    rel_err(vc[loc].float(), vc_ref[loc])]
            errs.append(rel_err(gemv.gemv_norm_silu_triton(x, g, 1e-6, w_up).float(),
                                gemv.gemv_norm_silu_ref(x, f[g], 1e-6, f[w_up])))
            for a, w in ((o, w_o), (act, w_down)):
                res = rand(1, H)
                ref = gemv.gemv_residual_ref(f[a], f[w], None, res.clone())
                errs.append(rel_err(gemv.gemv_residual_triton(a, w, None, res), ref))
            errs.append(rel_err(gemv.gemv_norm_triton(x, g, 1e-6, w_lm, None, torch.float32),
                                gemv.gemv_norm_ref(x, f[g], 1e-6, f[w_lm], None, torch.float32)))
            assert max(errs) <= TOL[bf], (c, errs)
    finally:
        torch.use_deterministic_algorithms(False)


def test_configs_at_an_odd_model_shape(monkeypatch, tmp_path):
    """Hidden 72 and intermediate 100 (no K block divides them), 3 query heads on 1 KV head
    of 16, a vocabulary of 203: configs whose row blocks cross heads and the gate/up halves."""
    check_model_shape(72, 3, 1, 16, 100, 203, [(32, 128, 4, 1), (16, 256, 4, 1),
                                               (8, 128, 4, 1)], monkeypatch, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(896, 14, 2, 64, 4864, 151936),  # Qwen2.5-0.5B
                                   (3072, 24, 8, 128, 8192, 128256)],  # Llama 3.2 3B
                         ids=["qwen2.5-0.5b", "llama3.2-3b"])
def test_gpu_every_candidate_at_model_shapes(shape, monkeypatch, tmp_path):
    H, I = shape[0], shape[4]
    cands = {tuple(c.values()) for K in (H, I) for c in gemv._candidates(1, K)}
    check_model_shape(*shape, sorted(cands), monkeypatch, tmp_path)


def test_nested_untuned_and_pdl_suspended_restore_the_outer_state():
    """Tuning can run inside tuning (the MoE path choice times kernels that tune): leaving an
    inner block must not switch PDL back on, nor tuning, while the outer block still runs."""
    from aiollm.kernels import autotune, pdl

    def tuning_on() -> bool:
        return not getattr(autotune._untuned, "active", False)

    with pdl.suspended():
        with pdl.suspended():
            pass
        assert pdl._off.active  # still suspended
    assert not pdl._off.active
    with autotune.untuned():
        with autotune.untuned():
            pass
        assert not tuning_on()
    assert tuning_on()
