"""ModelConfig: the shape and numerics of a Llama-family checkpoint, whatever format it came in.

Built from a Hugging Face config (transformers' AutoConfig, local files only) or from GGUF
metadata (weights_gguf.py). Everything the model, the KV pool and the engine need is here, in
one flat dataclass, so nothing downstream has to know transformers' config classes or their
version differences (rope_scaling in 4.x, rope_parameters in 5.x).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from aiollm.model.paths import gguf_names
from aiollm.model.rope_config import RopeConfig, rope_from_hf

log = logging.getLogger(__name__)

try:  # huggingface_hub >= 0.35, which transformers 5 requires; older ones raise ValueErrors
    from huggingface_hub.errors import StrictDataclassError as _StrictDataclassError
except ImportError:  # pragma: no cover
    _StrictDataclassError = ()  # type: ignore[assignment,misc]

# model_type values of transformers configs that LlamaForCausalLM (llama.py) implements; the
# mixture-of-experts ones replace (some of) the MLPs with moe.py's SparseMoe.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                           "qwen3_moe")
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe")
# transformers' causal-LM classes of those model types: a config.json's `architectures` must
# name one (another class on a supported model_type is another head, e.g. a reward model, or
# another family's checkpoint relabelled). LLaMAForCausalLM is the name the first converted
# Llama checkpoints (decapoda-research's) wrote, which their many fine-tunes still carry:
# transformers loads them by model_type as LlamaForCausalLM, and so did we.
CAUSAL_LM_CLASSES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM",
                     "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM",
                     "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


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


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _as_dtype(value: Any) -> torch.dtype | None:
    if isinstance(value, torch.dtype) or value is None:
        return value
    dtype = getattr(torch, str(value), None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _checkpoint_dtype(hf: Any) -> torch.dtype | None:
    # transformers 5 renamed torch_dtype to dtype (and warns when the old name is read).
    return _as_dtype(hf.dtype if hasattr(hf, "dtype") else getattr(hf, "torch_dtype", None))


def config_from_hf(hf: Any, generation_eos: list[int] | None = None,
                   fields: dict | None = None) -> ModelConfig:
    """ModelConfig from a transformers PretrainedConfig of a supported model_type; `fields`,
    the config.json it was read from, if any (messages then name fields as it spells them)."""
    arch = hf.model_type
    _check_model_type(arch)
    classes = getattr(hf, "architectures", None) or []
    classes = [classes] if isinstance(classes, str) else list(classes)  # transformers takes one
    if classes and not set(classes) & set(CAUSAL_LM_CLASSES):
        raise ValueError(f"architectures {classes} is not supported "
                         f"(supported: {', '.join(CAUSAL_LM_CLASSES)})")
    quant = getattr(hf, "quantization_config", None)
    if quant:
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(
            quant, "quant_method", None)
        raise ValueError(f"quantized checkpoints are not supported (quantization_config has "
                         f"quant_method {method!r}): use a float16/bfloat16/float32 checkpoint "
                         "or a GGUF file")
    mlx = getattr(hf, "quantization", None)  # mlx-lm's key (transformers leaves it unread)
    if mlx:
        raise ValueError(f"quantized checkpoints are not supported (config.json has "
                         f"quantization {mlx!r}: an MLX-quantized checkpoint): use a "
                         "float16/bfloat16/float32 checkpoint or a GGUF file")
    # transformers reads mlp_bias for Llama only, attention_bias for Llama and Qwen3 (MoE
    # too) only: Mistral and Mixtral have no biases, Qwen2 q/k/v biases always, Qwen2-MoE
    # by qkv_bias. Other families run with either field in their config.json, ignored.
    if arch == "llama" and getattr(hf, "mlp_bias", False):
        raise ValueError("models with mlp_bias=True are not supported")
    # Every MLP (dense, expert, shared expert) runs the fused SiLU kernels; transformers
    # applies ACT2FN[hidden_act], where "swish" is SiLU too.
    act = getattr(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act {act!r} is not supported (aiollm's MLPs compute SiLU: "
                         "hidden_act must be 'silu')")
    attention_bias = arch in ("llama", "qwen3", "qwen3_moe") and bool(
        getattr(hf, "attention_bias", False))
    rope = rope_from_hf(hf, _head_dim(hf))
    max_position = _context_of(hf, rope)
    # We attend over the whole sequence; a model trained with a sliding window is exact only
    # within one window, so its context is capped there rather than silently drifting.
    # (transformers' Llama never slides: a sliding_window in its config.json is left by a
    # conversion from another family, and ignored there)
    window = None if arch == "llama" else getattr(hf, "sliding_window", None)
    if arch.startswith("qwen") and not getattr(hf, "use_sliding_window", False):
        window = None
    # transformers 5 slides only the layers layer_types marks (Qwen2 and Qwen2-MoE derive it
    # from max_window_layers): with none marked it attends over the whole sequence too
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        window = None
    if window and window < max_position:
        log.warning("sliding window %d < the model's context %d: context capped at the window",
                    window, max_position)
        max_position = int(window)
    else:
        window = None
    eos = _as_list(hf.eos_token_id)
    eos += [t for t in generation_eos or [] if t not in eos]
    return ModelConfig(
        architecture=arch,
        vocab_size=int(hf.vocab_size),
        hidden_size=int(hf.hidden_size),
        intermediate_size=int(hf.intermediate_size),
        num_layers=int(hf.num_hidden_layers),
        num_heads=int(hf.num_attention_heads),
        num_kv_heads=_given(hf, "num_key_value_heads", hf.num_attention_heads),
        head_dim=_head_dim(hf),
        rms_norm_eps=float(hf.rms_norm_eps),
        rope=rope,
        max_position=max_position,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases (Qwen2-MoE unless its qkv_bias says otherwise) and no
        # o_proj bias; Llama and Qwen3 follow attention_bias (see above).
        qkv_bias=(arch == "qwen2" or attention_bias
                  or arch == "qwen2_moe" and bool(getattr(hf, "qkv_bias", True))),
        o_bias=attention_bias,
        qk_norm=arch in ("qwen3", "qwen3_moe"),
        eos_token_ids=eos,
        bos_token_id=getattr(hf, "bos_token_id", None),
        torch_dtype=_checkpoint_dtype(hf),
        moe=_moe_from_hf(hf, fields or {}) if arch in MOE_ARCHITECTURES else None,
        sliding_window=int(window) if window else None,
    )


def _context_of(hf: Any, rope: RopeConfig) -> int:
    """The model's context before any sliding-window cap: max_position_embeddings, or with
    YaRN original_max_position_embeddings x factor (as vLLM derives it: YaRN configs such as
    Qwen2.5's keep max_position_embeddings at the original context). YaRN's frequencies do not
    depend on the position, so a longer context is only more rows of the rotary table. Never
    less than max_position_embeddings (a config whose factor says less keeps its own)."""
    max_position = int(hf.max_position_embeddings)
    if rope.type == "yarn":
        max_position = max(max_position, int(rope.original_max_position * rope.factor))
    return max_position


def _check_model_type(model_type: Any) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def _given(hf: Any, field: str, default: int) -> int:
    """config.json's `field` as an int, `default` when absent or null; a value below 1 is
    refused by the field's name (0 was read as absent: the model then failed on a weight's
    shape, naming no field)."""
    value = getattr(hf, field, None)
    if value is None:
        return int(default)
    if int(value) < 1:
        raise ValueError(f"config.json: {field} must be >= 1, got {value}")
    return int(value)


def _head_dim(hf: Any) -> int:
    """config.json's head_dim, or hidden_size / num_attention_heads without one."""
    return _given(hf, "head_dim", hf.hidden_size // hf.num_attention_heads)


def _moe_from_hf(hf: Any, fields: dict) -> MoeConfig | None:
    """MoeConfig of a Mixtral / Qwen MoE config, None for a Qwen one whose every layer is
    dense; a bad value is refused naming its config.json field (MoeConfig's own checks speak
    of top_k and sparse_step, which no config.json has) as `fields` (config.json's) spell it.

    transformers (5.x, modeling_qwen2_moe.py / modeling_qwen3_moe.py) gives layer i experts
    only when i is not in mlp_only_layers and num_experts > 0 and (i + 1) %
    decoder_sparse_step == 0, evaluated left to right; its config classes check the fields'
    types, not their values. The expert fields are read here in that order, and a field no
    layer reads is not checked: a config whose every layer is dense loads whatever its
    num_experts_per_tok, moe_intermediate_size or shared_expert_intermediate_size say."""
    mixtral = hf.model_type == "mixtral"
    dense_layers = () if mixtral else tuple(
        int(i) for i in getattr(hf, "mlp_only_layers", None) or ())
    candidates = [i for i in range(int(hf.num_hidden_layers)) if i not in dense_layers]
    if not candidates:
        return None  # mlp_only_layers names every layer: no expert field is read
    # the attribute transformers' model class sizes its experts by
    attr = "num_local_experts" if mixtral else "num_experts"
    num_experts = getattr(hf, attr)
    experts_field = _expert_count_field(fields, attr, num_experts, hf.model_type)
    # transformers checks the type of the spelling its config class declares, not of the
    # other (Qwen3-MoE's num_local_experts, Mixtral's num_experts), which it takes as given
    if not isinstance(num_experts, int) or isinstance(num_experts, bool):
        raise ValueError(f"config.json: {experts_field} must be an integer, got "
                         f"{num_experts!r}")
    # Qwen's num_experts 0 means every MLP dense; Mixtral has no such form. A negative
    # count (which transformers' Qwen classes also run dense) is refused as a mistake.
    least = int(mixtral)
    if num_experts < least:
        raise ValueError(f"config.json: {experts_field} must be >= {least}, got {num_experts}")
    if not mixtral:
        if num_experts == 0:
            return None
        step = getattr(hf, "decoder_sparse_step", None)  # 0 is refused, not read as 1
        step = 1 if step is None else int(step)
        if step < 1:  # transformers divides by it (0: ZeroDivisionError)
            raise ValueError(f"config.json: decoder_sparse_step must be >= 1, got {step}")
        if not any((i + 1) % step == 0 for i in candidates):
            return None  # a step past the last layer not in mlp_only_layers
    top_k = int(hf.num_experts_per_tok)
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"config.json: num_experts_per_tok must be in [1, {experts_field} = "
                         f"{num_experts}], got {top_k}")
    if mixtral:
        # Mixtral: every layer sparse, experts of intermediate_size, top-k always renormalised
        return MoeConfig(num_experts=num_experts, top_k=top_k,
                         intermediate_size=int(hf.intermediate_size), norm_topk_prob=True,
                         experts_field=experts_field)
    # only Qwen2-MoE has a shared expert (transformers' Qwen3-MoE leaves the field unread)
    shared = int(getattr(hf, "shared_expert_intermediate_size", 0) or 0) \
        if hf.model_type == "qwen2_moe" else 0
    if shared < 0:
        raise ValueError(f"config.json: shared_expert_intermediate_size must be >= 0, got "
                         f"{shared}")
    if int(hf.moe_intermediate_size) < 1:
        raise ValueError(f"config.json: moe_intermediate_size must be >= 1, got "
                         f"{hf.moe_intermediate_size}")
    return MoeConfig(
        num_experts=num_experts,
        top_k=top_k,
        intermediate_size=int(hf.moe_intermediate_size),
        norm_topk_prob=bool(hf.norm_topk_prob),
        shared_expert_intermediate_size=shared,
        sparse_step=step,
        dense_layers=dense_layers,
        experts_field=experts_field,
    )


