"""Checkpoint tensors laid out otherwise than llama.py's, brought to transformers' Llama names
and layout before WeightFiller (weights.py) places them.

Phi-3 keeps q, k and v in one qkv_proj [q_size + 2 kv_size, hidden] and gate and up in one
gate_up_proj [2 intermediate_size, hidden] (gate first: Phi3MLP's chunk(2)). Both are split
here into Llama's q/k/v_proj and gate/up_proj (views: nothing is copied), so that
WeightFiller gives each tensor-parallel rank its own q, k and v heads and gate and up rows
(a contiguous slice of a fused tensor would hand rank 0 the q heads alone), and checks
shapes and names missing parts as for any Llama checkpoint.

A partial rotary (Phi-3's partial_rotary_factor: RopeConfig.rotary_dim < head_dim) reorders
the dimensions of every q and k head (rotary_head_order) so that the rotated pairs come
first in each half, as rope.cos_sin_cache's table expects: every rotary kernel, fused or not,
then runs unchanged, passing the other pairs through (cos 1, sin 0). Attention sees only
q.k, which one order applied to both q and k leaves as it was; v and o_proj keep theirs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import torch

from aiollm.model.config import ModelConfig

_FUSED = re.compile(r"\.(qkv_proj|gate_up_proj)\.(weight|bias)$")
_ROTATED = re.compile(r"\.self_attn\.[qk]_proj\.(weight|bias)$")
_UNFUSED = re.compile(r"\.self_attn\.[qkv]_proj\.|\.mlp\.(?:gate|up)_proj\.")
FUSED_ARCHITECTURES = ("phi3",)


def rotary_head_order(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """[head_dim] int64: the checkpoint dimension each of our head dimensions holds.

    transformers rotates pairs (j, j + rotary_dim / 2) for j < rotary_dim / 2 and passes
    dimensions rotary_dim.. through (its phi3 apply_rotary_pos_emb); our kernels rotate pairs
    (j, j + head_dim / 2). Ours: [rotated first halves, passed first half, rotated second
    halves, passed second half]."""
    assert rotary_dim % 2 == 0 and head_dim % 2 == 0 and 0 < rotary_dim <= head_dim
    r, p = rotary_dim // 2, (head_dim - rotary_dim) // 2
    return torch.cat([torch.arange(0, r), torch.arange(2 * r, 2 * r + p),
                      torch.arange(r, 2 * r), torch.arange(2 * r + p, head_dim)])


def to_llama_layout(tensors: Iterable[tuple[str, torch.Tensor]], config: ModelConfig,
                    shape_error: Callable[[str, torch.Tensor, tuple], ValueError]
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers Llama name, tensor) for each (checkpoint name, tensor) of `tensors`,
    `config` the whole model's (not one rank's): fused projections of FUSED_ARCHITECTURES
    split, q and k rows of a partial rotary reordered. A fused tensor whose rows are not the
    sum of its parts' raises shape_error(name, tensor, expected shape) (CheckpointErrors'): passed
    on whole, one of a tensor-parallel rank's size would fill that rank's fused parameter."""
    fused = config.architecture in FUSED_ARCHITECTURES
    order = None
    if config.rope.rotary_dim is not None and config.rope.rotary_dim != config.head_dim:
        order = rotary_head_order(config.head_dim, config.rope.rotary_dim)
    for name, tensor in tensors:
        m = _FUSED.search(name) if fused else None
        if m is not None and ".experts." not in name:
            sizes = _part_sizes(m.group(1), config)
            if tensor.dim() == 0 or tensor.shape[0] != sum(sizes.values()):
                raise shape_error(name, tensor, (sum(sizes.values()), *tensor.shape[1:]))
            for part, piece in zip(sizes, tensor.split(list(sizes.values()))):
                yield from _reordered(name.replace(m.group(1), part), piece, order,
                                      config.head_dim)
            continue
        yield from _reordered(name, tensor, order, config.head_dim)


def _part_sizes(module: str, config: ModelConfig) -> dict[str, int]:
    """{part name: rows} of a fused projection, in the checkpoint's order."""
    if module == "qkv_proj":
        return {"q_proj": config.q_size, "k_proj": config.kv_size, "v_proj": config.kv_size}
    return {"gate_proj": config.intermediate_size, "up_proj": config.intermediate_size}


def _reordered(name: str, tensor: torch.Tensor, order: torch.Tensor | None, head_dim: int):
    if order is not None and _ROTATED.search(name) and tensor.shape[0] % head_dim == 0:
        heads = tensor.reshape(-1, head_dim, *tensor.shape[1:])
        tensor = heads.index_select(1, order.to(tensor.device)).reshape(tensor.shape)
    yield name, tensor


def fused_source_name(config: ModelConfig, inner: Callable[[str], str] | None
                      ) -> Callable[[str], str] | None:
    """WeightFiller's source_name for a checkpoint to_llama_layout split: the fused tensor's
    name for each of its parts (then `inner`'s name of that, if any)."""
    if config.architecture not in FUSED_ARCHITECTURES:
        return inner

    def source(hf_name: str) -> str:
        name = _UNFUSED.sub(lambda m: ".self_attn.qkv_proj." if "self_attn" in m.group(0)
                            else ".mlp.gate_up_proj.", hf_name)
        return inner(name) if inner is not None else name
    return source
