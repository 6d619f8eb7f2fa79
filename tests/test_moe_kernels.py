"""The mixture-of-experts kernels against their references: routing, token-to-expert
alignment (padded and compact layouts), the top-k combine and the fused MoE (grouped GEMMs in
each operand order, gate/up fused or not, the down or both GEMMs by torch._grouped_mm; the
GEMV path for a few tokens), under TRITON_INTERPRET=1 on the CPU at small shapes: odd token
counts, experts that get no token, every token on one expert, and an expert-parallel slice
of the experts."""

from __future__ import annotations

import importlib

import pytest
import torch

from aiollm.kernels.fused_moe import fused_moe_decode_ref, fused_moe_ref, fused_moe_triton
from aiollm.kernels.fused_moe_gemv import fused_moe_decode_triton, fused_moe_gemv_triton
from aiollm.kernels.fused_moe_grouped_mm import grouped_mm_usable
from aiollm.kernels.moe_align import (
    moe_align_ref,
    moe_align_triton,
    moe_route_ref,
    moe_route_triton,
)
from aiollm.kernels.moe_combine import moe_combine_ref, moe_combine_triton
from aiollm.kernels.norm import rms_norm_ref

# tiny configs: the interpreter runs every program of the grid in Python
SMALL = ({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
          "num_stages": 1},
         {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
          "num_stages": 1})
# the variants the autotuner may pick: C^T = W A^T (SWAP_AB) in both GEMMs; weight tiles
# by tensor descriptors (TMA); gate/up unfused, or paired in one tile (FUSED 2)
VARIANTS = {"plain": SMALL,
            "swapped": tuple({**c, "SWAP_AB": 1} for c in SMALL),
            "tma": tuple({**c, "TMA": 1} for c in SMALL),
            "swapped-tma": tuple({**c, "SWAP_AB": 1, "TMA": 1} for c in SMALL),
            "unfused": ({**SMALL[0], "FUSED": 0}, SMALL[1]),
            # gate and up tiles in one TMA box, one accumulator twice as wide
            "paired-swapped": ({**SMALL[0], "FUSED": 2, "SWAP_AB": 1}, {**SMALL[1], "SWAP_AB": 1})}
# the same launch configs with the down GEMM (1), both (2) or the gate/up GEMM (3) by
# torch._grouped_mm
TORCH_MM = {"plain-mm-down": ("plain", 1), "swapped-tma-mm-down": ("swapped-tma", 1),
            "unfused-mm-down": ("unfused", 1), "mm-both": ("plain", 2),
            "mm-gate-up": ("plain", 3), "swapped-tma-mm-gate-up": ("swapped-tma", 3)}
HAS_GROUPED_MM = grouped_mm_usable("cpu", None, torch.float32)
GEMV = ({"BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1},
        {"BLOCK_N": 8, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1})


@pytest.mark.parametrize("T,E,k,renorm", [(1, 8, 2, True), (13, 16, 2, False), (5, 6, 3, True),
                                           (67, 128, 8, True), (70, 6, 3, False),
                                           (9, 40, 8, True)])  # granite-3.0-3b-a800m's
def test_routing_matches_reference(T, E, k, renorm):
    torch.manual_seed(T)
    logits = torch.randn(T, E) * 3
    w, ids = moe_route_triton(logits, k, renorm)
    w_ref, ids_ref = moe_route_ref(logits, k, renorm)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-6)
    if renorm:
        torch.testing.assert_close(w.sum(-1), torch.ones(T))


