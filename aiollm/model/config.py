"""ModelConfig: the shape and numerics of a Llama-family checkpoint, whatever format it came in.

The common dataclasses (ModelConfig, and MoeConfig for mixture-of-experts layers) with the
checks every source shares, and the model types aiollm runs. They are filled from a Hugging
Face config.json by hf_config.py (its MoE fields by hf_moe_config.py) and from GGUF metadata
by weights_gguf.py. Everything the model, the KV pool and the engine need is here, in one
flat dataclass, so nothing downstream has to know transformers' config classes or their
version differences (rope_scaling in 4.x, rope_parameters in 5.x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aiollm.model.rope_config import RopeConfig

# model_type values of transformers configs that LlamaForCausalLM (llama.py) implements; the
# mixture-of-experts ones replace (some of) the MLPs with moe.py's SparseMoe.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                           "qwen3_moe", "phi3")
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe")


@dataclass(slots=True)
class MoeConfig:
    """The sparse MLP of a mixture-of-experts model (Mixtral, Qwen2-MoE, Qwen3-MoE).

    Routing: softmax over the router's logits, the top `top_k` experts, their probabilities
    renormalised to sum to 1 when `norm_topk_prob` (Mixtral always; Qwen by its config.json,
    by its architecture in a GGUF file, as llama.cpp runs it: weights_gguf.py).
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
    sliding_window: int | None = None  # the window max_position is capped at (None: no cap)

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
        return total + sum(attn + self.mlp_params(n, active) + 2 * h
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
