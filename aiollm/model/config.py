"""ModelConfig: the shape and numerics of a Llama-family checkpoint, whatever format it came in.

The common dataclasses (ModelConfig, and MoeConfig for mixture-of-experts layers) with the
checks every source shares, and the model types aiollm runs. They are filled from a Hugging Face
config.json by hf_config.py (its MoE fields by hf_moe_config.py) and from GGUF metadata by
weights_gguf.py. Gemma 1 is the same decoder with three changes of numerics: hidden_act and
two properties of its architecture (rms_norm_unit_offset, scale_embeddings) that Gemma 2 and 3
share; those add the fields of transformers' Gemma2/Gemma3 configs (query_pre_attn_scalar,
the attention and final logit soft-caps, the sliding layers' own rotary) and the pre/post
feed-forward norms of their architecture (sandwich_norms). Everything the model, the KV pool
and the engine need is here, in one flat dataclass, so nothing downstream has to know
transformers' config classes or their version differences (rope_scaling in 4.x,
rope_parameters in 5.x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from aiollm.model.rope_config import RopeConfig

# model_type values of transformers configs that LlamaForCausalLM (llama.py) implements; the
# mixture-of-experts ones replace (some of) the MLPs with moe.py's SparseMoe.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "granite", "gemma", "gemma2",
                           "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe",
                           "granitemoe")
# Gemma 1, 2 and 3 (text): (1 + w) norms and embeddings scaled by sqrt(hidden_size)
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3_text")
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "granitemoe")
# The MLP activations the kernels compute (transformers' ACT2FN names): SiLU (SwiGLU) and
# GELU's tanh approximation (GeGLU: Gemma's).
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
# Gemma 3n, refused naming what aiollm lacks to run it as transformers does.
_GEMMA3N = ("Gemma 3n's per-layer embeddings, AltUp and LAuReL blocks, activation "
            "sparsity and KV sharing across layers")
UNSUPPORTED_GEMMA = {
    "gemma3n_text": _GEMMA3N,
    "gemma3n": _GEMMA3N + " and its audio and vision towers",
}


def unsupported_gemma(model_type: str) -> str | None:
    """The error message for a later Gemma's model_type (transformers' name), else None."""
    missing = UNSUPPORTED_GEMMA.get(model_type)
    if missing is None:
        return None
    return (f"model_type {model_type!r} is not supported: aiollm runs Gemma 1, 2 and 3 "
            f"(model_type 'gemma', 'gemma2', 'gemma3_text' and 'gemma3' as text alone) but "
            f"lacks what {model_type} needs: {missing}")


@dataclass(slots=True)
class MoeConfig:
    """The sparse MLP of a mixture-of-experts model (Mixtral, Qwen2-MoE, Qwen3-MoE,
    GraniteMoe).

    Routing: softmax over the router's logits, the top `top_k` experts, their probabilities
    renormalised to sum to 1 when `norm_topk_prob` (Mixtral always; Qwen by its config.json,
    by its architecture in a GGUF file, as llama.cpp runs it: weights_gguf.py). GraniteMoe's
    router takes the top-k logits first and a softmax over those alone: exp(l_i) / sum over
    the top k of exp(l_j), which is p_i / sum over the top k of p_j for p = softmax(l) (the
    full softmax's denominator cancels) and picks the same experts (softmax is monotonic):
    norm_topk_prob True, no field of its own.
    Layer i is sparse unless i is in `dense_layers` or (i + 1) % `sparse_step` != 0 (Qwen's
    decoder_sparse_step / mlp_only_layers); dense layers use ModelConfig.intermediate_size.
    """

    num_experts: int
    top_k: int
    intermediate_size: int  # of one expert
    norm_topk_prob: bool
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one gated shared expert (0: none)
    sparse_step: int = 1
    dense_layers: tuple[int, ...] = ()
    # config.json's name of num_experts, for messages: the spelling transformers read (it
    # reads either for Mixtral and Qwen3-MoE: transformers 5 saves Qwen3-MoE's as
    # num_local_experts, the Hub's Qwen configs say num_experts)
    experts_field: str = "num_experts"

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"moe config: top_k must be in [1, num_experts={self.num_experts}], "
                             f"got {self.top_k}")
        if self.intermediate_size < 1 or self.sparse_step < 1:
            raise ValueError("moe config: intermediate_size and sparse_step must be >= 1, got "
                             f"{self.intermediate_size}, {self.sparse_step}")

    def is_sparse(self, layer: int) -> bool:
        return layer not in self.dense_layers and (layer + 1) % self.sparse_step == 0


@dataclass(slots=True)
class ModelConfig:
    """A checkpoint's architecture, shapes and numerics; __post_init__ refuses a model_type
    aiollm does not run and sizes no model could have (ValueError naming the field)."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position: int  # the model's own context limit
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2; Llama/Qwen3 with attention_bias
    o_bias: bool = False  # Llama/Qwen3 with attention_bias
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head before rotary
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    torch_dtype: torch.dtype | None = None  # the checkpoint's dtype; None when unknown (GGUF)
    moe: MoeConfig | None = None  # mixture-of-experts layers (None: every layer is dense)
    # Sliding-window attention: a query at position p of a sliding layer attends to the keys
    # (p - sliding_window, p] only (transformers' sliding-window mask); the layers that slide
    # are sliding_layers, every layer when None. sliding_window None: no layer slides. Every
    # token keeps its KV slot all the same (the KV pool saves no memory by the window).
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None
    # Granite's four scalars (transformers' GraniteForCausalLM); 1.0 / None for the others.
    # Where llama.py applies each: its module docstring.
    embedding_multiplier: float = 1.0  # the token embeddings are multiplied by it
    residual_multiplier: float = 1.0  # each attention and MLP output, before the residual add
    attention_multiplier: float | None = None  # the softmax scale (None: 1 / sqrt(head_dim))
    logits_scaling: float = 1.0  # the logits are divided by it
    hidden_act: str = "silu"  # the MLP's gate activation, one of ACTIVATIONS
    # Gemma 2 and 3 (transformers' Gemma2/Gemma3 configs' fields of the same names): the
    # softmax scale is query_pre_attn_scalar ** -0.5; each attention score s (scaled) becomes
    # cap x tanh(s / cap) before the mask with attn_logit_softcapping, each logit of the LM
    # head likewise with final_logit_softcapping (None: no cap)
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # Gemma 3: the rotary of the sliding layers (rope_local_base_freq, unscaled); None: every
    # layer rotates by `rope`
    rope_local: RopeConfig | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"model architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position"):
            if getattr(self, name) < 1:
                raise ValueError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model config: num_heads ({self.num_heads}) is not a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"model config: rotary needs an even head_dim, got {self.head_dim}")
        for name in ("embedding_multiplier", "residual_multiplier", "attention_multiplier",
                     "logits_scaling"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"model config: {name} must be a finite number, got {value}")
        if self.logits_scaling == 0:  # the logits are divided by it
            raise ValueError("model config: logits_scaling must not be 0")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"model config: sliding_window must be >= 1, or None for none, "
                             f"got {self.sliding_window}")
        if self.sliding_layers is not None and not all(
                0 <= i < self.num_layers for i in self.sliding_layers):
            raise ValueError(f"model config: sliding_layers must be layer indices below "
                             f"num_layers {self.num_layers}, got {self.sliding_layers}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping",
                     "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"model config: {name} must be a number > 0, or None for "
                                 f"none, got {value}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"model config: hidden_act {self.hidden_act!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")

    def layer_window(self, layer: int) -> int:
        """The sliding window of layer `layer` in tokens, 0 when it attends over the whole
        sequence."""
        if self.sliding_window is None:
            return 0
        if self.sliding_layers is not None and layer not in self.sliding_layers:
            return 0
        return self.sliding_window

    @property
    def rms_norm_unit_offset(self) -> bool:
        """Gemma's RMSNorm x * (1 + w): the checkpoint holds w, the model 1 + w, computed in
        float32 at load and kept in float32 (in bfloat16 the sum would round)."""
        return self.architecture in GEMMA_ARCHITECTURES

    @property
    def scale_embeddings(self) -> bool:
        """Gemma's embeddings x sqrt(hidden_size), that factor rounded to the model dtype
        first."""
        return self.architecture in GEMMA_ARCHITECTURES

    @property
    def sandwich_norms(self) -> bool:
        """Gemma 2 and 3's decoder layer (gemma_layers.py): a norm after the attention before
        its residual add, and pre/post feed-forward norms around the MLP."""
        return self.architecture in ("gemma2", "gemma3_text")

    @property
    def softmax_scale(self) -> float:
        """The attention's softmax scale: attention_multiplier (Granite),
        query_pre_attn_scalar ** -0.5 (Gemma 2, 3), else 1/sqrt(D)."""
        if self.attention_multiplier is not None:
            return self.attention_multiplier
        if self.query_pre_attn_scalar is not None:
            return self.query_pre_attn_scalar**-0.5
        return self.head_dim**-0.5

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self, active: bool = False) -> int:
        """Parameter count (embeddings counted once when tied); with `active`, only those one
        token uses (of a sparse MLP: the router, its top_k experts and the shared expert)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        attn += (self.q_size + 2 * self.kv_size) * self.qkv_bias + h * self.o_bias
        attn += 2 * self.head_dim * self.qk_norm
        total = h + v * h * (1 if self.tie_word_embeddings else 2)
        norms = (4 if self.sandwich_norms else 2) * h
        return total + sum(attn + self.mlp_params(n, active) + norms
                           for n in range(self.num_layers))

    def mlp_params(self, layer: int, active: bool = False) -> int:
        """Parameters of layer `layer`'s MLP (with `active`: only the top_k experts a token
        uses, the router and the shared expert)."""
        h, m = self.hidden_size, self.moe
        if m is None or not m.is_sparse(layer):
            return 3 * h * self.intermediate_size
        experts = m.top_k if active else m.num_experts
        shared = 3 * h * m.shared_expert_intermediate_size + h * bool(
            m.shared_expert_intermediate_size)
        return experts * 3 * h * m.intermediate_size + m.num_experts * h + shared