def test_renormalised_routing_is_granitemoes_softmax_over_the_top_k_logits():
    """GraniteMoe routes by the top-k router logits and a softmax over those alone
    (transformers' GraniteMoeTopKRouter); MoeConfig runs it as norm_topk_prob (softmax, top-k,
    renormalised): the same experts and weights, kernel and reference."""
    torch.manual_seed(0)
    logits = torch.randn(9, 40) * 3
    top, ids_granite = logits.topk(8, dim=-1)
    w_granite = torch.softmax(top, dim=-1)
    for route in (moe_route_ref, moe_route_triton):
        w, ids = route(logits, 8, True)
        order = ids.sort(-1).indices, ids_granite.sort(-1).indices
        assert torch.equal(ids.gather(-1, order[0]), ids_granite.gather(-1, order[1]))
        torch.testing.assert_close(w.gather(-1, order[0]), w_granite.gather(-1, order[1]),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nan_lanes", ["one", "all"])
def test_routing_of_a_nan_row_gives_nan_weights_on_experts_in_range(nan_lanes):
    """A token whose router logits hold a NaN (non-finite hidden states) has NaN routing
    weights, so its layer output is NaN and the engine fails that request, as on the CPU
    path. Its expert ids were BLOCK_E, which the alignment dropped: a finite wrong row. On
    a GPU when there is one (its max skips NaN lanes, the interpreter's propagates them)."""
    T, E, k = 5, 16, 3
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    logits = torch.randn(T, E, device=dev)
    if nan_lanes == "one":
        logits[2, 7] = float("nan")
    else:
        logits[2] = float("nan")
    w, ids = moe_route_triton(logits, k, True)
    assert ids[2].tolist() == list(range(k))
    assert torch.isnan(w[2]).all()
    ok = torch.tensor([0, 1, 3, 4], device=dev)
    w_ref, ids_ref = moe_route_ref(logits[ok], k, True)
    assert torch.equal(ids[ok], ids_ref)
    torch.testing.assert_close(w[ok], w_ref, rtol=1e-6, atol=1e-6)
    H, I = 8, 4
    w13, w2 = torch.randn(E, 2 * I, H, device=dev), torch.randn(E, H, I, device=dev)
    out = fused_moe_gemv_triton(torch.randn(T, H, device=dev), w13, w2, w, ids, 0, GEMV)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[ok]).all()

