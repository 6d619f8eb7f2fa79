"""The mixture-of-experts kernels against their references: routing, token-to-expert
alignment and the fused MoE (grouped GEMMs in each operand order, gate/up fused or not; the
GEMV path for a few tokens), under TRITON_INTERPRET=1 on the CPU at small shapes: odd token
counts, experts that get no token, every token on one expert, and an expert-parallel slice
of the experts."""

from __future__ import annotations

import pytest
import torch

from aiollm.kernels.fused_moe import fused_moe_ref, fused_moe_triton
from aiollm.kernels.fused_moe_gemv import fused_moe_gemv_triton
from aiollm.kernels.moe_align import (
    moe_align_ref,
    moe_align_triton,
    moe_route_ref,
    moe_route_triton,
)

# tiny configs: the interpreter runs every program of the grid in Python
SMALL = ({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
          "num_stages": 1},
         {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
          "num_stages": 1})
# the variants the autotuner may pick: C^T = W A^T (SWAP_AB) in both GEMMs; weight tiles
# by tensor descriptors (TMA); gate/up unfused
VARIANTS = {"plain": SMALL,
            "swapped": tuple({**c, "SWAP_AB": 1} for c in SMALL),
            "tma": tuple({**c, "TMA": 1} for c in SMALL),
            "swapped-tma": tuple({**c, "SWAP_AB": 1, "TMA": 1} for c in SMALL),
            "unfused": ({**SMALL[0], "FUSED": 0}, SMALL[1])}
GEMV = ({"BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1},
        {"BLOCK_N": 8, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1})


@pytest.mark.parametrize("T,E,k,renorm", [(1, 8, 2, True), (13, 16, 2, False), (5, 6, 3, True)])
def test_routing_matches_reference(T, E, k, renorm):
    torch.manual_seed(T)
    logits = torch.randn(T, E) * 3
    w, ids = moe_route_triton(logits, k, renorm)
    w_ref, ids_ref = moe_route_ref(logits, k, renorm)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-6)
    if renorm:
        torch.testing.assert_close(w.sum(-1), torch.ones(T))