def _expert_count_field(fields: dict, attr: str, value: Any, model_type: str) -> str:
    """config.json's name of the expert count transformers read (`value`, its attribute
    `attr`), for messages. Which spelling it reads depends on the model type and, when both
    are given, on its version (transformers 5.x: Mixtral's num_experts wins over
    num_local_experts, Qwen3-MoE's num_local_experts over num_experts, Qwen2-MoE reads
    num_experts only): the spelling whose value it took is the one named, `attr` when
    config.json gives neither. A spelling given and not read (Qwen2-MoE's num_local_experts)
    is warned of: the count is then transformers' default."""
    spellings = [k for k in (attr, "num_experts", "num_local_experts") if k in fields]
    read = next((k for k in spellings if fields[k] == value), None)
    if read is None and spellings:
        log.warning("config.json's %s (%s) is not read for model_type %s: the model has "
                    "transformers' default %s = %s experts; give %s", spellings[0],
                    fields[spellings[0]], model_type, attr, value, attr)
    return read or attr


def load_hf_config(model_dir: str) -> ModelConfig:
    """ModelConfig of an HF model directory (config.json, generation_config.json if present).
    Raises FileNotFoundError without config.json, ValueError naming config.json when it is
    not a JSON object or describes a model aiollm does not run (or generation_config.json
    when it is not a JSON object with token ids for eos_token_id)."""
    from transformers import AutoConfig

    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        ggufs = gguf_names(model_dir)
        if ggufs:  # more than one: a lone .gguf file is the model (paths.py)
            names = ", ".join(ggufs[:4]) + (", ..." if len(ggufs) > 4 else "")
            raise FileNotFoundError(f"{model_dir} has no config.json and {len(ggufs)} .gguf "
                                    f"files ({names}): give one of them")
        raise FileNotFoundError(f"{model_dir} has no config.json (nor a .gguf file): give a "
                                "Hugging Face model directory (config.json and *.safetensors "
                                "files) or a GGUF file")
    # read before AutoConfig, whose error for a type it lacks lists its own
    fields = json_object(path)
    _check_model_type(fields.get("model_type"))
    _check_raw_fields(fields, path)
    try:
        hf = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except _StrictDataclassError as e:
        # transformers 5 checks each field's type (num_experts_per_tok: null) and some fields
        # against others (layer_types) as it reads them; its error is no ValueError and
        # spans two lines, the second (its cause) naming the field: that line alone
        raise ValueError(f"{path}: {' '.join(str(e.__cause__ or e).split())}") from None
    except KeyError as e:  # its rope validation: a rope type's required parameter missing
        raise ValueError(f"{path}: {e.args[0] if e.args else e}") from None
    gen_path = os.path.join(model_dir, "generation_config.json")
    # Instruct checkpoints (Llama 3.x) list their end-of-turn ids there, not in config.json.
    generation_eos = _generation_eos(gen_path) if os.path.exists(gen_path) else []
    return config_from_hf(hf, generation_eos, fields)


