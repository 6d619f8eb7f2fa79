"""GGUF files (llama.cpp): ModelConfig from the metadata, tensors dequantized and renamed.

Read with the `gguf` package: GGUFReader memory-maps the file (gguf_reader.open_gguf: its
parse slices a plain view of the map, in a third of the time) and gguf.quants.dequantize
turns each quantized tensor into float32 (numpy), one tensor at a time, so host memory peaks
at the largest single tensor.

llama.cpp's converter permutes the rows of Llama's q and k projections (each head's two halves
interleaved, for its own rotary layout); we undo that here exactly as transformers' GGUF loader
does, so our rotate-half rotary sees the original Hugging Face weights. Qwen2/Qwen3 files are
not permuted (llama.cpp uses the neox rotary for them), nor are Gemma's, whose norm weights
llama.cpp's converter stores as 1 + w (what aiollm's model holds: weights.py adds the 1 to a
safetensors checkpoint's w only), nor Phi-3's (gguf_phi3.py: its partial rotary, LongRoPE
factors, sliding window and fused attn_qkv / ffn_up). Gemma 2 and 3 files (gguf_gemma.py) add
the extra norms, the sliding window and soft-caps, and the softmax scale as llama.cpp derives
it.

Granite files (architecture "granite", "granitemoe") carry transformers' four scalars as
llama.cpp's converter writes them: {arch}.embedding_scale, .residual_scale, .logit_scale and
.attention.scale; each is read as llama.cpp reads it (gguf_granite.py).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from aiollm.model.config import (
    GEMMA_ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    unsupported_gemma,
)
from aiollm.model.gguf_gemma import LAYER_NAMES as _GEMMA_LAYER_NAMES
from aiollm.model.gguf_gemma import gemma_fields
from aiollm.model.gguf_eog import eog_token_ids
from aiollm.model.gguf_granite import check_granite_file, granite_scalars
from aiollm.model.gguf_reader import open_gguf
from aiollm.model.gguf_metadata import field as _field
from aiollm.model.gguf_metadata import one_for_all_layers as _one_for_all_layers
from aiollm.model.gguf_metadata import required as _required
from aiollm.model.gguf_metadata import rope_scaling as _rope_scaling
from aiollm.model.gguf_moe import moe_from_gguf
from aiollm.model.gguf_phi3 import ROPE_FACTOR_TENSORS, phi3_rope, phi3_window
from aiollm.model.weights_hf import damaged_file_advice


# llama.cpp's converter permutes Granite's q/k as Llama's (its Granite classes are Llama's)
_PERMUTED_ARCHS = ("llama", "mistral", "mixtral", "granite", "granitemoe")
# llama.cpp's architecture names that differ from transformers' model_type (Mixtral is stored
# as "llama" with an expert count)
_ARCH_NAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gemma3": "gemma3_text"}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",  # phi3: q, k and v in one (weights_layout splits them)
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",  # the router
    "ffn_gate_exps": "mlp.experts.gate_proj",  # [experts, out, in]: all experts at once
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_PER_EXPERT_NAMES = {"ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
# Weights that carry configuration, not parameters: read by config_from_gguf.
_CONFIG_TENSORS = ("rope_freqs.weight", *ROPE_FACTOR_TENSORS)


def _dequantized(tensor: Any) -> torch.Tensor:
    """float32 [rows, cols] (torch order: [out_features, in_features])."""
    w = dequantize(tensor.data, tensor.tensor_type)
    # F32 tensors come back as views of the read-only memory map; torch wants writable memory.
    return torch.from_numpy(w if w.flags.writeable else w.copy())


@functools.cache
def _can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """Whether the gguf package dequantizes `qtype` (tried on one zero block)."""
    try:
        dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _check_tensor_types(tensors: list[ReaderTensor]) -> None:
    # Refuse before anything is allocated, rather than at that tensor midway through a load.
    for t in tensors:
        if not _can_dequantize(t.tensor_type):
            raise ValueError(
                f"GGUF tensor {t.name!r} has type {t.tensor_type.name}, which aiollm cannot "
                "dequantize (the gguf package has no dequantization for it): use a file of "
                "another quantization, e.g. Q8_0, Q4_K, Q6_K or F16")


# SUPPORTED_ARCHITECTURES as llama.cpp's files name them (Mistral and Mixtral are "llama")
_GGUF_SUPPORTED = ("llama (Llama, Mistral, Mixtral), qwen2, qwen3, qwen2moe, qwen3moe, "
                   "granite, granitemoe, gemma, gemma2, gemma3, phi3")


def _check_is_a_model(reader: GGUFReader, gguf_arch: Any) -> None:
    """Raise ValueError for a GGUF file of llama.cpp's that is not a model but a part served
    beside one: a LoRA adapter (general.type "adapter") or a vision model's projector
    (mmproj: general.type "mmproj", or architecture "clip" in files before that key). They
    were refused as a model without token_embd.weight, or of architecture 'clip'."""
    kind = _field(reader, "general.type")
    if kind == "adapter":
        adapter = _field(reader, "adapter.type", "lora")
        raise ValueError(f"the GGUF file is a {'LoRA' if adapter == 'lora' else adapter} adapter, "
                         "not a model: aiollm serves no adapters; give a model file with the "
                         "adapter merged into its weights (llama.cpp's llama-export-lora)")
    if kind == "mmproj" or gguf_arch == "clip":
        raise ValueError("the GGUF file is a multimodal projector (mmproj) of a vision "
                         "model, not a language model: aiollm serves text alone; give the "
                         "language model's own .gguf file")


def config_from_gguf(reader: GGUFReader, warnings: list[str]) -> ModelConfig:
    """ModelConfig of a GGUF file's metadata and tensor index. Metadata that is read and then
    ignored (llama.cpp ignores it too) is described in `warnings`, appended to, for the
    loader to log at every load of the file, the derived cache's too (derived_cache.py).
    No sliding window but Phi-3's (its every layer, as transformers runs the model) and Gemma 2
    and 3's (their sliding layers: gguf_gemma.py): llama.cpp's
    llama, qwen2, qwen2moe, qwen3 and qwen3moe graphs attend over the whole sequence and its
    loader reads no `{arch}.attention.sliding_window` for them (a Mistral v0.1 GGUF is a llama
    one), so neither does this.
    Raises ValueError naming the key or tensor that aiollm cannot run."""
    gguf_arch = _field(reader, "general.architecture")
    _check_is_a_model(reader, gguf_arch)
    p = f"{gguf_arch}."
    arch = _ARCH_NAMES.get(gguf_arch, gguf_arch)
    if arch == "llama" and _field(reader, p + "expert_count", 0):
        arch = "mixtral"
    if (later := unsupported_gemma(arch)) is not None:
        raise ValueError(f"GGUF architecture {gguf_arch!r}: {later}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {gguf_arch!r} is not supported (supported, as "
                         f"llama.cpp names them: {_GGUF_SUPPORTED})")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ValueError("GGUF file has no token_embd.weight tensor; is it a language model?")
    _check_tensor_types(reader.tensors)
    if arch in ("granite", "granitemoe"):
        check_granite_file(reader, p, tensors)
    hidden = int(_required(reader, p + "embedding_length"))
    heads = int(_one_for_all_layers(reader, p + "attention.head_count"))
    head_dim = int(_field(reader, p + "attention.key_length", hidden // heads))
    rotated = int(_field(reader, p + "rope.dimension_count", head_dim))
    if rotated != head_dim and arch != "phi3":  # llama.cpp rotates that many of each head
        raise ValueError(f"GGUF {p}rope.dimension_count {rotated} differs from head_dim "
                         f"{head_dim}: partial rotary is not supported (but in phi3 files)")
    rope = _rope_scaling(reader, p, float(_field(reader, p + "rope.freq_base", 10000.0)))
    context, window = int(_required(reader, p + "context_length")), None
    if arch == "phi3":
        phi3_rope(reader, p, tensors, rope, head_dim, rotated, context,
                  lambda t: _dequantized(t).reshape(-1).tolist())
        # every layer slides, as in transformers' Phi-3 (llama.cpp reads the key and, since
        # its PR 13676, runs Phi-3 without it; the file's model is transformers')
        window = phi3_window(reader, p)
    elif any(name in tensors for name in ROPE_FACTOR_TENSORS):  # not to be skipped unread
        raise ValueError(f"GGUF file has LongRoPE factors ({', '.join(ROPE_FACTOR_TENSORS)}), "
                         f"which aiollm reads in phi3 files only, not {gguf_arch!r} ones")
    num_layers = int(_required(reader, p + "block_count"))
    gemma = gemma_fields(reader, p, arch, hidden, heads, head_dim, num_layers) if arch in (
        "gemma2", "gemma3_text") else {}
    window = gemma.pop("sliding_window", window)
    if "rope_freqs.weight" in tensors:
        # Llama 3.1+: llama.cpp stores the llama3 scaling as per-frequency divisors.
        rope.freq_factors = tuple(_dequantized(tensors["rope_freqs.weight"]).reshape(-1).tolist())
    return ModelConfig(
        architecture=arch,
        vocab_size=int(tensors["token_embd.weight"].shape[1]),  # ggml order: [hidden, vocab]
        hidden_size=hidden,
        intermediate_size=int(_one_for_all_layers(reader, p + "feed_forward_length")),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(_one_for_all_layers(reader, p + "attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_required(reader, p + "attention.layer_norm_rms_epsilon")),
        rope=rope,
        max_position=context,
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        eos_token_ids=eog_token_ids(reader, warnings),  # as llama.cpp ends generation
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        torch_dtype=None,
        moe=moe_from_gguf(reader, p, arch, tensors, warnings),
        sliding_window=window,
        **(granite_scalars(reader, p) if arch in ("granite", "granitemoe") else {}),
        # llama.cpp's Gemma graphs: GELU (ggml's is the tanh approximation); its norms of the
        # stored 1 + w and embeddings x sqrt(embedding_length) are ModelConfig's for Gemmas
        hidden_act="gelu_pytorch_tanh" if arch in GEMMA_ARCHITECTURES else "silu",
        **gemma,  # Gemma 2/3 (gguf_gemma.py)
    )


def _hf_name(gguf_name: str, layer_names: dict[str, str] = _LAYER_NAMES) -> str:
    """transformers' name of the file's tensor `gguf_name`, its layers' modules named by
    `layer_names` (Gemma 2/3's differ: gguf_gemma.LAYER_NAMES)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if (len(parts) == 5 and parts[0] == "blk" and parts[2] in _PER_EXPERT_NAMES
            and parts[3].isdigit()):
        # llama.cpp's Mixtral files before April 2024: one tensor per expert
        # (blk.N.ffn_gate.E.weight), which llama.cpp still reads
        blk, layer, module, expert, suffix = parts
        return f"model.layers.{layer}.mlp.experts.{expert}.{_PER_EXPERT_NAMES[module]}.{suffix}"
    if len(parts) != 4 or parts[0] != "blk" or parts[2] not in layer_names:
        raise ValueError(f"GGUF tensor {gguf_name!r} is not part of a supported model")
    _, layer, module, suffix = parts
    return f"model.layers.{layer}.{layer_names[module]}.{suffix}"


