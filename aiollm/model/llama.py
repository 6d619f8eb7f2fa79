"""The Llama-family decoder over the token-level KV pool.

One class covers Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM2, Granite 3, Gemma 1-3 and
Phi-3/Phi-4: they differ only in flags and scalars of ModelConfig (q/k/v biases, q/k norm, tied
embeddings, Granite's multipliers; Gemma's GELU MLP, (1 + w) norms held as 1 + w in float32,
and embeddings scaled by sqrt(hidden_size)) and in the rotary table (scaling; Phi-3's partial
rotary, run through the loader's q/k head order: rope.py, weights_layout.py). Mixtral,
Qwen2-MoE, Qwen3-MoE and GraniteMoe are the same decoder with moe.py's SparseMoe in place of
the dense MLP (mlp.py, which picks the activation); Gemma 2 and 3 are gemma_layers.py's
layer with soft-capped attention and logits (Gemma 3: Qwen3's q/k norms, a second rotary
table for its sliding layers). Parameter names follow transformers' with q/k/v fused into
`qkv_proj` and gate/up into `gate_up_proj` (one matmul each instead of three and two); the
loaders fill the fused weights shard by shard.

Granite (and GraniteMoe) is this decoder with four scalars: attention_multiplier is the
attention kernels' softmax scale (Attention.sm_scale, an argument every attention kernel
already takes); embedding_multiplier multiplies the embedded tokens (LlamaForCausalLM.embed:
the embedding is tied to the LM head, so its weight cannot carry it); residual_multiplier and
logits_scaling are folded into the weights as they load (granite_scales.py says why).

The attention block (attention.py) passes each layer's sliding window and soft-cap to
the attention kernels.

forward() reads only the ForwardBatch's tensors and the Python scalars fixed when the batch was
built (is_decode, max_extend_len, max_seq_len): no host syncs, so a decode step can be captured
in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aiollm.kernels import attention_oproj
from aiollm.kernels.extend_attention import capped
from aiollm.kernels.gemv import gemv_norm
from aiollm.model.attention import Attention
from aiollm.model.config import ModelConfig
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.kv_pool import KVPool
from aiollm.model.linear import Linear
from aiollm.model.mlp import MLP
from aiollm.model.norm import RMSNorm
from aiollm.model.parallel import VocabParallelEmbedding, current, local_config
from aiollm.model.rope import cos_sin_cache
from aiollm.model.rope_rows import long_prompts

# Steps of at most this many tokens run each layer as fused GEMVs (kernels/gemv.py), which
# take up to gemv.MAX_ROWS rows. One: at 4 rows they measured slower than the layered path
# (H200, 2026-12-01, bench/README.md "Decode": batch-4 decode 2,595 against 3,531 tok/s on
# the 1B shape, 528 against 825 on the 8B), at one faster (833 -> 1,085; 207.5 -> 237.7).
FUSED_MAX_TOKENS = 1


@dataclass
class SegmentIO:
    """The static tensors that a step's graph segments (LlamaForCausalLM.segment) read and
    write, T rows each (a bucket of the prefill graphs, aiollm.engine.prefill_graphs):
    input_ids, positions (each token's rotary row: ForwardBatch.rotary_rows), out_cache_loc
    [T] int64 in; qkv [T, (Hq + 2 Hkv) D] out (its q part rotated, k and v stored in the KV
    pool); o [T, Hq D] in (a layer's attention output); residual [T, H] float32, the stream,
    updated in place; x [T, H] out (the last layer's output)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    kv_pool: KVPool
    qkv: torch.Tensor
    o: torch.Tensor
    residual: torch.Tensor
    x: torch.Tensor

    @property
    def rotary_rows(self) -> torch.Tensor:  # as ForwardBatch's
        return self.positions


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.moe is not None and config.moe.is_sparse(layer_id):
            from aiollm.model.moe import SparseMoe  # moe.py builds on this module's layers

            self.mlp = SparseMoe(config)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        cos_sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add of each sub-block is fused into the norm that follows it: the layer
        # returns (sub-block output, residual stream before adding it).
        h, residual = self.attention_input(x, residual)
        return self.mlp_block(self.self_attn(h, batch, cos_sin), residual)

    def attention_input(self, x: torch.Tensor, residual: torch.Tensor | None,
                        residual_out: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input norm of x + residual, the new residual stream); the first layer's stream is
        x itself (residual None). residual_out: where the stream goes (rms_norm's), x too."""
        if residual is None:
            stream = x if residual_out is None else residual_out.copy_(x)
            return self.input_layernorm(x), stream
        return self.input_layernorm(x, residual, residual_out)

    def mlp_block(self, a: torch.Tensor, residual: torch.Tensor,
                  residual_out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLP output, new residual stream) after the attention block's output a [T, H]."""
        h, residual = self.post_attention_layernorm(a, residual, residual_out)
        return self.mlp(h), residual

    def forward_small(self, residual: torch.Tensor, batch: ForwardBatch,
                      cos_sin: torch.Tensor) -> torch.Tensor:
        """The layer on the residual stream of a step of at most FUSED_MAX_TOKENS tokens: four
        fused GEMVs, rotary and attention between them (LlamaForCausalLM.fused_small)."""
        residual = self.self_attn.forward_small(residual, self.input_layernorm, batch, cos_sin)
        return self.mlp.forward_small(residual, self.post_attention_layernorm)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, max_len: int | None = None):
        super().__init__()
        self.config = config
        self.max_len = max_len or config.max_position
        # under tensor parallelism (aiollm.distributed) this rank's heads, features and vocab
        cfg = self.shard_config = local_config(config, current())
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size,
                                                   config.vocab_size)
        from aiollm.model.gemma_layers import decoder_layer  # builds on this module's layers

        self.layers = nn.ModuleList(decoder_layer(cfg, i) for i in range(cfg.num_layers))
        # Gemma 3's sliding layers rotate by their own table (rope_local), whatever the window;
        # a tuple, so that layer_cos_sin costs a step next to nothing
        self.local_rope_layers = tuple(config.rope_local is not None and cfg.layer_window(i) > 0
                                       for i in range(cfg.num_layers))
        for layer in self.layers:  # a window no context reaches: the unwindowed kernels
            if layer.self_attn.window >= self.max_len:
                layer.self_attn.window = 0
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.embed_scale = config.hidden_size**0.5 if config.scale_embeddings else None
        self.final_softcap = config.final_logit_softcapping
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # a LongRoPE model served past its original context: prompts longer than it read
        # the long factors' rows of their first positions after the others (rope_rows.py)
        self.long_prompts = long_prompts(config.rope, self.max_len)
        rows = self.max_len + (self.long_prompts.original if self.long_prompts else 0)
        self.register_buffer(
            "cos_sin_cache", torch.empty(rows, config.head_dim), persistent=False
        )
        if config.rope_local is not None:  # Gemma 3's sliding layers' table
            self.register_buffer("local_cos_sin_cache",
                                 torch.empty(self.max_len, config.head_dim), persistent=False)
        # Steps of at most FUSED_MAX_TOKENS tokens (batch-1 decode) run each layer as fused
        # GEMVs on a float32 residual stream (Gemma 2/3's with a norm-and-add kernel after
        # o_proj and down_proj: gemma_layers.py); not under tensor parallelism (o/down need
        # their all-reduce before the residual add) nor with a shared expert (moe.py)
        self.single_rank = current() is None
        self.fused_small = self.single_rank and all(
            isinstance(layer.mlp, MLP) or layer.mlp.takes_small for layer in self.layers)
        self.init_rope()

    def init_rope(self) -> None:
        """(Re)compute the cos/sin cache, e.g. after the module was materialised by to_empty."""
        if self.cos_sin_cache.device.type != "meta":
            cache = cos_sin_cache(self.config.rope, self.config.head_dim, self.max_len)
            self.cos_sin_cache = cache.to(self.cos_sin_cache.device)
            if self.config.rope_local is not None:
                cache = cos_sin_cache(self.config.rope_local, self.config.head_dim,
                                      self.max_len)
                self.local_cos_sin_cache = cache.to(self.cos_sin_cache.device)

    def layer_cos_sin(self, layer: int) -> torch.Tensor:
        """The rotary table [max_len, head_dim] float32 layer `layer` rotates by: Gemma 3's
        sliding layers' own (rope_local), else the model's."""
        if self.local_rope_layers[layer]:
            return self.local_cos_sin_cache
        return self.cos_sin_cache

    def short_context_step(self, max_seq_len: int) -> bool:
        """Whether a one-request decode step sized for contexts up to max_seq_len tokens runs
        a kernel that one sized for longer contexts does not: attention, o_proj and the
        residual add fused (kernels/attention_oproj.py), which the decode graphs capture a
        batch-1 graph for (engine/cuda_graph.py)."""
        attn = self.layers[0].self_attn
        w_o = attn.o_proj.weight
        # Gemma 2/3's o_proj output is normed before the add: no attention_oproj for them
        return (self.fused_small and not self.config.sandwich_norms
                and attn.o_proj.bias is None
                and attention_oproj.takes_shape(attn.num_heads, attn.num_kv_heads,
                                                attn.head_dim, w_o.shape[0], w_o.dtype,
                                                w_o.device, max_seq_len))

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings [T, H] (the model's dtype) of token ids [T]: with scale_embeddings
        times sqrt(hidden_size) rounded to float32 and then the model dtype, as transformers'
        Gemma scales them; times Granite's embedding_multiplier, in that dtype as
        transformers multiplies them."""
        x = self.embed_tokens(ids)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale).to(x.dtype).item()  # 55.5 for 3,072 in bf16
        m = self.config.embedding_multiplier
        return x if m == 1.0 else x * m

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [B, vocab] float32 of each request's last new token."""
        x = self.embed(batch.input_ids)
        if self.fused_small and x.shape[0] <= FUSED_MAX_TOKENS and batch.prompt_scoring is None:
            return self._forward_small(x, batch)
        residual = None
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, batch, self.layer_cos_sin(i))
        return self.logits(x, residual, batch)

    def segment(self, k: int, io: SegmentIO) -> None:
        """Segment k of a step's work between its attention calls, on io's static tensors
        (the prefill graphs capture each one): segment 0 embeds the tokens and runs layer 0
        up to its attention; segment k (0 < k < L) finishes layer k-1 from its attention
        output io.o (o_proj, norm, MLP) and runs layer k up to its attention (norm, qkv,
        rotary, KV store); segment L finishes the last layer into io.x. The residual stream
        stays in io.residual (float32: layer 0's bf16 embedding is exact in it). Host-sync
        free and shape-static; only for models without tensor parallelism (graph_segments)."""
        # the same blocks as DecoderLayer.forward, cut at the attention
        if k == 0:
            h, _ = self.layers[0].attention_input(self.embed(io.input_ids), None, io.residual)
        else:
            layer = self.layers[k - 1]
            x, _ = layer.mlp_block(layer.self_attn.o_proj(io.o), io.residual, io.residual)
            if k == len(self.layers):
                io.x.copy_(x)
                return
            h, _ = self.layers[k].attention_input(x, io.residual, io.residual)
        self.layers[k].self_attn.project(h, io, self.layer_cos_sin(k), io.qkv)

    @property
    def graph_segments(self) -> bool:
        """Whether segment() covers this model: no tensor parallelism (o_proj and down_proj
        all-reduce between ranks). MoE layers are covered: routing, alignment and the grouped
        GEMMs size their launches by the token count alone (kernels/fused_moe.py)."""
        return self.single_rank

    def logits(self, x: torch.Tensor, residual: torch.Tensor, batch: ForwardBatch
               ) -> torch.Tensor:
        """Logits [B, vocab] float32 of each request's last new token from the last layer's
        output x [T, H] and the residual stream [T, H]; prompt logprobs when asked for. With
        final_logit_softcapping (Gemma 2) each logit is cap x tanh(logit / cap), as
        transformers' Gemma2ForCausalLM returns them: sampling, logprobs and logits
        processors all see the capped logits."""
        # Only the last token of each request needs logits: select before the final norm.
        idx = batch.logits_index
        h, _ = self.norm(x[idx], residual[idx])
        w = self.lm_head_weight
        if batch.prompt_scoring is not None:
            p = batch.prompt_scoring.index
            batch.prompt_scoring.compute(self.norm(x[p], residual[p])[0], w,
                                         self.embed_tokens.vocab_part, self.final_softcap)
        if h.is_cuda and h.dtype != torch.float32:
            # fp32 straight out of the matmul's fp32 accumulator: bf16 logits keep 8 bits of
            # mantissa (0.125 apart between 16 and 32), which ties close top candidates, and
            # the argmax then picks the lower token id instead of the larger logit
            logits = torch.mm(h, w.t(), out_dtype=torch.float32)
        else:
            logits = F.linear(h, w).float()
        return self.embed_tokens.gather_logits(capped(logits, self.final_softcap))

    def _forward_small(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer.forward_small(x, batch, self.layer_cos_sin(i))
        if not batch.is_decode:  # a decode's logits rows are all its tokens
            x = x[batch.logits_index]
        # the final norm folded into the lm_head GEMV, float32 logits out
        logits = gemv_norm(x, self.norm.weight, self.norm.eps, self.lm_head_weight, None,
                           torch.float32)
        return self.embed_tokens.gather_logits(capped(logits, self.final_softcap))
