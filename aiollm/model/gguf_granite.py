"""Granite's metadata in a GGUF file (llama.cpp's architectures "granite" and "granitemoe").

llama.cpp's converter (convert_hf_to_gguf.py, GraniteModel) writes transformers' four scalars
under its own names, each only for a nonzero config.json value: attention_multiplier as
{arch}.attention.scale, embedding_multiplier as {arch}.embedding_scale, residual_multiplier
as {arch}.residual_scale and logits_scaling as {arch}.logit_scale. Its loaders
(src/models/granite.cpp, granite-moe.cpp) require logit_scale and read the other three as
optional; its graph multiplies by embedding_scale and residual_scale only when they are
nonzero, takes 1/sqrt(head_dim) for a zero (absent) attention.scale, and divides the logits
by logit_scale. granite_scalars reads them so, and refuses what llama.cpp refuses or cannot
run (a missing or zero logit_scale).

The same converter writes GraniteMoeShared (and Granite 4's attention-only mixtures) as
"granitemoe" with a shared expert ({arch}.expert_shared_feed_forward_length, *_shexp
tensors) whose output is added to the experts' ungated; aiollm's shared expert is Qwen2-MoE's
sigmoid-gated one, so such a file is refused (check_granite_file), as is one whose
{arch}.rope.scaling.finetuned is false (llama.cpp's Granite graph then applies no rotary).
"""

from __future__ import annotations

from gguf import GGUFReader

from aiollm.model.gguf_metadata import field


def granite_scalars(reader: GGUFReader, p: str) -> dict[str, float | None]:
    """ModelConfig's embedding_multiplier, residual_multiplier, attention_multiplier (None:
    1/sqrt(head_dim)) and logits_scaling from a Granite file's metadata, `p` its
    "{arch}." key prefix. Raises ValueError naming {arch}.logit_scale when it is absent or
    0 (llama.cpp requires it and divides the logits by it)."""
    def scale(key: str) -> float:
        value = float(field(reader, p + key, 0.0) or 0.0)
        return value or 1.0

    logit = field(reader, p + "logit_scale")
    if logit is None:
        raise ValueError(f"GGUF file has no {p + 'logit_scale'!r} metadata: llama.cpp requires "
                         "it of a Granite file (its converter writes config.json's "
                         "logits_scaling there)")
    if float(logit) == 0:
        raise ValueError(f"GGUF metadata {p}logit_scale must not be 0: the logits are divided "
                         "by it")
    attention = float(field(reader, p + "attention.scale", 0.0) or 0.0)
    return {"embedding_multiplier": scale("embedding_scale"),
            "residual_multiplier": scale("residual_scale"),
            "logits_scaling": float(logit),
            "attention_multiplier": attention or None}


def check_granite_file(reader: GGUFReader, p: str, tensor_names) -> None:
    """Raise ValueError naming the key or tensor when a Granite file (`p` its "{arch}."
    prefix, `tensor_names` its tensors' names) is a model aiollm does not run: a shared
    expert (GraniteMoeShared) or no rotary (rope.scaling.finetuned false)."""
    shared = int(field(reader, p + "expert_shared_feed_forward_length", 0) or 0)
    shexp = next((n for n in tensor_names if "_shexp." in n), None)
    if shared or shexp is not None:
        what = (f"{p}expert_shared_feed_forward_length = {shared}" if shared
                else f"tensor {shexp}")
        raise ValueError(f"GGUF {what}: a Granite mixture of experts with a shared expert "
                         "(GraniteMoeShared, added to the experts' output ungated) is not "
                         "supported")
    if field(reader, p + "rope.scaling.finetuned", True) in (False, 0):
        raise ValueError(f"GGUF metadata {p}rope.scaling.finetuned is false: llama.cpp runs "
                         "such a Granite file without rotary position embeddings, which "
                         "aiollm does not support")
