"""Reading a Hugging Face model directory's config into a ModelConfig.

config.json goes through transformers' AutoConfig (local files only), after checks of its
raw fields that transformers would fail on without naming them; generation_config.json gives
the eos ids (its end-of-turn ids) where the directory has one. config_from_hf maps a
PretrainedConfig of a supported model_type onto ModelConfig: which fields each family (Llama,
Mistral, Qwen2/3, Granite, Gemma 1-3, Phi-3, Mixtral, Qwen MoE, GraniteMoe) reads, what it
refuses (quantized checkpoints, other heads, other activations, Gemma 3n), the context
(YaRN, LongRoPE) and which layers attend through a sliding window (as transformers 5 decides
it, family by family: hf_sliding.py). Gemma's and Granite's own fields are read in
hf_family_fields.py, a mixture of experts' in hf_moe_config.py. A bad value is refused naming
its config.json field.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from aiollm.model.config import (
    GEMMA_ARCHITECTURES,
    MOE_ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    unsupported_gemma,
)
from aiollm.model.hf_family_fields import (gemma3_ropes, gemma3_text_config, gemma_scalars,
                                            granite_scalars)
from aiollm.model.hf_moe_config import moe_from_hf
from aiollm.model.hf_sliding import sliding_window
from aiollm.model.paths import check_links, gguf_names, split_first_part
from aiollm.model.rope_config import RopeConfig, check_rope_parameters, rope_from_hf

try:  # huggingface_hub >= 0.35, which transformers 5 requires; older ones raise ValueErrors
    from huggingface_hub.errors import StrictDataclassError as _StrictDataclassError
except ImportError:  # pragma: no cover
    _StrictDataclassError = ()  # type: ignore[assignment,misc]

# transformers' causal-LM classes of the supported model types: a config.json's `architectures` must
# name one (another class on a supported model_type is another head, e.g. a reward model, or
# another family's checkpoint relabelled). LLaMAForCausalLM is the name the first converted
# Llama checkpoints (decapoda-research's) wrote, which their many fine-tunes still carry:
# transformers loads them by model_type as LlamaForCausalLM, and so did we.
CAUSAL_LM_CLASSES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM",
                     "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM",
                     "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "GraniteForCausalLM",
                     "GraniteMoeForCausalLM", "Phi3ForCausalLM")
# Gemma's class is taken with model_type gemma only, and gemma takes no other: transformers
# builds the class of the model_type whatever `architectures` says, so a Llama config naming
# GemmaForCausalLM would run Gemma's weights without Gemma's numerics (the (1 + w) norms,
# scaled embeddings, GELU), and a gemma config naming a Llama class is such a relabelling too.
# So too for Gemma 2 and 3, each with its own class (Gemma 3's multimodal checkpoints,
# model_type gemma3, are served as their language model alone: config_from_hf).
GEMMA_CLASSES = {"gemma": ("GemmaForCausalLM",), "gemma2": ("Gemma2ForCausalLM",),
                 "gemma3_text": ("Gemma3ForCausalLM",),
                 "gemma3": ("Gemma3ForConditionalGeneration",)}
# transformers' GELU activations that compute GELU's tanh approximation; Gemma's config reads
# the legacy "gelu" of the first releases as that too (GemmaConfig.__post_init__), other
# families as the exact (erf) GELU, which aiollm's kernels do not compute
_GELU_TANH = ("gelu_pytorch_tanh",)


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
    the config.json it was read from, if any (messages then name fields as it spells them).
    eos_token_ids: `generation_eos` (a generation_config.json's eos_token_id), or without one
    (None) the config's eos_token_id, as vLLM reads a model's generation config (transformers'
    GenerationConfig: the file's, else one made from config.json)."""
    arch = hf.model_type
    _check_model_type(arch)
    classes = getattr(hf, "architectures", None) or []
    classes = [classes] if isinstance(classes, str) else list(classes)  # transformers takes one
    allowed = GEMMA_CLASSES.get(arch, CAUSAL_LM_CLASSES)
    if classes and not set(classes) & set(allowed):
        raise ValueError(f"architectures {classes} is not supported with model_type {arch!r} "
                         f"(supported: {', '.join(allowed)})")
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
    if arch == "gemma3":  # Gemma3ForConditionalGeneration: its language model alone
        text = gemma3_text_config(hf, fields)
        try:
            return _text_model_config(text, "gemma3_text", hf, generation_eos, fields)
        except ValueError as e:  # the fields named are text_config's
            raise ValueError(str(e).replace("config.json: ", "config.json: text_config.", 1)
                             ) from None
    return _text_model_config(hf, arch, hf, generation_eos, fields)