def canonical(aligned, block_m: int):
    """Each block's expert and its pairs in order."""
    n = int(aligned.num_padded)
    blocks = aligned.sorted_ids[:n].view(-1, block_m)
    return [(int(e), b.tolist()) for e, b in zip(aligned.expert_ids[: n // block_m], blocks)]


@pytest.mark.parametrize("chunk", [None, 16])  # 16: several chunks, scanned across
@pytest.mark.parametrize("case", ["random-odd", "one-expert", "empty-experts", "local-slice"])
def test_alignment_groups_pairs_by_expert_padded_to_the_block(case, chunk):
    torch.manual_seed(1)
    T, E, k, bm, start, n_local = 11, 8, 2, 4, 0, 8
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32)
    if case == "one-expert":
        ids = torch.stack([torch.tensor([3, 5])] * T).to(torch.int32)  # all on 3 and 5
    elif case == "empty-experts":
        ids = ids % 3  # experts 3..7 get nothing (rows may repeat an expert; fine here)
    elif case == "local-slice":
        start, n_local = 2, 4  # this rank holds experts 2..5
    got = moe_align_triton(ids, n_local, bm, start, tokens=True, chunk=chunk)
    ref = moe_align_ref(ids, n_local, bm, start, tokens=True)
    assert int(got[2]) == int(ref[2]) and int(ref[2]) % bm == 0
    assert canonical(got, bm) == canonical(ref, bm)  # a stable sort: same order as the ref
    for name in ("positions", "ends", "tokens"):  # the compact layout
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    compact = moe_align_triton(ids, n_local, 0, start, chunk=chunk)  # no padded layout
    assert compact.sorted_ids is None and torch.equal(compact.positions, ref.positions)
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


@pytest.mark.parametrize("T,chunk", [(5, None), (300, 16)])
def test_alignment_at_128_experts_writes_every_block_and_padding_slot(T, chunk):
    """128 experts, 16-slot blocks: 5 tokens' 40 pairs make one chunk that owns all 123
    blocks (its per-block loop runs 8 times: their experts and padding slots); 300 tokens
    in 150 chunks of 16 own one block or none each. Every output equals the stable
    sort's."""
    torch.manual_seed(8)
    ids = torch.stack([torch.randperm(128)[:8] for _ in range(T)]).to(torch.int32)
    ids[: T // 2, 0] = 7  # one expert with several blocks
    got = moe_align_triton(ids, 128, 16, tokens=True, chunk=chunk)
    ref = moe_align_ref(ids, 128, 16, tokens=True)
    n = int(ref.num_padded)
    assert int(got.num_padded) == n
    assert torch.equal(got.sorted_ids[:n], ref.sorted_ids[:n])
    assert torch.equal(got.expert_ids, ref.expert_ids)
    for name in ("positions", "ends", "tokens"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name


def test_alignment_scans_the_chunks_in_several_blocks(monkeypatch):
    """The scan over the chunks runs in blocks of SCAN_BLOCK chunks (256: more than 256
    chunks take 4,096 pairs or more, slow in the interpreter); at 2, 40 pairs in chunks of
    16 take three blocks, the last one partial."""
    from aiollm.kernels import moe_align

    monkeypatch.setattr(moe_align, "SCAN_BLOCK", 2)
    torch.manual_seed(6)
    ids = torch.randint(0, 5, (20, 2), dtype=torch.int32)
    got = moe_align_triton(ids, 5, 4, tokens=True, chunk=16)
    ref = moe_align_ref(ids, 5, 4, tokens=True)
    assert canonical(got, 4) == canonical(ref, 4)
    for name in ("positions", "ends", "tokens"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name


def moe_case(case: str, T: int = 9):
    """x, w13, w2, weights, ids, (start, n_local) for one of the routing cases."""
    torch.manual_seed(2)
    # I=24: the down GEMM's K loop is masked; H=40 masks the gate/up loop too, H=32 does not
    E, k, I = 8, 2, 24
    H = 32 if case in ("odd-tokens", "one-expert") else 40
    x = torch.randn(T, H)
    w13 = torch.randn(E, 2 * I, H) / H**0.5
    w2 = torch.randn(E, H, I) / I**0.5
    weights, ids = moe_route_ref(case_logits(case, T, E), k, True)
    return x, w13, w2, weights, ids, (3, 4) if case == "local-slice" else (0, E)


def case_logits(case: str, T: int, E: int) -> torch.Tensor:
    logits = torch.randn(T, E)
    if case == "one-expert":
        logits[:, 4] += 100  # every token's first choice is expert 4
    elif case == "empty-experts":
        logits[:, 5:] -= 100  # experts 5..7 get no token
    return logits


CASES = ["odd-tokens", "one-expert", "empty-experts", "local-slice"]


@pytest.mark.parametrize("variant", list(VARIANTS) + list(TORCH_MM))
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_matches_reference(case, variant):
    base, torch_mm = TORCH_MM.get(variant, (variant, 0))
    if torch_mm and not HAS_GROUPED_MM:
        pytest.skip("torch._grouped_mm does not run on this CPU build")
    x, w13, w2, weights, ids, (start, n_local) = moe_case(case)
    E = w13.shape[0]
    ws = slice(start, start + n_local)
    out = fused_moe_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids, start,
                           num_global_experts=E, configs=VARIANTS[base], torch_mm=torch_mm)
    ref = fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if case == "local-slice":  # the slices of all ranks add up to the whole layer
        rest = fused_moe_ref(x, w13[:start], w2[:start], weights, ids, 0) + \
            fused_moe_ref(x, w13[start + n_local:], w2[start + n_local:], weights, ids,
                          start + n_local)
        torch.testing.assert_close(out + rest, fused_moe_ref(x, w13, w2, weights, ids),
                                   rtol=1e-4, atol=1e-5)


# SPLIT: a block whose pairs fit in half (SPLIT 2: a quarter) of it runs a shorter tile; at 25
# tokens one expert gets more than half a block's pairs, others fewer than a quarter
SPLIT = {"split": tuple({**c, "BLOCK_M": 32, "SPLIT": 1} for c in SMALL),
         "split-paired": ({**SMALL[0], "BLOCK_M": 32, "SPLIT": 1, "FUSED": 2},
                          {**SMALL[1], "BLOCK_M": 32, "SPLIT": 1}),
         "split2-swapped-tma": tuple({**c, "BLOCK_M": 64, "SPLIT": 2, "SWAP_AB": 1, "TMA": 1}
                                     for c in SMALL)}


@pytest.mark.parametrize("variant", list(SPLIT))
@pytest.mark.parametrize("case", ["odd-tokens", "one-expert", "local-slice"])
def test_fused_moe_split_tiles_match_reference(case, variant):
    x, w13, w2, weights, ids, (start, n_local) = moe_case(case, T=25)
    ws = slice(start, start + n_local)
    out = fused_moe_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids, start,
                           configs=SPLIT[variant])
    torch.testing.assert_close(out, fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start),
                               rtol=1e-4, atol=1e-5)


# MERGE: an expert's last block of at most 32 pairs after a block of its own is computed by
# that block's program, as a swapped second accumulator of 16 or 32 columns on the same
# weight tiles. Pairs per expert at BLOCK_M 64: 74 = 64 + 10 (a tail of 16 columns), 84 =
# 64 + 20 (32), 104 = 64 + 40 (more than 32: a tile of its own), 96 = 64 + 32 (exactly 32),
# 144 = 128 + 16 (exactly 16, after two full blocks), 5 (one small block: its own tile),
# none, 71; a tail that no program computed would leave its rows unwritten
MERGE_COUNTS = (74, 84, 104, 96, 144, 5, 0, 71)
_M64 = ({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
         "num_stages": 1},
        {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
         "num_stages": 1})
MERGE = {"paired": ({**_M64[0], "FUSED": 2, "MERGE": 1}, {**_M64[1], "TMA": 1, "MERGE": 1}),
         "paired-split": ({**_M64[0], "FUSED": 2, "TMA": 1, "SPLIT": 1, "MERGE": 1},
                          {**_M64[1], "TMA": 1, "SPLIT": 1, "MERGE": 1}),
         "unfused-tma": ({**_M64[0], "FUSED": 0, "TMA": 1, "MERGE": 1},
                         {**_M64[1], "TMA": 1, "MERGE": 1})}


def merge_case_ids(counts=MERGE_COUNTS, top_k: int = 2) -> torch.Tensor:
    """topk_ids [T, top_k] giving expert e exactly counts[e] pairs, a token's experts distinct
    (the sorted labels' T-long slices never meet on one expert: no count exceeds T), rows
    shuffled."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    T = labels.numel() // top_k
    assert T * top_k == labels.numel() and max(counts) <= T
    ids = labels.view(top_k, T).T
    return ids[torch.randperm(T, generator=torch.Generator().manual_seed(5))].to(torch.int32)


@pytest.mark.parametrize("variant", list(MERGE))
@pytest.mark.parametrize("local", [False, True])
def test_fused_moe_merged_tails_match_reference(variant, local):
    torch.manual_seed(3)
    ids = merge_case_ids()
    T, E, H, I = ids.shape[0], len(MERGE_COUNTS), 32, 24
    x = torch.randn(T, H)
    w13 = torch.randn(E, 2 * I, H) / H**0.5
    w2 = torch.randn(E, H, I) / I**0.5
    weights = torch.softmax(torch.randn(T, 2), dim=1)
    start, n = (2, 4) if local else (0, E)
    ws = slice(start, start + n)
    out = fused_moe_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids, start,
                           configs=MERGE[variant])
    torch.testing.assert_close(out, fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start),
                               rtol=1e-4, atol=1e-5)


# MERGE at the layout's edges: (BLOCK_M, top_k, pair counts, local slice, torch_mm, gate/up
# flags, down flags). "full": every expert 1 mod 64, so the padded layout is exactly full
# (the last tail ends sorted_ids and expert_ids), tails of 1 after 1, 2 and 3 full blocks and
# a lone pair; "bm128": tails of 16, 17 (32 columns), 33 (its own tile), 32 after two full
# blocks, 40 alone, 1 in the last expert; "row-maps": top_k 4, the last local expert's tail
# of 1 merged, gate/up rows by the compact layout (torch_mm 1) or down's A rows by it (3)
MERGE_EDGES = {
    "full": (64, 2, (65, 129, 1, 193), (0, 4), 0, {"FUSED": 0, "TMA": 1, "GROUP_M": 3},
             {"GROUP_M": 3}),
    "bm128": (128, 1, (144, 145, 288, 161, 40, 0, 129), (0, 7), 0, {"FUSED": 2, "GROUP_M": 1},
              {"SPLIT": 1, "GROUP_M": 2}),
    "row-maps-up": (64, 4, (60, 97, 33, 80, 65, 0, 57), (1, 4), 1,
                    {"FUSED": 0, "TMA": 1, "GROUP_M": 1}, {}),
    "row-maps-down": (64, 4, (60, 97, 33, 80, 65, 0, 57), (1, 4), 3,
                      {"FUSED": 2, "TMA": 1, "SPLIT": 1}, {"GROUP_M": 1})}


@pytest.mark.parametrize("case", list(MERGE_EDGES))
def test_fused_moe_merged_tails_at_the_layout_edges(case):
    bm, top_k, counts, (start, n), torch_mm, up, down = MERGE_EDGES[case]
    if torch_mm and not HAS_GROUPED_MM:
        pytest.skip("torch._grouped_mm does not run on this CPU build")
    torch.manual_seed(6)
    ids = merge_case_ids(counts, top_k)
    T, E, H, I = ids.shape[0], len(counts), 40, 24  # H 40: gate/up's K loop masked too
    x = torch.randn(T, H)
    w13 = torch.randn(E, 2 * I, H) / H**0.5
    w2 = torch.randn(E, H, I) / I**0.5
    weights = torch.softmax(torch.randn(T, top_k), dim=1)
    ws = slice(start, start + n)
    configs = ({**_M64[0], "BLOCK_M": bm, "MERGE": 1, **up},
               {**_M64[1], "BLOCK_M": bm, "TMA": 1, "MERGE": 1, **down})
    out = fused_moe_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids, start,
                           configs=configs, torch_mm=torch_mm)
    torch.testing.assert_close(out, fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start),
                               rtol=1e-4, atol=1e-5)


def test_merge_refuses_the_tiles_it_does_not_take():
    x, w13, w2, weights, ids, _ = moe_case("odd-tokens")
    for up in ({**_M64[0], "MERGE": 1, "TMA": 1},  # FUSED 1: two weight tiles
               {**_M64[0], "FUSED": 2, "SWAP_AB": 1, "MERGE": 1},
               {**_M64[0], "FUSED": 0, "MERGE": 1},  # weight tiles by pointers
               {**SMALL[0], "FUSED": 2, "MERGE": 1}):  # BLOCK_M 16
        with pytest.raises(ValueError, match="MERGE needs"):
            fused_moe_triton(x, w13, w2, weights, ids, configs=(up, _M64[1]))


# float32 inputs take half the configs' K tile (fused_moe_gemm._gemm, as the configs are sized
# for 2-byte inputs): 64 -> 32 here, so the gate/up loop (H 40) and the down loop (I 24) each
# end on a masked tile, and H 8 lies below the smallest tile; float16 keeps the configs' tile
@pytest.mark.parametrize("variant,H,I,dtype", [
    ("plain", 40, 24, torch.float32), ("paired-swapped", 40, 24, torch.float32),
    ("plain", 8, 8, torch.float32), ("plain", 40, 24, torch.float16)])
def test_fused_moe_with_k_tiles_sized_for_two_byte_inputs(variant, H, I, dtype):
    torch.manual_seed(5)
    T, E, k = 9, 8, 2
    x = torch.randn(T, H).to(dtype)
    w13 = (torch.randn(E, 2 * I, H) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, I) / I**0.5).to(dtype)
    logits = torch.randn(T, E)
    logits[:, 6:] -= 100  # experts 6 and 7 get no token
    weights, ids = moe_route_ref(logits, k, True)
    configs = tuple({**c, "BLOCK_K": 64} for c in VARIANTS[variant])
    out = fused_moe_triton(x, w13, w2, weights, ids, configs=configs)
    ref = fused_moe_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err <= (1e-6 if dtype == torch.float32 else 2e-3), err


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_combine_matches_reference(case, weighted):
    """The top-k sum by pair rows (weights already applied) or by compact rows (weighted
    here); rows of pairs routed elsewhere hold NaN, which must not be read."""
    _, _, _, weights, ids, (start, n_local) = moe_case(case, T=7)
    aligned = moe_align_ref(ids, n_local, 0, start)
    y = torch.randn(ids.numel(), 40)
    local = (ids.reshape(-1) >= start) & (ids.reshape(-1) < start + n_local)
    if weighted:
        y[int(local.sum()):] = float("nan")
        args = (weights, aligned.positions)
    else:
        y[~local] = float("nan")
        args = ()
    got = moe_combine_triton(y, ids, start, n_local, *args)
    torch.testing.assert_close(got, moe_combine_ref(y, ids, start, n_local, *args))
    assert not got.isnan().any()


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_gemv_path_matches_reference(case, T):
    x, w13, w2, weights, ids, (start, n_local) = moe_case(case, T)
    ws = slice(start, start + n_local)
    out = fused_moe_gemv_triton(x, w13[ws].contiguous(), w2[ws].contiguous(), weights, ids,
                                start, GEMV)
    torch.testing.assert_close(out, fused_moe_ref(x, w13[ws], w2[ws], weights, ids, start),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,renorm", [(1, True), (3, False)])
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_decode_matches_reference(case, T, renorm):
    """The one-token form: RMSNorm and routing folded into the GEMVs, the result added into
    the float32 residual stream in place; its reference routes and normalises unfused."""
    x, w13, w2, _, _, (start, n_local) = moe_case(case, T)
    E, k, H = w13.shape[0], 2, x.shape[1]
    ws = slice(start, start + n_local)
    logits = case_logits(case, T, E) * 3
    norm_w = torch.rand(H) + 0.5
    residual = x * 4
    want = fused_moe_decode_ref(residual.clone(), norm_w, 1e-5, logits, w13[ws], w2[ws], k,
                                renorm, start)
    got = residual.clone()
    out = fused_moe_decode_triton(got, norm_w, 1e-5, logits, w13[ws].contiguous(),
                                  w2[ws].contiguous(), k, renorm, start)
    assert out is got  # in place
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the experts' part alone, against the plain layer on the normalised stream
    h = rms_norm_ref(residual, norm_w, 1e-5)
    weights, ids = moe_route_ref(logits, k, renorm)
    torch.testing.assert_close(got - residual, fused_moe_ref(h, w13[ws], w2[ws], weights, ids,
                                                             start), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decode", [False, True])
def test_tuning_the_gemv_path_runs_its_candidates(decode, monkeypatch):
    """A GPU without table entries for a shape tunes the GEMV path's two kernels on the first
    step (AIOLLM_AUTOTUNE). The gate/up kernel's bench named a `tw` it never bound: every
    candidate failed with a NameError, which the tuner takes for a candidate that does not
    compile, so the step failed with "no candidate config ran" (both forms). Here the tuner
    runs one small candidate of each kernel once, under the interpreter."""
    from aiollm.kernels import autotune, fused_moe_gemv

    x, w13, w2, weights, ids, (start, n_local) = moe_case("local-slice", 1)
    ws = slice(start, start + n_local)
    w13, w2 = w13[ws].contiguous(), w2[ws].contiguous()
    E, two_i, H = w13.shape
    k = ids.shape[1]
    route = None
    if decode:
        route = fused_moe_gemv.Route(case_logits("local-slice", 1, 8), torch.rand(H) + 0.5,
                                     1e-5, True)
    tried = []

    def tune_now(kernel, key, device, default, candidates, bench, classes=None):
        tried.append(kernel)
        return autotune._tune(kernel, key, [GEMV[0] if "up" in kernel else GEMV[1]], bench)

    monkeypatch.setattr(fused_moe_gemv, "get_config", tune_now)
    monkeypatch.setattr(fused_moe_gemv, "time_config", lambda fn: (fn(), 1.0)[1])
    up, down = fused_moe_gemv.gemv_configs(1, (1, 2), E, H, two_i // 2, k, x.device,
                                           (x, w13, w2, weights, ids.int(), start), route)
    assert (up, down) == GEMV and tried == ["fused_moe_gemv_gate_up", "fused_moe_gemv_down"]


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
@pytest.mark.parametrize("I", [768, 384], ids=["whole", "tp2-rank"])
@pytest.mark.parametrize("T", [1, 33, 300])
def test_fused_moe_at_qwen3_30b_a3b_shape_in_bf16(T, I):
    """The tuned (or default) configs at the real shape: 128 experts, top-8, H 2048, I 768,
    and at one rank's share of it under tensor parallelism over two GPUs (I 384)."""
    torch.manual_seed(4)
    E, k, H = 128, 8, 2048
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(16, 2, 64, 32), (128, 8, 2048, 768)],
                         ids=["tiny-16e", "qwen3-30b-a3b"])
