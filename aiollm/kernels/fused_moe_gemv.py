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

Products are elementwise multiplies and row sums in float32 (no MMA: a token block of one
row would waste at least 15 of the MMA's 16 rows). Two pairs of one expert read its weights
twice, so the path suits token counts where few experts repeat; fused_moe.py's autotuned
`fused_moe_path` key chooses between the two per token-count class. Experts outside
[expert_start, expert_start + E) contribute 0, as in fused_moe.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aiollm.kernels.autotune import Config, bucket, get_config, time_config

# (BLOCK_N, BLOCK_K, num_warps, num_stages)
UP_CANDIDATES = [(8, 256, 4, 2), (16, 256, 4, 2), (16, 512, 4, 2), (32, 128, 4, 2),
                 (32, 256, 4, 3), (64, 128, 4, 2), (16, 256, 2, 3), (8, 512, 4, 3)]
DOWN_CANDIDATES = [(4, 256, 4, 2), (8, 128, 4, 2), (8, 256, 4, 2), (16, 128, 4, 2),
                   (4, 128, 4, 2), (16, 64, 4, 2), (8, 128, 8, 2), (16, 128, 8, 2)]


@triton.jit
def _gemv_gate_up_kernel(X, W13, Act, TopkIds, I, H, expert_start, num_experts,
                         stride_x, stride_we, stride_wn, stride_act,
                         TOP_K: tl.constexpr, EVEN_K: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pair = tl.program_id(0)
    e = tl.load(TopkIds + pair) - expert_start
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
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs).to(tl.float32)
            wg = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
            wu = tl.load(w_ptrs + up_step, mask=n_ok[:, None], other=0.0)
        else:
            k_ok = offs_k < H - k0
            x = tl.load(x_ptrs, mask=k_ok, other=0.0).to(tl.float32)
            wg = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            wu = tl.load(w_ptrs + up_step, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        gate += wg.to(tl.float32) * x[None, :]
        up += wu.to(tl.float32) * x[None, :]
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    g = tl.sum(gate, 1)
    h = g * tl.sigmoid(g) * tl.sum(up, 1)
    tl.store(Act + pair.to(tl.int64) * stride_act + offs_n, h.to(Act.dtype.element_ty),
             mask=n_ok)


@triton.jit
def _gemv_down_kernel(Act, W2, Out, TopkIds, TopkWeights, H, I, expert_start, num_experts,
                      stride_act, stride_we, stride_wn, stride_out,
                      TOP_K: tl.constexpr, BLOCK_TOPK: tl.constexpr, EVEN_K: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # all top_k experts' tiles in one [BLOCK_TOPK, BLOCK_N, BLOCK_K] load per step: at one
    # token there are few programs, and each must keep many bytes in flight
    t = tl.program_id(0)
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
    tl.store(Out + t.to(tl.int64) * stride_out + offs_n, out.to(Out.dtype.element_ty), mask=n_ok)


def _as_config(c: tuple[int, int, int, int]) -> Config:
    return {"BLOCK_N": c[0], "BLOCK_K": c[1], "num_warps": c[2], "num_stages": c[3]}


def _gate_up(x, w13, act, topk_ids, expert_start: int, cfg: Config) -> None:
    T, H = x.shape
    E, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    grid = (T * top_k, triton.cdiv(two_i // 2, cfg["BLOCK_N"]))
    _gemv_gate_up_kernel[grid](
        x, w13, act, topk_ids, two_i // 2, H, expert_start, E,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        TOP_K=top_k, EVEN_K=H % cfg["BLOCK_K"] == 0, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _down(act, w2, out, topk_ids, topk_weights, expert_start: int, cfg: Config) -> None:
    T, H = out.shape
    E, _, inter = w2.shape
    grid = (T, triton.cdiv(H, cfg["BLOCK_N"]))
    _gemv_down_kernel[grid](
        act, w2, out, topk_ids, topk_weights, H, inter, expert_start, E,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        TOP_K=topk_ids.shape[1], BLOCK_TOPK=triton.next_power_of_2(topk_ids.shape[1]),
        EVEN_K=inter % cfg["BLOCK_K"] == 0, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def gemv_configs(tokens: int, token_classes: tuple[int, ...], num_experts: int, hidden: int,
                 inter: int, top_k: int, device: torch.device, bench_inputs=None
                 ) -> tuple[Config, Config]:
    """(gate/up config, down config) for this shape class; `bench_inputs` is
    (x, w13, w2, topk_weights, topk_ids, expert_start) to tune on when a key is missing."""
    cls = bucket(tokens, token_classes)
    default = _as_config((16, 256, 4, 2))

    def run_up(cfg):
        x, w13, _, _, ids, start = bench_inputs
        act = torch.empty((ids.numel(), inter), dtype=x.dtype, device=x.device)
        return time_config(lambda: _gate_up(x, w13, act, ids, start, cfg))

    def run_down(cfg):
        x, _, w2, tw, ids, start = bench_inputs
        act = torch.randn((ids.numel(), inter), dtype=x.dtype, device=x.device)
        out = torch.empty_like(x)
        return time_config(lambda: _down(act, w2, out, ids, tw, start, cfg))

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