def _check_raw_fields(fields: dict, path: str) -> None:
    """Refuse the config.json values transformers fails on without naming them: a dtype
    (torch_dtype before transformers 5; dtype wins when both are given, as there) that names
    no torch dtype (it looks the name up in torch: AttributeError for 'bf16'), and
    num_attention_heads below 1 (its check of hidden_size % heads: ZeroDivisionError)."""
    heads = fields.get("num_attention_heads")
    if isinstance(heads, int) and heads < 1:
        raise ValueError(f"{path}: num_attention_heads must be >= 1, got {heads}")
    name = "dtype" if fields.get("dtype") is not None else "torch_dtype"
    value = fields.get(name)
    if isinstance(value, str) and not isinstance(getattr(torch, value, None), torch.dtype):
        raise ValueError(f"{path}: {name} {value!r} is not a torch dtype: give one of float32, "
                         "float16, bfloat16 (the type of the checkpoint's tensors)")


def json_object(path: str) -> dict:
    """The JSON object in the file at `path`. Raises ValueError naming the file when it is
    not JSON (or not UTF-8) or holds another JSON value."""
    with open(path) as f:
        try:
            fields = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} holds a JSON {type(fields).__name__}, not an object")
    return fields


def _generation_eos(path: str) -> list[int]:
    """The eos_token_id (a token id, a list of them, or none) of a generation_config.json.
    Raises ValueError naming the file when it is not a JSON object or the ids are not ids."""
    eos = json_object(path).get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, "
                         f"got {eos!r}")
    return ids
