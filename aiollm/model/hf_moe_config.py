"""The mixture-of-experts fields of a Hugging Face config (Mixtral, Qwen2-MoE, Qwen3-MoE,
GraniteMoe).

moe_from_hf reads them as transformers' model classes do: which layers are sparse
(mlp_only_layers, decoder_sparse_step, num_experts 0), the experts' count under either of
its config.json spellings (num_experts, num_local_experts), top-k, sizes and the shared
expert, refusing a bad value by the config.json field that holds it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiollm.model.config import MoeConfig

log = logging.getLogger(__name__)


def moe_from_hf(hf: Any, fields: dict) -> MoeConfig | None:
    """MoeConfig of a Mixtral / Qwen MoE config, None for a Qwen one whose every layer is
    dense; a bad value is refused naming its config.json field (MoeConfig's own checks speak
    of top_k and sparse_step, which no config.json has) as `fields` (config.json's) spell it.

    transformers (5.x, modeling_qwen2_moe.py / modeling_qwen3_moe.py) gives layer i experts
    only when i is not in mlp_only_layers and num_experts > 0 and (i + 1) %
    decoder_sparse_step == 0, evaluated left to right; its config classes check the fields'
    types, not their values. The expert fields are read here in that order, and a field no
    layer reads is not checked: a config whose every layer is dense loads whatever its
    num_experts_per_tok, moe_intermediate_size or shared_expert_intermediate_size say."""
    # GraniteMoe is laid out as Mixtral is: every layer sparse, num_local_experts experts of
    # intermediate_size, no shared expert; its top-k-then-softmax routing is MoeConfig's
    # norm_topk_prob True (config.py)
    mixtral = hf.model_type in ("mixtral", "granitemoe")
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
    top_k = hf.num_experts_per_tok
    if not isinstance(top_k, int) or isinstance(top_k, bool):  # GraniteMoe's may be null
        raise ValueError(f"config.json: num_experts_per_tok must be an integer, got {top_k!r}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"config.json: num_experts_per_tok must be in [1, {experts_field} = "
                         f"{num_experts}], got {top_k}")
    if mixtral:
        # Mixtral and GraniteMoe: every layer sparse, experts of intermediate_size, top-k
        # always renormalised
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

