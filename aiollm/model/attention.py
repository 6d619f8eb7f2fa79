"""The decoder's attention block: fused q/k/v projection, rotary and KV store, the attention
kernels over the layer's KV cache, and o_proj.

A layer with a sliding window (ModelConfig.layer_window: Mistral, Qwen2's upper layers, ...)
passes it to every attention kernel it runs, so a query at position p sees the keys
(p - window, p] only, as transformers masks them; the KV pool still keeps every token's K/V
(the window saves reads, not memory), so the context is the model's max_position.

Granite's attention_multiplier and Gemma 2/3's query_pre_attn_scalar set the softmax scale
(sm_scale); Gemma 2's attn_logit_softcapping caps each scaled score before the mask (softcap,
passed to every attention kernel); Qwen3's and Gemma 3's per-head q/k norms run in the rotary
kernel; Gemma 3's sliding layers rotate by their own table (the model passes each layer's:
LlamaForCausalLM.layer_cos_sin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from aiollm.kernels import attention_oproj, decode_attention, extend_attention, rotary_store_kv
from aiollm.kernels.gemv import gemv_norm, gemv_norm_rope_kv, gemv_residual
from aiollm.model.config import ModelConfig
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.linear import Linear, linear_into
from aiollm.model.norm import RMSNorm
from aiollm.model.parallel import RowParallelLinear

if TYPE_CHECKING:
    from aiollm.model.llama import SegmentIO


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        # Granite's attention_multiplier, Gemma 2/3's query_pre_attn_scalar ** -0.5, or
        # 1/sqrt(D); Gemma 2's attention logit soft-cap (None: none)
        self.sm_scale = config.softmax_scale
        self.softcap = config.attn_logit_softcapping
        # the sliding window in tokens, 0 for none (LlamaForCausalLM clears one no context
        # of the engine reaches)
        self.window = config.layer_window(layer_id)
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias
        )
        self.o_proj = RowParallelLinear(self.q_size, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cos_sin: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.attend(self.project(x, batch, cos_sin), batch)
                           .reshape(x.shape[0], self.q_size))

    def project(self, x: torch.Tensor, batch: ForwardBatch | SegmentIO, cos_sin: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention's input: q [T, Hq, D] of x [T, H], rotated, with k and v rotated and
        stored in the KV cache. With `out` ([T, (Hq + 2 Hkv) D], a static buffer) the
        projection is written there and q is a view of it, q/k norms or not."""
        if out is None:
            return self.rope_store(self.qkv_proj(x), batch, cos_sin)
        qkv = linear_into(x, self.qkv_proj, out)
        q = self.rope_store(qkv, batch, cos_sin)
        if q.data_ptr() != qkv.data_ptr():  # the q norm made a new q: put it in the buffer
            qkv[:, : self.q_size].view_as(q).copy_(q)
            q = qkv[:, : self.q_size].view_as(q)
        return q

    def rope_store(self, qkv: torch.Tensor, batch: ForwardBatch | SegmentIO,
                   cos_sin: torch.Tensor) -> torch.Tensor:
        """q [T, Hq, D] of the projection qkv [T, (Hq + 2 Hkv) D], rotated; the rotated k and
        v stored in the layer's KV cache."""
        T, D = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # Views into the fused projection: the kernels take strided rows, so nothing is copied.
        q = q.view(T, self.num_heads, D)
        k = k.view(T, self.num_kv_heads, D)
        v = v.view(T, self.num_kv_heads, D)
        k_cache = batch.kv_pool.k_cache[self.layer_id]
        v_cache = batch.kv_pool.v_cache[self.layer_id]
        norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps) if self.qk_norm else ()
        # the per-head q/k norms (Qwen3) run in the same kernel as the rotation and KV store
        return rotary_store_kv(q, k, v, batch.rotary_rows, cos_sin, k_cache, v_cache,
                               batch.out_cache_loc, *norms)

    def forward_small(self, residual: torch.Tensor, norm: RMSNorm, batch: ForwardBatch,
                      cos_sin: torch.Tensor) -> torch.Tensor:
        """The attention block of a step of at most FUSED_MAX_TOKENS tokens on the residual
        stream [T, H]: norm, projection, rotary and KV store fused (gemv.py), attention, and
        o_proj adding into the stream (for a decode of one request all three in one kernel,
        kernels/attention_oproj.py); returns the stream (float32, updated in place when it
        was float32)."""
        q = self.project_small(residual, norm, batch, cos_sin)
        if (batch.is_decode and self.o_proj.bias is None
                and attention_oproj.takes(q, batch.kv_pool.k_cache[self.layer_id],
                                          self.o_proj.weight, batch.max_seq_len)):
            # one kernel: attention, o_proj and the residual add (kernels/attention_oproj.py)
            return attention_oproj.attention_oproj(
                q, batch.kv_pool.k_cache[self.layer_id], batch.kv_pool.v_cache[self.layer_id],
                batch.req_to_token, batch.req_rows, batch.seq_lens, self.sm_scale,
                batch.max_seq_len, self.o_proj.weight, residual, window=self.window,
                softcap=self.softcap)
        o = self.attend(q, batch).reshape(residual.shape[0], self.q_size)
        return gemv_residual(o, self.o_proj.weight, self.o_proj.bias, residual)

    def project_small(self, residual: torch.Tensor, norm: RMSNorm, batch: ForwardBatch,
                      cos_sin: torch.Tensor) -> torch.Tensor:
        """The attention's input for at most FUSED_MAX_TOKENS tokens: q [T, Hq, D] of the
        residual stream [T, H] normed by `norm`, rotated, k and v rotated and stored, the
        norm, projection, rotary and KV store in one GEMV (gemv.py); with q/k norms the
        GEMV's output is rotated and stored by rope_store."""
        qkv_w, qkv_b = self.qkv_proj.weight, self.qkv_proj.bias
        if self.qk_norm:  # the per-head norms sit between the projection and the rotation
            return self.rope_store(gemv_norm(residual, norm.weight, norm.eps, qkv_w, qkv_b),
                                   batch, cos_sin)
        return gemv_norm_rope_kv(
            residual, norm.weight, norm.eps, qkv_w, qkv_b, batch.rotary_rows, cos_sin,
            batch.kv_pool.k_cache[self.layer_id], batch.kv_pool.v_cache[self.layer_id],
            batch.out_cache_loc, self.num_heads)

    def attend(self, q: torch.Tensor, batch: ForwardBatch, out: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Attention of q [T, Hq, D] over the layer's KV cache -> [T, Hq, D], written into
        `out` when given (a static buffer of the prefill graphs)."""
        k_cache = batch.kv_pool.k_cache[self.layer_id]
        v_cache = batch.kv_pool.v_cache[self.layer_id]
        if batch.is_decode:
            return decode_attention(
                q, k_cache, v_cache, batch.req_to_token, batch.req_rows, batch.seq_lens,
                self.sm_scale, batch.max_seq_len, out=out, window=self.window,
                softcap=self.softcap,
            )
        if batch.mixed_parts is not None:
            # A mixed step: the decodes go through the decode kernel, which reads each KV
            # head once for its query group; in the extend kernel each would fill a query
            # tile of one row per query head. Each kernel writes its own rows of o.
            n = batch.num_decode
            (d_rows, d_seq), (e_rows, e_pre, e_ext, e_start) = batch.mixed_parts
            o = extend_attention(
                q, k_cache, v_cache, batch.req_to_token, e_rows, e_pre, e_ext, e_start,
                self.sm_scale, batch.max_extend_len, out=out, window=self.window,
                softcap=self.softcap,
            )
            decode_attention(
                q[:n], k_cache, v_cache, batch.req_to_token, d_rows, d_seq, self.sm_scale,
                batch.decode_max_seq_len, out=o[:n], window=self.window,
                softcap=self.softcap,
            )
            return o
        return extend_attention(
            q, k_cache, v_cache, batch.req_to_token, batch.req_rows, batch.prefix_lens,
            batch.extend_lens, batch.q_start_loc, self.sm_scale, batch.max_extend_len, out=out,
            window=self.window, softcap=self.softcap,
        )
