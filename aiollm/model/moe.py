"""SparseMoe: the mixture-of-experts MLP of Mixtral, Qwen2-MoE, Qwen3-MoE and GraniteMoe.

A router (`gate`, a linear map to one logit per expert) picks each token's top-k experts
(softmax, top-k, renormalised as the config says); each expert is a SwiGLU MLP; the token's
output is the routing-weighted sum of its experts' outputs (Shazeer et al. 2017; Jiang et al.
2024, "Mixtral of Experts"). Qwen2-MoE adds a shared expert that every token passes through,
scaled by sigmoid(shared_expert_gate(x)).

The experts' weights are stacked per layer, gate and up fused as in mlp.py's MLP:
experts.gate_up_proj [E, 2I, H] and experts.down_proj [E, H, I], the layout the fused kernel
reads (kernels/fused_moe.py); the loaders fill them expert by expert. The layer holds the
experts of `expert_range` only (all by default) and routes over all of them, so an
expert-parallel split later gives each rank a range and sums the ranks' outputs; nothing else
changes. Under tensor parallelism (parallel.py) the config is the rank's: each expert and the
shared expert hold the rank's slice of their intermediate features, the router is whole, and
forward sums the ranks' partial outputs, shared expert included, in one all-reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aiollm.kernels import fused_moe, fused_moe_decode, silu_and_mul
from aiollm.kernels.gemv import gemv_norm
from aiollm.model.config import ModelConfig
from aiollm.model.linear import Linear
from aiollm.model.norm import RMSNorm
from aiollm.model.mlp import MLP
from aiollm.model.parallel import current


class Experts(nn.Module):
    """The stacked weights of `num_experts` SwiGLU experts (left uninitialised, as Linear)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))


class SparseMoe(nn.Module):
    def __init__(self, config: ModelConfig, expert_range: range | None = None):
        super().__init__()
        m = config.moe
        assert m is not None, "SparseMoe needs a config with moe set"
        self.expert_range = expert_range if expert_range is not None else range(m.num_experts)
        if not (0 <= self.expert_range.start < self.expert_range.stop <= m.num_experts
                and self.expert_range.step == 1):
            raise ValueError(f"expert_range {self.expert_range} is not a contiguous range "
                             f"within the model's {m.num_experts} experts")
        self.tp = current()
        self.top_k, self.renormalize = m.top_k, m.norm_topk_prob
        self.gate = Linear(config.hidden_size, m.num_experts, bias=False)
        self.experts = Experts(len(self.expert_range), config.hidden_size, m.intermediate_size)
        self.has_shared = m.shared_expert_intermediate_size > 0
        if self.has_shared:
            self.shared_expert = MLP(config.hidden_size, m.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H], same dtype."""
        out = fused_moe(x, self.experts.gate_up_proj, self.experts.down_proj, self.gate(x),
                        self.top_k, self.renormalize, self.expert_range.start)
        if self.has_shared:
            # the shared expert's down projection unreduced: its partial sum joins the
            # experts' in the one all-reduce below
            shared = self.shared_expert
            act = silu_and_mul(shared.gate_up_proj(x))
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * F.linear(
                act, shared.down_proj.weight)
        return out if self.tp is None else self.tp.all_reduce(out)

    @property
    def takes_small(self) -> bool:
        """Whether forward_small serves this layer (not with a shared expert, whose sigmoid
        gate the fused kernels do not fold in: Qwen2-MoE runs its steps layer by layer)."""
        return not self.has_shared

    def forward_small(self, residual: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """The block on the float32 residual stream [T, H] of a one-token step, as
        mlp.MLP.forward_small: the router's GEMV with `norm` folded in (gemv.py), then the
        experts' two GEMVs with the norm, the routing and the residual add folded in
        (fused_moe_gemv.fused_moe_decode_triton); returns the stream, updated in place."""
        logits = gemv_norm(residual, norm.weight, norm.eps, self.gate.weight, None,
                           torch.float32)
        return fused_moe_decode(residual, norm.weight, norm.eps, logits,
                                self.experts.gate_up_proj, self.experts.down_proj, self.top_k,
                                self.renormalize, self.expert_range.start)
