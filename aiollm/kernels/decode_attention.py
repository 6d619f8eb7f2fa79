"""Decode attention: one new query token per request over its K/V in the token-level pool.

decode_attention_triton checks the shapes, looks up the launch config
(decode_attention_configs.py), picks the variant (direct, split-K or long-only splits, by the
split rule of decode_splits.py; decode_attention_kernel.py describes each) and launches the
kernel; launch_variant says which compiled variant a launch takes (for the warm-up), and
decode_attention_ref is the PyTorch reference and the CPU path.
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from aiollm.kernels import pdl
from aiollm.kernels.autotune import Config, time_config, untuned
from aiollm.kernels.decode_attention_configs import CPU_CONFIG, _config
from aiollm.kernels.decode_attention_kernel import _decode_kernel, _decode_reduce_kernel
from aiollm.kernels.decode_splits import MAX_SPLITS, long_splits, num_kv_splits
from aiollm.kernels.extend_attention import attention_out, capped, softcap_args

# the merging program reads up to this many partial-output elements (float32) at a time:
# MERGE_CHUNK = MERGE_ELEMENTS / (query heads of the group x head dim) splits, at most 16
MERGE_ELEMENTS = 4096
MAX_COUNTERS = 1 << 16  # (request, KV head) pairs of one split launch
# Split outputs merge in the split launch itself (else in a second, reduce launch)
MERGE_IN_KERNEL = True


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(cache: dict[torch.device, torch.Tensor], device: torch.device, size: int,
                     kernel: str) -> torch.Tensor:
    """int32 [size] counters on `device` that a kernel's programs count themselves in on
    (the last one resets its counter, so they are zero between launches): allocated once per
    `cache` and device and kept, since captured CUDA graphs hold their address.
    AssertionError when first asked for during a capture."""
    c = cache.get(device)
    if c is None:
        assert not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()), \
            f"{kernel}'s counters must be allocated before a CUDA graph capture"
        c = cache[device] = torch.zeros(size, dtype=torch.int32, device=device)
    return c


def _merge_counters(device: torch.device) -> torch.Tensor:
    """The split launches' arrival counters on `device` (the merging program resets its own)."""
    return arrival_counters(_counters, device, MAX_COUNTERS, "decode attention")


def _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
            out, cfg: Config, num_splits: int | None, merge_in_kernel: bool = True,
            long_only: int | None = None, window: int | None = None,
            softcap: float | None = None) -> None:
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    group = HQ // HKV
    block_n = cfg["BLOCK_N"]
    if num_splits is None:
        num_sms = _num_sms(q.device) if q.is_cuda else 4
        num_splits = num_kv_splits(B, HKV, max_seq_len, num_sms, cfg["split_tokens"])
        if num_splits == 1 and long_only is None:
            long_only = long_splits(max_seq_len)
    # only in place of one split; it merges in its own launch (a reduce launch would read
    # the unused splits)
    if (num_splits == 1 and long_only is not None and long_only > 1 and merge_in_kernel
            and B * HKV <= MAX_COUNTERS):
        num_splits = long_only
    else:
        long_only = None
    group_p2, block_d = triton.next_power_of_2(group), triton.next_power_of_2(D)
    scale, cap_in, cap_out = softcap_args(sm_scale, softcap)
    common = dict(
        GROUP=group, BLOCK_H=max(16, group_p2), HEAD_DIM=D, BLOCK_D=block_d, BLOCK_N=block_n,
        GROUP_P2=group_p2, MERGE_CHUNK=max(1, min(16, MERGE_ELEMENTS // (group_p2 * block_d))),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SLIDING=bool(window),
        CAP_IN=cap_in, CAP_OUT=cap_out,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch_kwargs(q.device),
    )
    args = (q, k_cache, v_cache, req_to_token, req_rows, seq_lens)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
               v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0))
    if num_splits == 1:
        _decode_kernel[(B, HKV, 1)](
            *args, out, out, out, out, scale, *strides, out.stride(0), out.stride(1), 0, 0, 0,
            0, 0, 1, window or 0, SPLIT=False, MERGE=False, **common)
        return
    partial = torch.empty((B, HQ, num_splits, D), dtype=torch.float32, device=q.device)
    lse = torch.empty((B, HQ, num_splits), dtype=torch.float32, device=q.device)
    merge = merge_in_kernel and B * HKV <= MAX_COUNTERS
    counters = _merge_counters(q.device) if merge else lse
    _decode_kernel[(B, HKV, num_splits)](
        *args, partial, lse, out, counters, scale, *strides,
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), num_splits, window or 0, SPLIT=True, MERGE=merge,
        LONG_ONLY=bool(long_only), **common)
    if merge:
        return
    _decode_reduce_kernel[(B, HQ)](
        partial, lse, out, num_splits,
        partial.stride(0), partial.stride(1), partial.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=D, BLOCK_D=triton.next_power_of_2(D),
        # one block size for every split count up to MAX_SPLITS: one compiled variant
        BLOCK_S=max(MAX_SPLITS, triton.next_power_of_2(num_splits)), num_warps=4,
        **pdl.launch_kwargs(q.device))



