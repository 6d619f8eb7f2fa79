"""Launch configs of the fused MoE grouped GEMM (fused_moe_gemm.py): the token-count
classes, the tuning candidates and moe_configs, which looks up (or tunes) the gate/up and
down configs of a shape class. Configs come from autotune.py under the kernel names
"fused_moe_gate_up" and "fused_moe_down", keyed per (experts, N, K, top_k, token-count
class); the gate/up GEMM's BLOCK_M fixes the alignment, so the down GEMM is tuned per BLOCK_M.
"""

from __future__ import annotations

import torch

from aiollm.kernels.autotune import Config, bucket, get_config, time_config
from aiollm.kernels.fused_moe_gemm import _gate_up, _gemm
from aiollm.kernels.moe_align import moe_align_triton

TOKEN_CLASSES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _c(bn: int, bk: int, warps: int, stages: int, **flags: int) -> Config:
    return {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
            "num_stages": stages, **flags}


# Tuning candidates, without BLOCK_M. Flags: SWAP_AB (C^T = W A^T), TMA (weight tiles by tensor
# descriptor), FUSED 0 (gate/up as one plain GEMM, then silu_and_mul) or 2 (gate and up tiles
# in one TMA box and one MMA of 2 * BLOCK_N columns), SPLIT 1/2 (an expert's
# last block, if its pairs fit, as a tile of 1/2 or 1/4 the height: less padding computed),
# MERGE (an expert's last block of at most MERGE_ROWS pairs inside the previous block's tile);
# absent means 0, FUSED 1.
_SMALL = [_c(32, 128, 4, 4), _c(64, 128, 4, 4), _c(64, 64, 4, 4), _c(128, 64, 4, 3),
          _c(32, 256, 4, 3), _c(64, 256, 8, 3), _c(128, 128, 8, 3),
          _c(64, 128, 4, 4, SWAP_AB=1), _c(128, 64, 4, 4, SWAP_AB=1),
          _c(64, 128, 4, 4, SWAP_AB=1, TMA=1), _c(64, 256, 4, 3, SWAP_AB=1, TMA=1),
          _c(128, 128, 4, 3, SWAP_AB=1, TMA=1), _c(128, 64, 4, 4, SWAP_AB=1, TMA=1)]
# two accumulators of 128 x BLOCK_N: 4 warps spill at BLOCK_N 128, hence few 4-warp configs
_LARGE_UP = [_c(64, 64, 4, 4), _c(128, 64, 8, 3), _c(64, 128, 4, 3),
             _c(64, 64, 4, 4, TMA=1), _c(128, 64, 8, 3, TMA=1), _c(128, 64, 8, 4, TMA=1),
             _c(64, 128, 4, 3, TMA=1),
             _c(256, 64, 8, 3, TMA=1, FUSED=0), _c(256, 64, 8, 4, TMA=1, FUSED=0),
             _c(128, 128, 8, 2, TMA=1, FUSED=0), _c(128, 64, 8, 4, TMA=1, FUSED=0),
             _c(128, 64, 8, 4, TMA=1, SPLIT=1), _c(128, 64, 8, 4, TMA=1, SPLIT=2),
             _c(128, 64, 8, 3, TMA=1, SPLIT=1), _c(64, 64, 4, 4, TMA=1, SPLIT=1),
             _c(256, 64, 8, 3, TMA=1, FUSED=0, SPLIT=1), _c(256, 64, 8, 4, TMA=1, FUSED=0, SPLIT=1),
             _c(128, 64, 8, 3, TMA=1, FUSED=2, SPLIT=1), _c(128, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(128, 64, 8, 3, TMA=1, FUSED=2), _c(64, 64, 4, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(64, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1),
             _c(128, 64, 8, 4, TMA=1, FUSED=2, SPLIT=1, MERGE=1)]
_LARGE_DOWN = [_c(128, 64, 8, 3), _c(128, 64, 4, 4), _c(256, 64, 8, 3), _c(64, 64, 4, 4),
               _c(128, 64, 8, 3, TMA=1), _c(128, 64, 8, 4, TMA=1), _c(128, 64, 4, 4, TMA=1),
               _c(256, 64, 8, 3, TMA=1), _c(256, 64, 8, 4, TMA=1), _c(128, 128, 8, 2, TMA=1),
               _c(256, 64, 8, 4, TMA=1, SPLIT=1), _c(256, 64, 8, 4, TMA=1, SPLIT=2),
               _c(128, 64, 8, 4, TMA=1, SPLIT=1), _c(256, 64, 8, 3, TMA=1, SPLIT=1),
               _c(256, 64, 8, 4, TMA=1, SPLIT=1, MERGE=1)]


def _block_ms(tokens: int, top_k: int, experts: int) -> list[int]:
    """BLOCK_M worth trying: about the mean number of pairs per expert, at least 16."""
    per_expert = tokens * top_k / experts
    if per_expert <= 4:
        return [16]
    if per_expert <= 16:
        return [16, 32]
    if per_expert <= 64:
        return [32, 64]
    return [64, 128]


def _candidates(block_ms: list[int], up: bool) -> list[Config]:
    return [{"BLOCK_M": bm, **c} if up else c for bm in block_ms
            for c in (_SMALL if bm <= 32 else _LARGE_UP if up else _LARGE_DOWN)]


def moe_configs(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
                device: torch.device, bench_inputs=None) -> tuple[Config, Config]:
    """(gate/up config with BLOCK_M, down config) for this shape class; `bench_inputs` is
    (x, w13, w2, topk_weights, topk_ids, expert_start) to tune on when a key is missing."""
    cls = bucket(tokens, TOKEN_CLASSES)
    key = f"e{num_experts}-n{2 * inter}-k{hidden}-top{top_k}-t{cls}"
    bms = _block_ms(cls, top_k, num_experts)
    big = bms[0] > 32
    up_default = {"BLOCK_M": bms[0], "BLOCK_N": 64, "BLOCK_K": 64 if big else 128, "GROUP_M": 8,
                  "num_warps": 4, "num_stages": 4 if not big else 3}

    def run_up(cfg):
        x, w13, _, tw, ids, start = bench_inputs
        aligned = moe_align_triton(ids, num_experts, cfg["BLOCK_M"], start)
        return time_config(lambda: _gate_up(x, w13, aligned, tw, top_k, cfg))

    up = get_config("fused_moe_gate_up", key, device, up_default, _candidates(bms, True), run_up,
                    classes={"t": TOKEN_CLASSES})
    bm = up["BLOCK_M"]
    down_default = {k: v for k, v in up_default.items() if k != "BLOCK_M"}

    def run_down(cfg):
        x, _, w2, tw, ids, start = bench_inputs
        aligned = moe_align_triton(ids, num_experts, bm, start)
        act = torch.randn((ids.numel(), inter), dtype=x.dtype, device=x.device)
        y = torch.empty((ids.numel(), hidden), dtype=x.dtype, device=x.device)
        full = {"BLOCK_M": bm, **cfg}
        return time_config(lambda: _gemm(act, w2, y, aligned, tw, 1, False, True, full))

    down_key = f"e{num_experts}-n{hidden}-k{inter}-top{top_k}-t{cls}-m{bm}"
    down = get_config("fused_moe_down", down_key, device, down_default,
                      _candidates([bm], False), run_down,
                      classes={"t": TOKEN_CLASSES})
    return up, {"BLOCK_M": bm, **down}
