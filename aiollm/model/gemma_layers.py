"""Gemma 2 and 3's decoder layer: the Llama layer with a norm on each sub-block's output.

As transformers' Gemma2DecoderLayer and Gemma3DecoderLayer compute it (models/gemma2/
modeling_gemma2.py, models/gemma3/modeling_gemma3.py), for the stream x:

    x = x + post_attention_layernorm(attn(input_layernorm(x)))
    x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))

every norm a (1 + w) RMSNorm (held as 1 + w in float32: ModelConfig.rms_norm_unit_offset).
The layer keeps llama.py's convention that each residual add is fused into the norm that
follows it: a layer returns (post_feedforward_layernorm's output, the stream before it is
added), which the next layer's input_layernorm (or the final norm) adds. The attention is
attention.py's Attention, which takes the rest of Gemma 2/3 from ModelConfig (softmax scale,
soft-capping, window, Gemma 3's q/k norms and local rotary).

One-token steps (LlamaForCausalLM.fused_small) run the layer as the Llama layer's fused
GEMVs (gemv.py: norm + q/k/v + rotary + KV store; norm + gate/up + GeGLU) with o_proj and
down_proj as GEMVs without an epilogue, since their outputs are normed before they are
added: one kernel norms each and adds it to the stream (kernels.rms_norm_add). Six kernels
a layer besides attention (seven with Gemma 3's q/k norms), where the layered path's one-token
steps took about 12 launches in all.
"""

from __future__ import annotations

import torch

from aiollm.kernels import rms_norm_add
from aiollm.kernels.gemv import gemv_plain
from aiollm.model.config import ModelConfig
from aiollm.model.forward_batch import ForwardBatch
from aiollm.model.llama import DecoderLayer
from aiollm.model.norm import RMSNorm


class SandwichDecoderLayer(DecoderLayer):
    """DecoderLayer with Gemma 2/3's pre/post feed-forward norms and its attention output's
    own norm (post_attention_layernorm, which in the Llama layer normalises the MLP input)."""

    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__(config, layer_id)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def mlp_block(self, a: torch.Tensor, residual: torch.Tensor,
                  residual_out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(post-norm MLP output [T, H] in the model dtype, new residual stream [T, H]
        float32) after the attention output a [T, H]: a normed, added to the stream, the sum
        normed into the MLP, whose output is normed again (added by the next norm)."""
        a = self.post_attention_layernorm(a)
        h, residual = self.pre_feedforward_layernorm(a, residual, residual_out)
        return self.post_feedforward_layernorm(self.mlp(h)), residual

    def forward_small(self, residual: torch.Tensor, batch: ForwardBatch,
                      cos_sin: torch.Tensor) -> torch.Tensor:
        """The layer on the residual stream [T, H] of a step of at most FUSED_MAX_TOKENS
        tokens (module docstring); returns the stream, float32 (updated in place when it
        was float32). The normed sub-block outputs are added in float32, not rounded to the
        model dtype first as the layered path's are."""
        attn, mlp = self.self_attn, self.mlp
        q = attn.project_small(residual, self.input_layernorm, batch, cos_sin)
        o = attn.attend(q, batch).reshape(residual.shape[0], attn.q_size)
        a = gemv_plain(o, attn.o_proj.weight, attn.o_proj.bias)
        norm = self.post_attention_layernorm
        residual = rms_norm_add(a, norm.weight, norm.eps, residual)
        norm = self.pre_feedforward_layernorm
        h = mlp.gemv_norm_act(residual, norm.weight, norm.eps, mlp.gate_up_proj.weight)
        d = gemv_plain(h, mlp.down_proj.weight)
        norm = self.post_feedforward_layernorm
        return rms_norm_add(d, norm.weight, norm.eps, residual)


def decoder_layer(config: ModelConfig, layer_id: int) -> DecoderLayer:
    """Layer `layer_id` of a model of `config`: Gemma 2/3's SandwichDecoderLayer where
    config.sandwich_norms, else llama.py's DecoderLayer."""
    cls = SandwichDecoderLayer if config.sandwich_norms else DecoderLayer
    return cls(config, layer_id)
