"""Fused mixture-of-experts MLP for a few tokens: two GEMV launches, no alignment.

At decode sizes (a handful of tokens, each on top_k experts) the grouped GEMMs of fused_moe.py
spend more time in their side launches (alignment: three kernels and two fills; the top-k
sum) than in reading the experts' weights, which is all the work there is. This path reads
topk_ids directly:

- gate/up: one program per (pair, BLOCK_N slice of the intermediate): the pair's expert's
  gate and up rows times the token's hidden vector, SiLU-and-mul, one row of act [T * top_k, I];
- down: one program per (token, BLOCK_N slice of the hidden size): the sum over the token's
  top_k pairs of weight * W2[e] @ act[pair], so the top-k reduction needs no extra pass; the
  top_k experts' weight tiles are read in one load per step.

The decode form (fused_moe_decode_triton, llama's one-token steps: SparseMoe.forward_small)
folds the layer's neighbours into the same two launches, so that a one-token MoE block is
the router's GEMV (gemv.py, the RMSNorm folded in) and these two: gate/up reads the float32
residual stream and applies the RMSNorm as gemv.py does (sum(x^2) accumulated over the same
pass, the sums scaled at the end) and routes the token from the router's logits itself
(moe_align.route_rows, the routing kernel's code: no routing launch), each pair's first
program writing the pair's expert and weight for the down kernel, which adds into the
stream. Both are launched with PDL (pdl.py), waiting first: nothing they read is known
before the kernel before them ends.

Products are elementwise multiplies and row sums in float32 (no MMA: a token block of one
row would waste at least 15 of the MMA's 16 rows). Two pairs of one expert read its weights
twice, so the path suits token counts where few experts repeat; fused_moe.py's autotuned
`fused_moe_path` key chooses between the two per token-count class. Experts outside
[expert_start, expert_start + E) contribute 0, as in fused_moe.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from aiollm.kernels import pdl
from aiollm.kernels.autotune import Config, bucket, get_config, time_config
from aiollm.kernels.fused_moe_gemm_configs import TOKEN_CLASSES
from aiollm.kernels.moe_align import route_rows
from aiollm.kernels.pdl import gdc_launch_dependents, gdc_wait

# (BLOCK_N, BLOCK_K, num_warps, num_stages)
UP_CANDIDATES = [(8, 256, 4, 2), (16, 256, 4, 2), (16, 512, 4, 2), (32, 128, 4, 2),
                 (32, 256, 4, 3), (64, 128, 4, 2), (16, 256, 2, 3), (8, 512, 4, 3)]
DOWN_CANDIDATES = [(4, 256, 4, 2), (8, 128, 4, 2), (8, 256, 4, 2), (16, 128, 4, 2),
                   (4, 128, 4, 2), (16, 64, 4, 2), (8, 128, 8, 2), (16, 128, 8, 2)]


@triton.jit
def _gemv_gate_up_kernel(X, NormW, W13, Act, TopkIds, TopkWeights, Logits, I, H, E_all,
                         expert_start, num_experts, eps, stride_x, stride_l, stride_we,
                         stride_wn, stride_act,
                         TOP_K: tl.constexpr, EVEN_K: tl.constexpr, DECODE: tl.constexpr,
                         RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr,
                         BLOCK_TOPK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PDL: tl.constexpr):
    # DECODE: X is the float32 residual stream, RMSNorm (NormW, eps) folded in as in gemv.py
    # (the sums scaled by rsqrt(mean(x^2) + eps) at the end), the pair's expert routed here
    # from the logits (moe_align.route_rows) and, by the pair's first program, written to
    # TopkIds / TopkWeights for the down kernel
    pair = tl.program_id(0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    if DECODE:
        ee = tl.arange(0, BLOCK_E)
        logits = tl.load(Logits + (pair // TOP_K).to(tl.int64) * stride_l + ee[None, :],
                         mask=ee[None, :] < E_all, other=0.0).to(tl.float32)
        w, ids = route_rows(logits, E_all, TOP_K, RENORMALIZE, 1, BLOCK_E, BLOCK_TOPK)
        mine = tl.arange(0, BLOCK_TOPK)[None, :] == pair % TOP_K
        e = tl.sum(tl.sum(tl.where(mine, ids, 0), 1), 0)
        if tl.program_id(1) == 0:
            tl.store(TopkIds + pair, e)
            tl.store(TopkWeights + pair, tl.sum(tl.sum(tl.where(mine, w, 0.0), 1), 0))
    else:
        e = tl.load(TopkIds + pair)
    e = e - expert_start
    if (e < 0) | (e >= num_experts):
        return  # held elsewhere: the down kernel skips this pair too
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + (pair // TOP_K).to(tl.int64) * stride_x + offs_k
    w_ptrs = W13 + e.to(tl.int64) * stride_we + offs_n[:, None].to(tl.int64) * stride_wn \
        + offs_k[None, :]
    up_step = I * stride_wn
    gate = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    sq = tl.zeros((1, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs).to(tl.float32)
            wg = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
            wu = tl.load(w_ptrs + up_step, mask=n_ok[:, None], other=0.0)
            if DECODE:
                g = tl.load(NormW + k0 + offs_k).to(tl.float32)
        else:
            k_ok = offs_k < H - k0
            x = tl.load(x_ptrs, mask=k_ok, other=0.0).to(tl.float32)
            wg = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            wu = tl.load(w_ptrs + up_step, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            if DECODE:
                g = tl.load(NormW + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        if DECODE:
            sq += (x * x)[None, :]
            x = x * g
        gate += wg.to(tl.float32) * x[None, :]
        up += wu.to(tl.float32) * x[None, :]
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    g = tl.sum(gate, 1)
    u = tl.sum(up, 1)
    if DECODE:
        rstd = tl.rsqrt(tl.sum(sq, 1) / H + eps)  # [1]
        g = g * rstd
        u = u * rstd
    h = g * tl.sigmoid(g) * u
    tl.store(Act + pair.to(tl.int64) * stride_act + offs_n, h.to(Act.dtype.element_ty),
             mask=n_ok)


@triton.jit
def _gemv_down_kernel(Act, W2, Out, TopkIds, TopkWeights, H, I, expert_start, num_experts,
                      stride_act, stride_we, stride_wn, stride_out,
                      TOP_K: tl.constexpr, BLOCK_TOPK: tl.constexpr, EVEN_K: tl.constexpr,
                      RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      PDL: tl.constexpr):
    # all top_k experts' tiles in one [BLOCK_TOPK, BLOCK_N, BLOCK_K] load per step: at one
    # token there are few programs, and each must keep many bytes in flight. RESIDUAL: Out
    # is the float32 residual stream, added into in place.
    t = tl.program_id(0)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    j = tl.arange(0, BLOCK_TOPK)
    pairs = t * TOP_K + j
    e = tl.load(TopkIds + pairs, mask=j < TOP_K, other=-1) - expert_start
    ok = (j < TOP_K) & (e >= 0) & (e < num_experts)
    weight = tl.load(TopkWeights + pairs, mask=ok, other=0.0)
    a_ptrs = Act + pairs[:, None].to(tl.int64) * stride_act + offs_k[None, :]
    w_ptrs = W2 + tl.where(ok, e, 0).to(tl.int64)[:, None, None] * stride_we \
        + offs_n[None, :, None].to(tl.int64) * stride_wn + offs_k[None, None, :]
    w_ok = ok[:, None, None] & n_ok[None, :, None]
    acc = tl.zeros((BLOCK_TOPK, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=ok[:, None], other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=w_ok, other=0.0)
        else:
            k_ok = offs_k < I - k0
            a = tl.load(a_ptrs, mask=ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=w_ok & k_ok[None, None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a[:, None, :], 2)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out = tl.sum(acc * weight[:, None], 0)
    out_ptrs = Out + t.to(tl.int64) * stride_out + offs_n
    if RESIDUAL:
        out += tl.load(out_ptrs, mask=n_ok, other=0.0)
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=n_ok)


def _as_config(c: tuple[int, int, int, int]) -> Config:
    return {"BLOCK_N": c[0], "BLOCK_K": c[1], "num_warps": c[2], "num_stages": c[3]}


class Route(NamedTuple):
    """The decode form's inputs (fused_moe_decode): router logits [T, E_all] float32 from the
    RMSNorm-ed stream, the norm's weight [H] and eps, and whether the routing renormalises
    (moe_align.route_rows; top_k is the routing buffers' width)."""
    logits: torch.Tensor
    norm_w: torch.Tensor
    eps: float
    renormalize: bool


def _gate_up(x, w13, act, topk_ids, expert_start: int, cfg: Config,
             route: Route | None = None, topk_weights: torch.Tensor | None = None) -> None:
    """act [T * top_k, I] of x [T, H]; with `route` (the decode form) x is the residual
    stream and the routing is written into topk_ids / topk_weights [T, top_k]."""
    T, H = x.shape
    E, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    logits = route.logits if route is not None else x
    grid = (T * top_k, triton.cdiv(two_i // 2, cfg["BLOCK_N"]))
    _gemv_gate_up_kernel[grid](
        x, route.norm_w if route is not None else x, w13, act, topk_ids,
        topk_weights if topk_weights is not None else x, logits, two_i // 2, H,
        logits.shape[1], expert_start, E, route.eps if route is not None else 0.0,
        x.stride(0), logits.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        TOP_K=top_k, EVEN_K=H % cfg["BLOCK_K"] == 0, DECODE=route is not None,
        RENORMALIZE=route is not None and route.renormalize,
        BLOCK_E=triton.next_power_of_2(logits.shape[1]) if route is not None else 1,
        BLOCK_TOPK=triton.next_power_of_2(top_k), BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **pdl.launch_kwargs(x.device))


def _down(act, w2, out, topk_ids, topk_weights, expert_start: int, cfg: Config,
          residual: bool = False) -> None:
    """out [T, H] = the weighted sum of each token's pairs' down projections, or with
    `residual` that sum added into out (the decode form's float32 residual stream)."""
    T, H = out.shape
    E, _, inter = w2.shape
    grid = (T, triton.cdiv(H, cfg["BLOCK_N"]))
    _gemv_down_kernel[grid](
        act, w2, out, topk_ids, topk_weights, H, inter, expert_start, E,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        TOP_K=topk_ids.shape[1], BLOCK_TOPK=triton.next_power_of_2(topk_ids.shape[1]),
        EVEN_K=inter % cfg["BLOCK_K"] == 0, RESIDUAL=residual,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **pdl.launch_kwargs(act.device))


def gemv_configs(tokens: int, token_classes: tuple[int, ...], num_experts: int, hidden: int,
                 inter: int, top_k: int, device: torch.device, bench_inputs=None,
                 route: Route | None = None) -> tuple[Config, Config]:
    """(gate/up config, down config) for this shape class; `bench_inputs` is
    (x, w13, w2, topk_weights, topk_ids, expert_start) to tune on when a key is missing
    (with `route`, the decode form: x the residual stream, topk_* its buffers). Both forms
    share the keys: they read the same weight tiles."""
    cls = bucket(tokens, token_classes)
    default = _as_config((16, 256, 4, 2))

    def run_up(cfg):
        x, w13, _, tw, ids, start = bench_inputs
        act = torch.empty((x.shape[0] * top_k, inter), dtype=w13.dtype, device=x.device)
        return time_config(lambda: _gate_up(x, w13, act, ids, start, cfg, route, tw))

    def run_down(cfg):
        x, _, w2, tw, ids, start = bench_inputs
        act = torch.randn((x.shape[0] * top_k, inter), dtype=w2.dtype, device=x.device)
        out = torch.zeros_like(x)  # a scratch stream: the decode form adds into it
        return time_config(lambda: _down(act, w2, out, ids, tw, start, cfg, route is not None))

    key = f"e{num_experts}-n{2 * inter}-k{hidden}-top{top_k}-t{cls}"
    up = get_config("fused_moe_gemv_gate_up", key, device, default,
                    [_as_config(c) for c in UP_CANDIDATES], run_up, classes={"t": token_classes})
    key = f"e{num_experts}-n{hidden}-k{inter}-top{top_k}-t{cls}"
    down = get_config("fused_moe_gemv_down", key, device, default,
                      [_as_config(c) for c in DOWN_CANDIDATES], run_down,
                      classes={"t": token_classes})
    return up, down


def fused_moe_gemv_triton(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                          topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          expert_start: int, configs: tuple[Config, Config]) -> torch.Tensor:
    """Same contract as fused_moe.fused_moe_triton: x [T, H]; w13 [E, 2I, H]; w2 [E, H, I];
    topk_weights [T, k] float32; topk_ids [T, k] int32 global ids -> [T, H] in x's dtype.
    Inputs must be contiguous (the caller's wrapper makes them so)."""
    T, H = x.shape
    inter = w2.shape[2]
    up_cfg, down_cfg = configs
    act = torch.empty((topk_ids.numel(), inter), dtype=x.dtype, device=x.device)
    _gate_up(x, w13, act, topk_ids, expert_start, up_cfg)
    out = torch.empty_like(x)
    _down(act, w2, out, topk_ids, topk_weights, expert_start, down_cfg)
    return out


def fused_moe_decode_triton(residual: torch.Tensor, norm_w: torch.Tensor, eps: float,
                            logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                            top_k: int, renormalize: bool, expert_start: int = 0
                            ) -> torch.Tensor:
    """The mixture-of-experts MLP of a decode step of a few tokens on the residual stream,
    its neighbours folded into the two GEMV launches: residual [T, H] float32 (updated in
    place and returned) += sum_k w[t,k] * down_e(silu(gate_e(h)) * up_e(h)) with h =
    rmsnorm(residual) * norm_w [H] (eps), experts routed by the gate/up kernel from the
    router's logits [T, E_all] float32 (softmax, top_k, renormalised if asked:
    moe_align.route_rows), which hands the routing to the down kernel.
    w13 [E, 2I, H] and w2 [E, H, I] hold experts [expert_start, expert_start + E); routes
    elsewhere add 0. The GEMV path's configs for T tokens (shared keys, gemv_configs)."""
    T, H = residual.shape
    E, two_i, _ = w13.shape
    assert residual.dtype == torch.float32 and residual.is_contiguous()
    assert logits.dtype == torch.float32 and logits.shape[0] == T and logits.stride(1) == 1
    assert w13.is_contiguous() and w2.is_contiguous() and norm_w.is_contiguous()
    route = Route(logits, norm_w, eps, renormalize)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=residual.device)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=residual.device)
    up_cfg, down_cfg = gemv_configs(T, TOKEN_CLASSES, E, H, two_i // 2, top_k,
                                    residual.device,
                                    (residual, w13, w2, weights, ids, expert_start), route)
    act = torch.empty((T * top_k, two_i // 2), dtype=w13.dtype, device=residual.device)
    _gate_up(residual, w13, act, ids, expert_start, up_cfg, route, weights)
    _down(act, w2, residual, ids, weights, expert_start, down_cfg, residual=True)
    return residual