def _text_model_config(hf: Any, arch: str, outer: Any, generation_eos: list[int] | None,
                       fields: dict | None) -> ModelConfig:
    """config_from_hf's ModelConfig of a text model's config `hf` (a multimodal Gemma 3's
    text_config, `outer` its own config: its dtype and eos ids; else `outer` is `hf`)."""
    # transformers reads mlp_bias for Llama only, attention_bias for Llama and Qwen3 (MoE
    # too) only: Mistral and Mixtral have no biases, Qwen2 q/k/v biases always, Qwen2-MoE
    # by qkv_bias. Other families run with either field in their config.json, ignored.
    if arch in ("llama", "granite") and getattr(hf, "mlp_bias", False):
        raise ValueError("config.json: models with mlp_bias=True are not supported")
    act = _activation(hf, arch)
    if arch in GEMMA_ARCHITECTURES and getattr(hf, "use_bidirectional_attention", None):
        raise ValueError("config.json: use_bidirectional_attention true is not supported "
                         "(an encoder's attention over the whole text; aiollm's is causal)")
    # sizes by config.json's names (ModelConfig's own check names its fields, not these)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "max_position_embeddings"):
        _given(hf, name, 0)
    heads, kv_heads = int(hf.num_attention_heads), _given(hf, "num_key_value_heads",
                                                           hf.num_attention_heads)
    if heads % kv_heads:
        raise ValueError(f"config.json: num_attention_heads {heads} is not a multiple of "
                         f"num_key_value_heads {kv_heads}")
    attention_bias = arch in ("llama", "qwen3", "qwen3_moe", "granite", "granitemoe",
                              *GEMMA_ARCHITECTURES) and bool(getattr(hf, "attention_bias", False))
    rope, rope_local = gemma3_ropes(hf, _head_dim(hf)) if arch == "gemma3_text" else (
        rope_from_hf(hf, _head_dim(hf)), None)
    max_position = _context_of(hf, rope)
    window, sliding_layers = sliding_window(hf, arch)
    # a multimodal Gemma 3's own eos_token_id (with its end of turn), as generate reads it
    config_eos = getattr(outer, "eos_token_id", None)
    config_eos = hf.eos_token_id if config_eos is None else config_eos
    eos = (_as_list(config_eos) if generation_eos is None
           else list(dict.fromkeys(generation_eos)))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(hf.vocab_size),
        hidden_size=int(hf.hidden_size),
        intermediate_size=int(hf.intermediate_size),
        num_layers=int(hf.num_hidden_layers),
        num_heads=int(hf.num_attention_heads),
        num_kv_heads=kv_heads,
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
        qk_norm=arch in ("qwen3", "qwen3_moe", "gemma3_text"),
        eos_token_ids=eos,
        bos_token_id=getattr(hf, "bos_token_id", None),
        torch_dtype=_checkpoint_dtype(outer) or _checkpoint_dtype(hf),
        moe=moe_from_hf(hf, fields or {}) if arch in MOE_ARCHITECTURES else None,
        sliding_window=window,
        sliding_layers=sliding_layers,
        **(granite_scalars(hf) if arch.startswith("granite") else {}),
        hidden_act=act,
        rope_local=rope_local,
        **(gemma_scalars(hf) if arch in ("gemma2", "gemma3_text") else {}),
    )


def _activation(hf: Any, arch: str) -> str:
    """The MLP activation (config.ACTIVATIONS) of transformers' ACT2FN[hidden_act]: "swish"
    is SiLU, Gemma's "gelu" the tanh approximation (as its config reads it; transformers 5
    reads no hidden_activation, which transformers 4's Gemma preferred). Every MLP of a
    mixture of experts (experts, shared expert) runs the fused SiLU kernels: SiLU only.
    ValueError naming the field (hidden_act, Gemma 2 and 3's hidden_activation) otherwise."""
    # Gemma 2 and 3's configs name it hidden_activation (and read no hidden_act)
    name = "hidden_activation" if arch in ("gemma2", "gemma3_text") else "hidden_act"
    act = getattr(hf, name, "silu")
    if act in ("silu", "swish"):
        return "silu"
    if arch not in MOE_ARCHITECTURES and (act in _GELU_TANH or arch == "gemma"
                                          and act == "gelu"):
        return "gelu_pytorch_tanh"
    why = (f"the experts' kernels compute SiLU: {name} must be 'silu'"
           if arch in MOE_ARCHITECTURES else "aiollm's MLPs compute SiLU or GELU's tanh "
           f"approximation: {name} must be 'silu' or 'gelu_pytorch_tanh'")
    raise ValueError(f"{name} {act!r} is not supported ({why})")


