"""The Triton rotary kernels on a partial rotary (Phi-3's partial_rotary_factor) with LongRoPE.

aiollm runs a partial rotary through the unchanged kernels: the loader reorders each q and k
head (weights_layout.rotary_head_order) and the rotary table passes the other pairs through
(cos 1, sin 0: rope.cos_sin_cache). Each kernel that rotates (apply_rotary, the fused rotary
+ KV store, the fused norm + GEMV + rotary + KV store of a decode step) must then give, in
the checkpoint's order, what transformers' phi3 apply_rotary_pos_emb gives, past
original_max_position too (the long factors' rows). Without CUDA the kernels run under
Triton's CPU interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import Phi3Config  # noqa: E402
from transformers.models.phi3.modeling_phi3 import (  # noqa: E402
    Phi3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from aiollm.kernels import apply_rotary_triton, rotary_store_kv_triton  # noqa: E402
from aiollm.kernels.gemv import gemv_norm_rope_kv_triton  # noqa: E402
from aiollm.model.hf_config import config_from_hf  # noqa: E402
from aiollm.model.rope import cos_sin_cache  # noqa: E402
from aiollm.model.weights_layout import rotary_head_order  # noqa: E402

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
HQ, HKV, D, T = 4, 2, 16, 5  # rotary_dim 12 of 16
CONFIG = Phi3Config(vocab_size=32, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=HQ, num_key_value_heads=HKV, pad_token_id=0,
                    max_position_embeddings=256, original_max_position_embeddings=32,
                    partial_rotary_factor=0.75,
                    rope_scaling={"type": "longrope",
                                  "short_factor": [1.0, 1.2, 1.6, 2.1, 2.9, 3.5],
                                  "long_factor": [1.3, 2.2, 4.0, 6.5, 9.0, 15.0]})
ORDER = rotary_head_order(D, 12)


def transformers_rotated(q, k, positions):
    """q [T, HQ, D] and k [T, HKV, D] rotated as transformers' Phi-3 rotates each position
    (its table for a sequence ending there: short factors below 32, long from 32 on)."""
    rotary = Phi3RotaryEmbedding(CONFIG)
    outs = []
    for t, p in enumerate(positions.tolist()):
        cos, sin = rotary(q, torch.arange(p + 1)[None])
        qe, ke = apply_rotary_pos_emb(q[t:t + 1].transpose(0, 1)[None], k[t:t + 1]
                                      .transpose(0, 1)[None], cos[:, p:p + 1], sin[:, p:p + 1])
        outs.append((qe[0].transpose(0, 1), ke[0].transpose(0, 1)))
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    cfg = config_from_hf(CONFIG)
    table = cos_sin_cache(cfg.rope, D, 64, DEV)
    positions = torch.tensor([0, 7, 31, 32, 50])  # both sides of original_max_position
    q, k = torch.randn(T, HQ, D), torch.randn(T, HKV, D)
    return table, positions, q, k, transformers_rotated(q, k, positions)


def test_apply_rotary_kernel_is_transformers_partial_rotary(case):
    table, positions, q, k, (q_want, k_want) = case
    qo, ko = q[..., ORDER].to(DEV), k[..., ORDER].to(DEV)
    apply_rotary_triton(qo, ko, positions.to(DEV), table)
    back = torch.argsort(ORDER)
    assert torch.allclose(qo.cpu()[..., back], q_want, atol=1e-5)
    assert torch.allclose(ko.cpu()[..., back], k_want, atol=1e-5)


def test_fused_store_kernel_is_transformers_partial_rotary(case):
    table, positions, q, k, (q_want, k_want) = case
    qo, ko = q[..., ORDER].to(DEV), k[..., ORDER].to(DEV)
    v = torch.randn(T, HKV, D, device=DEV)
    k_cache, v_cache = torch.zeros(8, HKV, D, device=DEV), torch.zeros(8, HKV, D, device=DEV)
    loc = torch.tensor([3, 0, 6, 1, 5], device=DEV)
    rotary_store_kv_triton(qo, ko, v, positions.to(DEV), table, k_cache, v_cache, loc)
    back = torch.argsort(ORDER)
    assert torch.allclose(qo.cpu()[..., back], q_want, atol=1e-5)
    assert torch.allclose(k_cache[loc].cpu()[..., back], k_want, atol=1e-5)
    assert torch.equal(v_cache[loc], v)


def test_fused_decode_gemv_is_transformers_partial_rotary(case):
    """The decode step's norm + qkv GEMV + rotary + KV store, on weights in the loader's
    head order: q and the cached k are the checkpoint's rotated by transformers' rule."""
    table, positions, _, _, _ = case
    M, K = 3, 24
    pos = positions[2:]  # 31, 32, 50
    x, g = torch.randn(M, K), 1 + 0.1 * torch.randn(K)
    w = torch.randn((HQ + 2 * HKV) * D, K) / K ** 0.5
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g
    qkv = normed @ w.T
    q, k, v = qkv.split([HQ * D, HKV * D, HKV * D], dim=-1)
    q_want, k_want = transformers_rotated(q.reshape(M, HQ, D), k.reshape(M, HKV, D), pos)
    heads = w.reshape(-1, D, K)
    w_ours = torch.cat([heads[:HQ + HKV][:, ORDER], heads[HQ + HKV:]]).reshape(w.shape)
    k_cache, v_cache = torch.zeros(6, HKV, D, device=DEV), torch.zeros(6, HKV, D, device=DEV)
    loc = torch.tensor([4, 1, 2], device=DEV)
    q_ours = gemv_norm_rope_kv_triton(x.to(DEV), g.to(DEV), 1e-6, w_ours.to(DEV), None,
                                      pos.to(DEV), table, k_cache, v_cache, loc, HQ)
    back = torch.argsort(ORDER)
    assert torch.allclose(q_ours.cpu().reshape(M, HQ, D)[..., back], q_want, atol=1e-4)
    assert torch.allclose(k_cache[loc].cpu()[..., back], k_want, atol=1e-4)
    assert torch.allclose(v_cache[loc].cpu(), v.reshape(M, HKV, D), atol=1e-4)