_GGUF_GLOBAL_NAMES = {hf: g for g, hf in _GLOBAL_NAMES.items()}
_GGUF_LAYER_NAMES = {hf: g for g, hf in _LAYER_NAMES.items()} | {"mlp.gate_up_proj": "ffn_up"} | {
    hf: g for g, hf in _GEMMA_LAYER_NAMES.items() if hf != "post_attention_layernorm"}
_GGUF_PER_EXPERT_NAMES = {hf: g for g, hf in _PER_EXPERT_NAMES.items()}


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of transformers' `hf_name` (_hf_name's inverse), for messages
    about a file; a name the file cannot hold comes back unchanged."""
    if hf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        return hf_name
    layer, module, suffix = parts[2], ".".join(parts[3:-1]), parts[-1]
    if module in _GGUF_LAYER_NAMES:
        return f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.{suffix}"
    if (len(parts) == 8 and parts[3:5] == ["mlp", "experts"] and parts[5].isdigit()
            and parts[6] in _GGUF_PER_EXPERT_NAMES):
        return f"blk.{layer}.{_GGUF_PER_EXPERT_NAMES[parts[6]]}.{parts[5]}.{suffix}"
    return hf_name


def _unpermute(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    # llama.cpp stored rows of each head as (half, pair) -> (pair, half); swap back.
    half = w.shape[0] // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@dataclass(slots=True)
class GGUFModel:
    config: ModelConfig
    tensors: list[ReaderTensor]  # memory-mapped, not yet dequantized
    warnings: tuple[str, ...] = ()  # metadata ignored (config_from_gguf): log at every load


def read_gguf(path: str) -> GGUFModel:
    """Config and tensor index of a GGUF file (cached per file and modification time).
    Raises ValueError naming the file when it is not a GGUF file or is truncated."""
    # GGUFReader parses every metadata field, the tokenizer's ~100k strings included, which
    # takes ~0.8 s (gguf_reader.py); engines started again in one process (tests) reuse it.
    parsed = _read_gguf(os.path.abspath(path), os.stat(path).st_mtime_ns)
    return GGUFModel(copy.deepcopy(parsed.config), parsed.tensors, parsed.warnings)


@functools.lru_cache(maxsize=2)
def _read_gguf(path: str, mtime_ns: int) -> GGUFModel:
    try:
        reader = open_gguf(path)
    except (ValueError, IndexError, KeyError) as e:
        # the gguf package's errors ("GGUF magic invalid", a numpy reshape of a truncated
        # tensor) name no file
        raise ValueError(f"{path} is not a readable GGUF file ({e}): "
                         f"{damaged_file_advice(path)}") from None
    _check_single_file(reader, path)
    # Keeping only the tensors lets the parsed metadata fields be freed.
    warnings: list[str] = []
    config = config_from_gguf(reader, warnings)
    return GGUFModel(config, list(reader.tensors), tuple(warnings))


def _check_single_file(reader: GGUFReader, path: str) -> None:
    """Refuse a part of a model llama.cpp's gguf-split cut into files (its split.count
    metadata), naming the merge that makes it one: the first part parsed as a model with
    weights missing, the others (no metadata but their tensors) as architecture None."""
    count = int(_field(reader, "split.count", 1) or 1)
    if count > 1:
        part = int(_field(reader, "split.no", 0)) + 1
        first = re.sub(r"-\d{5}-of-(\d{5})\.gguf$", r"-00001-of-\1.gguf", path)
        first = first if first != path or part == 1 else "its first part"
        raise ValueError(f"{path} is part {part} of {count} of a split GGUF model (llama.cpp's "
                         "gguf-split): aiollm reads a model from one file, as vLLM does; merge "
                         f"the parts with `llama-gguf-split --merge {first} merged.gguf` and "
                         "give merged.gguf")


def num_weight_tensors(gguf: GGUFModel) -> int:
    return sum(t.name not in _CONFIG_TENSORS for t in gguf.tensors)


def iter_gguf(gguf: GGUFModel) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers name, float32 CPU tensor) for every weight of the file."""
    config = gguf.config
    permuted = config.architecture in _PERMUTED_ARCHS
    fused_up = config.architecture == "phi3"  # its ffn_up holds gate and up
    names = ({**_LAYER_NAMES, **_GEMMA_LAYER_NAMES} if config.sandwich_norms
             else _LAYER_NAMES)
    for t in gguf.tensors:
        if t.name in _CONFIG_TENSORS:
            continue
        w = _dequantized(t)
        if permuted and ".attn_q." in t.name:
            w = _unpermute(w, config.num_heads)
        elif permuted and ".attn_k." in t.name:
            w = _unpermute(w, config.num_kv_heads)
        elif ".ffn_gate_inp_shexp." in t.name:
            w = w.reshape(1, -1)  # [hidden] in some files, transformers' [1, hidden] in ours
        name = _hf_name(t.name, names)
        if fused_up and name.endswith(".mlp.up_proj.weight"):
            name = name.replace(".up_proj.", ".gate_up_proj.")
        yield name, w