def _context_of(hf: Any, rope: RopeConfig) -> int:
    """The model's context: max_position_embeddings, or with YaRN
    original_max_position_embeddings x factor (as vLLM derives it: YaRN configs such as
    Qwen2.5's keep max_position_embeddings at the original context). YaRN's frequencies do not
    depend on the position, so a longer context is only more rows of the rotary table. Never
    less than max_position_embeddings (a config whose factor says less keeps its own)."""
    max_position = int(hf.max_position_embeddings)
    if rope.type == "yarn":
        max_position = max(max_position, int(rope.original_max_position * rope.factor))
    return max_position


def _check_model_type(model_type: Any) -> None:
    if (message := unsupported_gemma(model_type)) is not None:
        raise ValueError(message)
    if model_type not in SUPPORTED_ARCHITECTURES and model_type != "gemma3":
        raise ValueError(
            f"model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}, gemma3 as text)"
        )


def _given(hf: Any, field: str, default: int) -> int:
    """config.json's `field` as an int, `default` when absent or null (0: required); a value
    below 1 is refused by the field's name (0 was read as absent: the model then failed on a
    weight's shape, naming no field)."""
    value = getattr(hf, field, None)
    if value is None and default:
        return int(default)
    if value is None:
        raise ValueError(f"config.json: {field} must be given (>= 1), got null")
    if int(value) < 1:
        raise ValueError(f"config.json: {field} must be >= 1, got {value}")
    return int(value)


def _head_dim(hf: Any) -> int:
    """config.json's head_dim, or hidden_size / num_attention_heads without one."""
    return _given(hf, "head_dim", hf.hidden_size // hf.num_attention_heads)


def load_hf_config(model_dir: str) -> ModelConfig:
    """ModelConfig of an HF model directory (config.json, generation_config.json if present).
    Raises FileNotFoundError without config.json, ValueError naming config.json when it is
    not a JSON object or describes a model aiollm does not run (or generation_config.json
    when it is not a JSON object with token ids for eos_token_id)."""
    from transformers import AutoConfig

    path = os.path.join(model_dir, "config.json")
    check_links([path])  # an HF cache link whose blob is gone: not "no config.json"
    if not os.path.exists(path):
        ggufs = gguf_names(model_dir)
        if (first := split_first_part(ggufs)) is not None:
            raise FileNotFoundError(
                f"{model_dir} holds the {len(ggufs)} parts of a split GGUF model (llama.cpp's "
                "gguf-split): aiollm reads a model from one file, as vLLM does; merge the "
                f"parts with `llama-gguf-split --merge {os.path.join(model_dir, first)} "
                "merged.gguf` and give merged.gguf")
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
    generation_eos = generation_eos_ids(gen_path) if os.path.exists(gen_path) else None
    return config_from_hf(hf, generation_eos, fields)


def _check_raw_fields(fields: dict, path: str) -> None:
    """Refuse the config.json values transformers fails on without naming them: a dtype
    (torch_dtype before transformers 5; dtype wins when both are given, as there) that names
    no torch dtype (it looks the name up in torch: AttributeError for 'bf16'), and
    num_attention_heads below 1 (its check of hidden_size % heads: ZeroDivisionError), and a
    rope parameter it divides by of 0 (its check of yarn: ZeroDivisionError)."""
    # by the keys the file has: transformers 4 wrote rope_theta beside rope_scaling (every
    # published Llama, Mistral and Qwen config), transformers 5 moves both into rope_parameters
    check_rope_parameters({"rope_theta": fields.get("rope_theta")}, "config.json:")
    for key in ("rope_parameters", "rope_scaling"):
        rope = fields.get(key)
        if isinstance(rope, dict):  # nested by layer type in some families: each one
            check_rope_parameters(rope, f"config.json: {key}")
            for kind, params in rope.items():
                if isinstance(params, dict):
                    check_rope_parameters(params, f"config.json: {key} {kind}")
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


def generation_eos_ids(path: str) -> list[int]:
    """The eos_token_id (a token id, a list of them, or none) of a generation_config.json.
    Raises ValueError naming the file when it is not a JSON object or the ids are not ids."""
    eos = json_object(path).get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, "
                         f"got {eos!r}")
    return ids
