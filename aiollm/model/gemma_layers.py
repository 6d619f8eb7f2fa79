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

The one-token fused GEMV path (DecoderLayer.forward_small) adds o_proj's and down_proj's
outputs straight into the stream, with no place for the norms between: these layers do not
take it (LlamaForCausalLM.fused_small is False for them).
"""

from __future__ import annotations

import torch

from aiollm.model.config import ModelConfig
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

    def forward_small(self, residual: torch.Tensor, batch, cos_sin: torch.Tensor):
        raise AssertionError("Gemma 2/3 layers do not run the fused one-token path "
                             "(LlamaForCausalLM.fused_small is False for them)")


def decoder_layer(config: ModelConfig, layer_id: int) -> DecoderLayer:
    """Layer `layer_id` of a model of `config`: Gemma 2/3's SandwichDecoderLayer where
    config.sandwich_norms, else llama.py's DecoderLayer."""
    cls = SandwichDecoderLayer if config.sandwich_norms else DecoderLayer
    return cls(config, layer_id)