@pytest.mark.parametrize("T", [1, 7, 65])
def test_gpu_fused_moe_in_float32_with_the_configs_found(shape, T, monkeypatch):
    """A float32 model on a GPU (as tests/test_gpu_model.py serves dense ones) through the
    configs the layer finds without tuning (AIOLLM_AUTOTUNE=0, as a CUDA graph capture does):
    the defaults at the tiny shape, and at Qwen3-30B-A3B's the table's, tuned in bf16. The
    config keys carry no dtype, and a config's shared memory would double in float32 (240 KiB
    asked for at the tiny shape, past the 227 KiB an H100/H200 block may use), so _gemm halves
    the K tile for 4-byte inputs; its products are exact (no TF32), as attention's are."""
    from aiollm.kernels import autotune

    E, k, H, I = shape
    torch.manual_seed(6)
    dev = "cuda"
    x = torch.randn(T, H, device=dev)
    w13 = torch.randn(E, 2 * I, H, device=dev) / H**0.5
    w2 = torch.randn(E, H, I, device=dev) / I**0.5
    weights, ids = moe_route_triton(torch.randn(T, E, device=dev), k, True)
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "0")
    with autotune.untuned():
        out = fused_moe_triton(x, w13, w2, weights, ids)
    ref = fused_moe_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, err  # TF32 products gave 2.3e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_moe_decode_at_qwen3_30b_a3b_shape(dtype, monkeypatch):
    """The one-token form at the real shape with the configs found without tuning, after the
    router's GEMV as SparseMoe.forward_small runs them (programmatic dependent launches), eager
    and replayed from a CUDA graph, against the layer in float64."""
    from aiollm.kernels import autotune
    from aiollm.kernels.gemv import gemv_norm

    torch.manual_seed(7)
    E, k, H, I = 128, 8, 2048, 768
    dev, eps = "cuda", 1e-6
    residual = torch.randn(1, H, device=dev) * 4
    norm_w = (torch.rand(H, device=dev) + 0.5).to(dtype)
    gate_w = (torch.randn(E, H, device=dev) / H**0.5).to(dtype)
    w13 = (torch.randn(E, 2 * I, H, device=dev) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, I, device=dev) / I**0.5).to(dtype)

    def step(stream):
        logits = gemv_norm(stream, norm_w, eps, gate_w, None, torch.float32)
        return fused_moe_decode_triton(stream, norm_w, eps, logits, w13, w2, k, True)

    monkeypatch.setenv("AIOLLM_AUTOTUNE", "0")
    with autotune.untuned():
        eager = step(residual.clone())
        static = residual.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(static)
    static.copy_(residual)
    graph.replay()
    h = rms_norm_ref(residual.double(), norm_w.double(), eps)
    weights, ids = moe_route_ref(h @ gate_w.double().t(), k, True)
    want = residual.double() + fused_moe_ref(h, w13.double(), w2.double(), weights.double(), ids)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the activations are rounded
    for got in (eager, static):
        err = ((got.double() - want).norm() / (want - residual.double()).norm()).item()
        assert err <= tol, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_moe_path_is_tuned_from_graphs_at_qwen3_30b_a3b_shape(monkeypatch):
    """The 1,024-token class's forward chosen again with its GEMM configs from the table:
    every candidate path (Triton GEMMs, torch._grouped_mm for down, both, gate/up) captures in
    a CUDA graph and is timed from it, and the layer then runs the path chosen."""
    from aiollm.kernels import autotune
    from aiollm.kernels.fused_moe import moe_path

    torch.manual_seed(8)
    E, k, H, I, T = 128, 8, 2048, 768, 1000
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(T, H, device=dev, dtype=dt)
    w13 = (torch.randn(E, 2 * I, H, device=dev) / H**0.5).to(dt)
    w2 = (torch.randn(E, H, I, device=dev) / I**0.5).to(dt)
    weights, ids = moe_route_triton(torch.randn(T, E, device=dev), k, True)
    slug = autotune.gpu_slug(torch.cuda.current_device())
    table = {kern: dict(v) for kern, v in autotune._table(slug).items()}
    table.get("fused_moe_path", {}).pop(f"e{E}-n{2 * I}-k{H}-top{k}-t1024", None)
    monkeypatch.setitem(autotune._tables, slug, table)
    monkeypatch.setattr(autotune, "_resolved", {})
    monkeypatch.setattr(autotune, "_save", lambda slug: None)
    monkeypatch.setenv("AIOLLM_AUTOTUNE", "1")
    timed = []
    time_graph = autotune.time_graph
    # the module, not the function aiollm.kernels re-exports under its name
    monkeypatch.setattr(importlib.import_module("aiollm.kernels.fused_moe"), "time_graph",
                        lambda fn: timed.append(time_graph(fn)) or timed[-1])
    path = moe_path(T, E, H, I, k, x.device, (x, w13, w2, weights, ids, 0))
    assert len(timed) == (4 if grouped_mm_usable(dev, None, dt) else 1), timed
    assert path in ([{"GEMV": 0}] + [{"GEMV": 0, "TORCH_MM": m} for m in (1, 2, 3)])
    out = fused_moe_triton(x, w13, w2, weights, ids)
    ref = fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
