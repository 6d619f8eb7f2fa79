"""Fused mixture-of-experts MLP: the layer's forward over the routed (token, expert) pairs.

    out[t] = sum_k w[t,k] * down_e(silu(gate_e(x[t])) * up_e(x[t])),  e = ids[t,k]

with the experts' weights stacked per layer: w13 [E, 2I, H] (gate rows 0..I-1, up rows I..2I-1)
and w2 [E, H, I], both in nn.Linear's [out, in] order. After routing, one of these forwards
(key `fused_moe_path`, tuned per token-count class by timing the whole forwards):

- the grouped GEMMs (default): alignment (moe_align.py), the gate/up and down launches of
  fused_moe_gemm.py's kernel, the top-k combine (moe_combine.py);
- for a few tokens, fused_moe_gemv.py's path (no alignment, two GEMV launches);
- from TORCH_MM_MIN_TOKENS on, PyTorch's grouped GEMM (fused_moe_grouped_mm.py: no padding
  at all, more memory traffic) for the down GEMM, the gate/up GEMM or both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aiollm.kernels.autotune import Config, bucket, get_config, time_graph
from aiollm.kernels.fused_moe_gemm import _gate_up, _gemm
from aiollm.kernels.fused_moe_gemm_configs import TOKEN_CLASSES, moe_configs
from aiollm.kernels.fused_moe_gemv import fused_moe_gemv_triton, gemv_configs
from aiollm.kernels.fused_moe_grouped_mm import (
    fused_moe_grouped_mm,
    grouped_mm_down,
    grouped_mm_gate_up,
    usable_for,
)
from aiollm.kernels.moe_align import moe_align_triton, moe_route_ref
from aiollm.kernels.moe_combine import moe_combine_triton
from aiollm.kernels.norm import rms_norm_ref

GEMV_MAX_TOKENS = 16  # token classes up to here also try fused_moe_gemv.py's path
TORCH_MM_MIN_TOKENS = 1024  # and from here torch._grouped_mm (fused_moe_grouped_mm.py)


def moe_path(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
             device: torch.device, bench_inputs=None) -> Config:
    """Which forward this token-count class runs (key `fused_moe_path`): {"GEMV": 1} is
    fused_moe_gemv.py's path; else the grouped GEMMs here, with "TORCH_MM" 1 the down GEMM by
    torch._grouped_mm on the compact layout, 2 both GEMMs by it, 3 the gate/up GEMM by it
    (fused_moe_grouped_mm.py).
    Tuned by timing the whole forwards replayed from a CUDA graph (as steps run them; eager
    timing measured the host's launches), each with its own tuned configs, for the classes
    where more than one is offered: GEMV up to GEMV_MAX_TOKENS, torch._grouped_mm from
    TORCH_MM_MIN_TOKENS (where it runs here); `bench_inputs` as in moe_configs."""
    cls = bucket(tokens, TOKEN_CLASSES)
    if cls <= GEMV_MAX_TOKENS:
        candidates = [{"GEMV": 1}, {"GEMV": 0}]
    elif cls >= TORCH_MM_MIN_TOKENS:
        candidates = [{"GEMV": 0}] + [{"GEMV": 0, "TORCH_MM": m} for m in (1, 2, 3)]
    else:
        return {"GEMV": 0}

    def run(cfg):
        if cfg.get("TORCH_MM", 0) and not usable_for(bench_inputs[0]):
            raise RuntimeError("torch._grouped_mm does not run here")  # the tuner skips it
        return time_graph(lambda: _forward(cfg, *bench_inputs))

    key = f"e{num_experts}-n{2 * inter}-k{hidden}-top{top_k}-t{cls}"
    return get_config("fused_moe_path", key, device, {"GEMV": 0}, candidates, run,
                      classes={"t": TOKEN_CLASSES})


def use_gemv_path(tokens: int, num_experts: int, hidden: int, inter: int, top_k: int,
                  device: torch.device, bench_inputs=None) -> bool:
    """Whether this token-count class runs fused_moe_gemv.py's path (see moe_path)."""
    return bool(moe_path(tokens, num_experts, hidden, inter, top_k, device,
                         bench_inputs)["GEMV"])


def _forward(path: Config, x, w13, w2, topk_weights, topk_ids, expert_start: int
             ) -> torch.Tensor:
    """The layer by `path` (see moe_path), each GEMM with its tuned configs."""
    T, H = x.shape
    E, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    inputs = (x, w13, w2, topk_weights, topk_ids, expert_start)
    if path.get("GEMV", 0):
        cfgs = gemv_configs(T, TOKEN_CLASSES, E, H, two_i // 2, top_k, x.device, inputs)
        return fused_moe_gemv_triton(x, w13, w2, topk_weights, topk_ids, expert_start, cfgs)
    torch_mm = path.get("TORCH_MM", 0)
    if torch_mm and not usable_for(x):
        torch_mm = 0
    if torch_mm == 2:
        return fused_moe_grouped_mm(x, w13, w2, topk_weights, topk_ids, expert_start)
    configs = moe_configs(T, E, H, two_i // 2, top_k, x.device, inputs)
    return _grouped(x, w13, w2, topk_weights, topk_ids, expert_start, configs, torch_mm)


def _grouped(x, w13, w2, topk_weights, topk_ids, expert_start: int,
             configs: tuple[Config, Config], torch_mm: int = 0) -> torch.Tensor:
    """Alignment, the gate/up GEMM, the down GEMM (the routing weight in its epilogue) and the
    combine by pair, all here (torch_mm 0); or with torch_mm 1 the gate/up rows written in the
    compact layout and the down GEMM by torch._grouped_mm, 3 the reverse (moe_path)."""
    T, H = x.shape
    E = w13.shape[0]
    top_k = topk_ids.shape[1]
    up_cfg, down_cfg = configs
    aligned = moe_align_triton(topk_ids, E, up_cfg["BLOCK_M"], expert_start,
                               tokens=torch_mm == 3)
    if torch_mm == 1:
        act = _gate_up(x, w13, aligned, topk_weights, top_k, up_cfg, compact=True)
        return grouped_mm_down(act, w2, aligned, topk_weights, topk_ids, expert_start)
    if torch_mm == 3:
        act = grouped_mm_gate_up(x, w13, aligned)
    else:
        act = _gate_up(x, w13, aligned, topk_weights, top_k, up_cfg)
    # rows of pairs routed to experts held elsewhere stay unwritten: the combine skips them
    y = torch.empty((T * top_k, H), dtype=x.dtype, device=x.device)
    _gemm(act, w2, y, aligned, topk_weights, 1, False, True, down_cfg,
          aligned.positions if torch_mm == 3 else None, map_a=True)
    return moe_combine_triton(y, topk_ids, expert_start, E)


def fused_moe_triton(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, expert_start: int = 0,
                     num_global_experts: int | None = None,
                     configs: tuple[Config, Config] | None = None,
                     torch_mm: int = 0) -> torch.Tensor:
    """x [T, H]; w13 [E, 2I, H]; w2 [E, H, I] (same dtype as x); topk_weights [T, k] float32;
    topk_ids [T, k] int32 global expert ids, of which [expert_start, expert_start + E) are
    computed here and the others contribute 0 (num_global_experts: all experts, default E;
    kept for callers, the kernels need only expert_start and E) -> [T, H] in x's dtype.
    `configs` (gate/up with BLOCK_M, down) forces the grouped-GEMM path with those launch
    configs, and `torch_mm` (1: down GEMM, 2: both, 3: gate/up, by torch._grouped_mm; see
    moe_path) with it; without `configs` the autotuned path and configs are used."""
    T, H = x.shape
    E, two_i, _ = w13.shape
    inter = two_i // 2
    top_k = topk_ids.shape[1]
    assert w13.shape == (E, 2 * inter, H) and w2.shape == (E, H, inter), "expert weight shapes"
    assert x.stride(1) == 1 and w13.is_contiguous() and w2.is_contiguous()
    if T == 0:
        return torch.empty_like(x)
    x = x.contiguous()
    topk_weights = topk_weights.contiguous()
    topk_ids = topk_ids.contiguous()
    if configs is not None:
        if torch_mm == 2:
            return fused_moe_grouped_mm(x, w13, w2, topk_weights, topk_ids, expert_start)
        return _grouped(x, w13, w2, topk_weights, topk_ids, expert_start, configs, torch_mm)
    inputs = (x, w13, w2, topk_weights, topk_ids, expert_start)
    return _forward(moe_path(T, E, H, inter, top_k, x.device, inputs), *inputs)


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  expert_start: int = 0) -> torch.Tensor:
    """A loop over the experts that have tokens, as transformers computes it (the CPU path)."""
    E, two_i, _ = w13.shape
    inter = two_i // 2
    out = torch.zeros_like(x)
    local = topk_ids.long() - expert_start
    hit = torch.unique(local[(local >= 0) & (local < E)]).tolist()
    for e in hit:
        tok, pos = torch.where(local == e)
        gate, up = F.linear(x[tok], w13[e]).split(inter, dim=-1)
        h = F.linear(F.silu(gate) * up, w2[e])
        out.index_add_(0, tok, h * topk_weights[tok, pos, None].to(h.dtype))
    return out


def fused_moe_decode_ref(residual: torch.Tensor, norm_w: torch.Tensor, eps: float,
                         logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
                         renormalize: bool, expert_start: int = 0) -> torch.Tensor:
    """fused_moe_gemv.fused_moe_decode_triton's contract, unfused: the stream normalised in
    float32 then cast to the experts' dtype, routed by moe_route_ref, fused_moe_ref, added
    into residual [T, H] float32 in place."""
    h = rms_norm_ref(residual.float(), norm_w, eps).to(w13.dtype)
    weights, ids = moe_route_ref(logits, top_k, renormalize)
    residual += fused_moe_ref(h, w13, w2, weights, ids, expert_start).float()
    return residual