def launch_variant(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                   dtype: torch.dtype, device: torch.device, max_seq_len: int) -> tuple:
    """What picks the compiled kernel of a launch of `batch` requests whose longest context is
    `max_seq_len` tokens: its config's compile-time fields, whether the contexts are split (the
    split count itself is a runtime value), whether the splits merge in the same launch and
    whether only long contexts are split (long_splits).
    Within one shape class (one config) the split count falls with the batch and grows with
    the context (num_kv_splits), so a class can launch both the split and the unsplit kernel;
    the warm-up (aiollm/engine/warm_up.py) compiles every variant a class can reach. Looks the
    config up without tuning (autotune.untuned)."""
    with untuned():
        cfg = _config(batch, num_q_heads, num_kv_heads, head_dim, dtype, device, max_seq_len,
                      None)
    if device.type != "cuda":
        cfg = CPU_CONFIG  # as decode_attention_triton launches there
    num_sms = _num_sms(device) if device.type == "cuda" else 4
    split = num_kv_splits(batch, num_kv_heads, max_seq_len, num_sms, cfg["split_tokens"]) > 1
    fits = MERGE_IN_KERNEL and batch * num_kv_heads <= MAX_COUNTERS
    long_only = not split and long_splits(max_seq_len) > 1 and fits
    merge = (split or long_only) and fits
    return (tuple(sorted((k, v) for k, v in cfg.items() if k != "split_tokens")),
            split or long_only, merge, long_only)


def decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    *, config: Config | None = None, num_splits: int | None = None,
    merge_in_kernel: bool | None = None, out: torch.Tensor | None = None,
    long_only: int | None = None, window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """`config` and `num_splits` override the tuned config and the split rule,
    `merge_in_kernel` (default MERGE_IN_KERNEL) where split outputs merge, and `long_only`
    the splits a launch of one split (by the rule or num_splits=1) offers to long contexts
    (long_splits) (tests, bench); `window`: the sliding window in tokens (None or 0: none;
    decode_attention_ref); `softcap` the attention logit soft-cap (None or 0: none;
    decode_attention_ref). The split rule still sizes a launch by max_seq_len, not by the
    window (the warm-up compiles the variants a length class reaches, launch_variant)."""
    if merge_in_kernel is None:
        merge_in_kernel = MERGE_IN_KERNEL
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    assert k_cache.shape[2] == D and v_cache.shape == k_cache.shape and HQ % HKV == 0
    assert req_rows.shape == (B,) and seq_lens.shape == (B,)
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert req_to_token.stride(1) == 1 and req_to_token.dtype == torch.int32
    out = attention_out(q, out)
    if B == 0:
        return out
    if config is None and not q.is_cuda:
        config = CPU_CONFIG
    if config is None:
        def bench(cfg: Config) -> float:
            scratch = torch.empty_like(q)
            return time_config(lambda: _launch(q, k_cache, v_cache, req_to_token, req_rows,
                                               seq_lens, sm_scale, max_seq_len, scratch, cfg,
                                               num_splits, merge_in_kernel, long_only,
                                               window, softcap))

        config = _config(B, HQ, HKV, D, q.dtype, q.device, max_seq_len, bench)
    _launch(q, k_cache, v_cache, req_to_token, req_rows, seq_lens, sm_scale, max_seq_len,
            out, config, num_splits, merge_in_kernel, long_only, window, softcap)
    return out


def decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_token: torch.Tensor,
    req_rows: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int,
    *, out: torch.Tensor | None = None, window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Padded to the longest context in the batch and masked; computed in fp32. With a
    `window` of W tokens the query at position p = seq_lens[b] - 1 sees keys (p - W, p]
    only, the W newest (transformers' sliding_window_causal_mask_function); with a
    `softcap` each scaled score s is softcap x tanh(s / softcap) before the mask (capped)."""
    B, HQ, D = q.shape
    HKV = k_cache.shape[1]
    L = int(seq_lens.max()) if B else 0
    pos = torch.arange(L, device=q.device)
    valid = pos[None, :] < seq_lens[:, None].long()                       # [B, L]
    if window:
        valid &= pos[None, :] >= seq_lens[:, None].long() - window
    slots = req_to_token[req_rows.long()][:, :L].long()
    slots = torch.where(valid, slots, torch.zeros_like(slots))
    k = k_cache[slots].float().permute(0, 2, 1, 3)                         # [B, HKV, L, D]
    v = v_cache[slots].float().permute(0, 2, 1, 3)
    qg = q.float().view(B, HKV, HQ // HKV, D)
    scores = capped((qg @ k.transpose(-1, -2)) * sm_scale, softcap)        # [B, HKV, G, L]
    scores = scores.masked_fill(~valid[:, None, None, :], -math.inf)
    o = torch.softmax(scores, dim=-1) @ v                                  # [B, HKV, G, D]
    return attention_out(q, out).copy_(o.reshape(B, HQ, D))
