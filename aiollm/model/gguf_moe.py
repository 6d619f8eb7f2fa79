"""The mixture-of-experts part of a GGUF file's configuration (llama.cpp's llama with experts,
i.e. Mixtral, qwen2moe, qwen3moe and granitemoe): expert count and width, top-k, the routing's
renormalisation, the shared expert and the dense layers, checked against the tensors that
they size. weights_gguf.config_from_gguf reads the rest.
"""

from __future__ import annotations

import re
from typing import Any

from aiollm.model.config import MOE_ARCHITECTURES, MoeConfig
from aiollm.model.gguf_metadata import field as _field
from aiollm.model.gguf_metadata import one_for_all_layers as _one_for_all_layers
from aiollm.model.gguf_metadata import required as _required

# whether the top-k routing weights are renormalised: fixed by the architecture in llama.cpp,
# whose graphs pass it as a constant (src/models/llama.cpp and qwen3moe.cpp true,
# qwen2moe.cpp false) and whose loader reads no expert_weights_norm for them (its converter
# writes none: a Qwen3-MoE of norm_topk_prob false runs renormalised there); transformers'
# GGUF loader sets the same (qwen3_moe norm_topk_prob True, qwen2_moe its default False).
# GraniteMoe's softmax over the top-k logits is a renormalised top-k (config.py's MoeConfig).
_NORM_TOPK = {"mixtral": True, "qwen3_moe": True, "qwen2_moe": False, "granitemoe": True}


def moe_from_gguf(reader: Any, p: str, arch: str, tensors: dict,
                  warnings: list[str]) -> MoeConfig | None:
    """The MoeConfig of a file of architecture `arch` (transformers' model_type; `p` its
    llama.cpp prefix, e.g. "qwen2moe."), None for a dense one; `tensors` {name: ReaderTensor}
    sizes the experts where keys are missing; what the file says and llama.cpp ignores is
    appended to `warnings`. Raises ValueError naming the key that disagrees with the tensors
    or is out of range."""
    experts = int(_field(reader, p + "expert_count", 0) or 0)
    # llama.cpp's graphs of the dense architectures (qwen2, qwen3) read no experts whatever
    # expert_count says: such a file runs dense, and expert tensors in it are refused by the
    # weight loader naming the architecture
    if not experts or arch not in MOE_ARCHITECTURES:
        return None
    layers = int(_field(reader, p + "block_count"))
    _check_expert_count(p, experts, tensors)
    inter = _expert_width(reader, p, tensors)
    # int(None) of a missing count was a TypeError traceback; MoeConfig's own range check
    # speaks of top_k, a name the file does not use
    top_k = int(_required(reader, p + "expert_used_count"))
    if not 1 <= top_k <= experts:
        raise ValueError(f"GGUF metadata {p}expert_used_count must be in [1, {p}expert_count "
                         f"= {experts}], got {top_k}")
    return MoeConfig(
        num_experts=experts,
        top_k=top_k,
        intermediate_size=int(inter),
        norm_topk_prob=_norm_topk(reader, p, arch, warnings),
        shared_expert_intermediate_size=_shared_expert_width(reader, p, tensors),
        # the file has no mlp_only_layers: a layer without a router is dense
        dense_layers=tuple(i for i in range(layers)
                           if f"blk.{i}.ffn_gate_inp.weight" not in tensors),
    )


def _norm_topk(reader: Any, p: str, arch: str, warnings: list[str]) -> bool:
    """Whether the routing renormalises its top-k weights: as llama.cpp runs the architecture
    (_NORM_TOPK). A file whose expert_weights_norm says otherwise (written by another tool)
    is warned of (in `warnings`): llama.cpp and transformers' GGUF loader read no such key
    for it, and the same file must give the same tokens here as there."""
    norm = _NORM_TOPK[arch]
    given = _field(reader, p + "expert_weights_norm")
    if given is not None and bool(given) != norm:
        warnings.append(f"GGUF metadata {p}expert_weights_norm = {bool(given)} is ignored: "
                        f"llama.cpp runs {p.rstrip('.')} with its top-k routing weights "
                        f"{'renormalised' if norm else 'not renormalised'}, whatever the file "
                        "says, and so does aiollm")
    return norm


def _check_expert_count(p: str, experts: int, tensors: dict) -> None:
    """Raise ValueError naming expert_count when the first router (ffn_gate_inp, ggml order
    [hidden, experts]) scores another number of experts: the loader then refused a tensor's
    shape, the key that sized the model unnamed (llama.cpp refuses such a file too)."""
    router = next((t for n, t in tensors.items()
                   if re.fullmatch(r"blk\.\d+\.ffn_gate_inp\.weight", n)), None)
    scored = int(router.shape[1]) if router is not None and len(router.shape) > 1 else 0
    if scored and scored != experts:
        raise ValueError(f"GGUF metadata {p}expert_count = {experts} disagrees with tensor "
                         f"{router.name}, whose router scores {scored} experts")


def _expert_width(reader: Any, p: str, tensors: dict) -> int:
    """The routed experts' intermediate size, from expert_feed_forward_length checked against
    the first gate tensor of the experts (ffn_gate_exps, ggml order [hidden, width, experts],
    or a per-expert ffn_gate.E, [hidden, width]). Files without the key (llama.cpp's Mixtral,
    whose feed_forward_length is the experts' width, and files converted before the key was
    written) take the tensor's width; feed_forward_length only when neither is there.
    Raises ValueError naming the key when it disagrees with the tensor."""
    key = int(_field(reader, p + "expert_feed_forward_length", 0) or 0)
    gate = next((t for n, t in tensors.items() if n.endswith(".ffn_gate_exps.weight")
                 or re.fullmatch(r"blk\.\d+\.ffn_gate\.\d+\.weight", n)), None)
    width = int(gate.shape[1]) if gate is not None else 0
    if key and width and key != width:
        raise ValueError(f"GGUF metadata {p}expert_feed_forward_length = {key} disagrees with "
                         f"tensor {gate.name}, whose experts are {width} wide")
    return key or width or int(_one_for_all_layers(reader, p + "feed_forward_length"))


def _shared_expert_width(reader: Any, p: str, tensors: dict) -> int:
    """The shared expert's intermediate size (0: none). Files converted before llama.cpp
    wrote expert_shared_feed_forward_length (Qwen1.5-MoE's of spring 2024) lack the key,
    and llama.cpp sizes their shared expert by other means: here, by its tensor. Only
    qwen2moe has one (llama.cpp's qwen3moe and Mixtral read no *_shexp tensor): another
    architecture's shared-expert tensors are refused by the weight loader. Raises
    ValueError naming the key when it disagrees with the tensor (as _expert_width)."""
    if p != "qwen2moe.":
        return 0
    key = int(_field(reader, p + "expert_shared_feed_forward_length", 0) or 0)
    gate = next((t for n, t in tensors.items() if n.endswith(".ffn_gate_shexp.weight")), None)
    width = int(gate.shape[1]) if gate is not None else 0  # ggml order: [hidden, width]
    if key and width and key != width:
        raise ValueError(f"GGUF metadata {p}expert_shared_feed_forward_length = {key} "
                         f"disagrees with tensor {gate.name}, whose shared expert is {width} "
                         "wide")
    return key or width