def canonical(aligned, block_m: int):
    """Each block's expert and its set of pairs (the GPU order within a group is free)."""
    sorted_ids, expert_ids, num_padded = aligned
    n = int(num_padded)
    blocks = sorted_ids[:n].view(-1, block_m)
    return [(int(e), sorted(b.tolist())) for e, b in zip(expert_ids[: n // block_m], blocks)]


@pytest.mark.parametrize("case", ["random-odd", "one-expert", "empty-experts", "local-slice"])
def test_alignment_groups_pairs_by_expert_padded_to_the_block(case):
    torch.manual_seed(1)
    T, E, k, bm, start, n_local = 11, 8, 2, 4, 0, 8
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    if case == "one-expert":
        ids = torch.stack([torch.tensor([3, 5])] * T).to(torch.int32)  # all on 3 and 5
    elif case == "empty-experts":
        ids = ids % 3  # experts 3..7 get nothing (rows may repeat an expert; fine here)
    elif case == "local-slice":
        start, n_local = 2, 4  # this rank holds experts 2..5
    got = moe_align_triton(ids, n_local, bm, start)
    ref = moe_align_ref(ids, n_local, bm, start)
    assert int(got[2]) == int(ref[2]) and int(ref[2]) % bm == 0
    assert canonical(got, bm) == canonical(ref, bm)
    # every local pair exactly once, padding is the sentinel T*k, experts ascend
    flat = ids.reshape(-1)
    local = ((flat >= start) & (flat < start + n_local)).nonzero().flatten().tolist()
    used = got[0][: int(got[2])]
    assert sorted(used[used < T * k].tolist()) == local
    assert torch.all(used[used >= T * k] == T * k)
    blocks = got[1][: int(got[2]) // bm]
    assert torch.all(blocks[1:] >= blocks[:-1]) and torch.all(blocks < n_local)
    for e, pairs in canonical(got, bm):
        assert all(int(flat[p]) - start == e for p in pairs if p < T * k)


def moe_case(case: str, T: int = 9):
    """x, w13, w2, weights, ids, (start, n_local) for one of the routing cases."""
    torch.manual_seed(2)
    # I=24: the down GEMM's K loop is masked; H=40 masks the gate/up loop too, H=32 does not
    E, k, I = 8, 2, 24
    H = 32 if case in ("odd-tokens", "one-expert") else 40
    x = torch.randn(T, H)
    w13 = torch.randn(E, 2 * I, H) / H**0.5
    w2 = torch.randn(E, H, I) / I**0.5
    logits = torch.randn(T, E)
    if case == "one-expert":
        logits[:, 4] += 100  # every token's first choice is expert 4
    elif case == "empty-experts":
        logits[:, 5:] -= 100  # experts 5..7 get no token
    weights, ids = moe_route_ref(logits, k, True)
    return x, w13, w2, weights, ids, (3, 4) if case == "local-slice" else (0, E)


CASES = ["odd-tokens", "one-expert", "empty-experts", "local-slice"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_matches_reference(case, variant):
    x, w13, w2, weights, ids, (start, n_local) = moe_case(case)
    E = w13.shape[0]
    ws = slice(start, start + n_local)
    out = fused_moe_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids, start,
                           num_global_experts=E, configs=VARIANTS[variant])
    ref = fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if case == "local-slice":  # the slices of all ranks add up to the whole layer
        rest = fused_moe_ref(x, w13[:start], w2[:start], weights, ids, 0) + \
            fused_moe_ref(x, w13[start + n_local:], w2[start + n_local:], weights, ids,
                          start + n_local)
        torch.testing.assert_close(out + rest, fused_moe_ref(x, w13, w2, weights, ids),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_gemv_path_matches_reference(case, T):
    x, w13, w2, weights, ids, (start, n_local) = moe_case(case, T)
    ws = slice(start, start + n_local)
    out = fused_moe_gemv_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids,
                                start, GEMV)
    torch.testing.assert_close(out, fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start),
                               rtol=1e-4, atol=1e-5)


def test_fused_moe_reference_equals_a_dense_loop():
    """The reference against the plain definition, token by token."""
    torch.manual_seed(3)
    T, E, k, H, I = 5, 4, 2, 8, 6
    x, w13, w2 = torch.randn(T, H), torch.randn(E, 2 * I, H), torch.randn(E, H, I)
    weights, ids = moe_route_ref(torch.randn(T, E), k, False)
    want = torch.zeros(T, H)
    for t in range(T):
        for j in range(k):
            e = int(ids[t, j])
            g, u = (w13[e] @ x[t]).split(I)
            want[t] += weights[t, j] * (w2[e] @ (torch.nn.functional.silu(g) * u))
    torch.testing.assert_close(fused_moe_ref(x, w13, w2, weights, ids), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("T", [1, 33, 300])
def test_fused_moe_at_qwen3_30b_a3b_shape_in_bf16(T):
    """The tuned (or default) configs at the real shape: 128 experts, top-8, H 2048, I 768."""
    torch.manual_seed(4)
    E, k, H, I = 128, 8, 2048, 768
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(T, H, device=dev, dtype=dt)
    w13 = (torch.randn(E, 2 * I, H, device=dev) / H**0.5).to(dt)
    w2 = (torch.randn(E, H, I, device=dev) / I**0.5).to(dt)
    logits = torch.randn(T, E, device=dev)
    weights, ids = moe_route_triton(logits, k, True)
    w_ref, ids_ref = moe_route_ref(logits, k, True)
    assert torch.equal(ids, ids_ref)
    out = fused_moe_triton(x, w13, w2, weights, ids)
    ref = fused_moe_ref(x.float(), w13.float(), w2.float(), w_ref, ids_ref)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
