"""Tensor-parallel layers and the shard plan: which rows and columns of each weight a rank holds.

Megatron-LM's split of a transformer layer (Shoeybi et al. 2019, "Megatron-LM: Training
Multi-Billion Parameter Language Models Using Model Parallelism", section 3): q/k/v and
gate/up are column-parallel (each rank computes its heads and its slice of the MLP's
intermediate features, no communication), o_proj and down_proj are row-parallel (each rank
multiplies its slice of the input features and one all-reduce sums the partial outputs), and
the embedding and lm_head are split along the vocabulary (each rank looks up / scores its
range of token ids; the embedding is summed by an all-reduce, the logits all-gathered).
A mixture-of-experts layer is split as its experts' MLPs are: every rank holds every expert,
with its slice of each expert's (and the shared expert's) intermediate features, and
computes the routing itself from the replicated router; one all-reduce sums the layer's
partial outputs (moe.py). This is how vLLM splits experts under tensor parallelism when it
is not asked for expert parallelism.

Heads are split along KV groups, so that each rank's query heads attend only to its own KV
heads: with G = num_heads / num_kv_heads query heads per KV head, a rank holding KV heads
[a, b) holds query heads [a G, b G). When there are fewer KV heads than ranks, each KV head is
replicated on num_ranks / num_kv_heads ranks, each of which holds an equal part of its query
group. When the KV heads do not divide evenly, the first ranks hold one head more (the
all-reduce does not care how the features are split; the rank with more heads sets the pace).

The model code asks `current()` for the rank's TensorParallel (aiollm.distributed); None means
one rank, and every layer here then reduces to its plain single-device form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aiollm.model.config import ModelConfig

_current = None  # the process's aiollm.distributed.TensorParallel, or None


def set_current(tp) -> None:
    """Make `tp` (an aiollm.distributed.TensorParallel, or None) the group models built from
    now on are sharded over."""
    global _current
    _current = tp


def current():
    return _current


def split(total: int, parts: int, index: int) -> tuple[int, int]:
    """(start, size) of part `index` of `total` items cut into `parts` near-equal parts, the
    first total % parts parts one larger."""
    base, extra = divmod(total, parts)
    return index * base + min(index, extra), base + (index < extra)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One rank's ranges of a model's heads, MLP features (dense, each expert's, the shared
    expert's) and vocabulary (start, size)."""

    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    intermediate: tuple[int, int]
    vocab: tuple[int, int]  # the rows of the embedding and lm_head this rank holds
    vocab_padded: int  # rows per rank: ceil(vocab / ranks); the last rank's tail is padding
    expert_intermediate: tuple[int, int] = (0, 0)  # of each routed expert (MoE models)
    shared_intermediate: tuple[int, int] = (0, 0)  # of Qwen2-MoE's shared expert

    @classmethod
    def of(cls, config: ModelConfig, rank: int, ranks: int) -> "ShardPlan":
        check_divisible(config, ranks)
        h, kv = config.num_heads, config.num_kv_heads
        if kv >= ranks:
            kv_heads = split(kv, ranks, rank)
            group = h // kv
            q_heads = (kv_heads[0] * group, kv_heads[1] * group)
        else:  # each KV head replicated on ranks / kv ranks, its query group split among them
            per = ranks // kv
            kv_heads = (rank // per, 1)
            q_heads = (rank * (h // ranks), h // ranks)
        padded = -(-config.vocab_size // ranks)
        start = rank * padded
        vocab = (start, max(0, min(config.vocab_size, start + padded) - start))
        moe = config.moe
        experts = shared = (0, 0)
        if has_sparse_layers(config):
            experts = split(moe.intermediate_size, ranks, rank)
            shared = split(moe.shared_expert_intermediate_size, ranks, rank)
        return cls(q_heads, kv_heads, split(config.intermediate_size, ranks, rank), vocab, padded,
                   experts, shared)


def has_sparse_layers(config: ModelConfig) -> bool:
    """Whether any layer of the model has experts (a Qwen MoE config may make every layer
    dense: mlp_only_layers naming them all, or a decoder_sparse_step past the last)."""
    moe = config.moe
    return moe is not None and any(moe.is_sparse(i) for i in range(config.num_layers))


def check_divisible(config: ModelConfig, ranks: int) -> None:
    """Raise ValueError when the model's heads, or its MLPs' (dense, experts', shared
    expert's) features, cannot be split over `ranks` ranks."""
    h, kv = config.num_heads, config.num_kv_heads
    if ranks < 1:
        raise ValueError(f"tensor parallel size must be >= 1, got {ranks}")
    moe = config.moe
    # a rank with none of an MLP's features would hold zero-width weights; the widths of an
    # MLP kind no layer has are unread (as in transformers) and not split
    widths = []
    if moe is None or not all(moe.is_sparse(i) for i in range(config.num_layers)):
        widths.append(("dense MLP", config.intermediate_size))
    if has_sparse_layers(config):
        widths += [("expert", moe.intermediate_size),
                   ("shared expert", moe.shared_expert_intermediate_size)]
    for name, width in widths:
        if 0 < width < ranks:
            raise ValueError(f"tensor parallel size {ranks} exceeds the {width} "
                             f"intermediate features of this model's {name}s, which the "
                             "ranks split")
    if kv < ranks and (ranks % kv or h % ranks):
        raise ValueError(
            f"tensor parallel size {ranks} does not fit this model's heads: with fewer KV "
            f"heads ({kv}) than ranks, the ranks must be a multiple of the KV heads and divide "
            f"the {h} attention heads")
    if ranks > h:
        raise ValueError(f"tensor parallel size {ranks} exceeds the model's {h} attention heads")


def local_config(config: ModelConfig, tp) -> ModelConfig:
    """The config of this rank's part of the model: its heads, its MLP features and its
    (padded) vocabulary rows; the config itself when tp is None."""
    if tp is None:
        return config
    plan = ShardPlan.of(config, tp.rank, tp.size)
    moe = config.moe
    if has_sparse_layers(config):  # else the experts' widths are unread, and stay whole
        moe = dataclasses.replace(moe, intermediate_size=plan.expert_intermediate[1],
                                  shared_expert_intermediate_size=plan.shared_intermediate[1])
    # a rank gets no dense features only when no layer is dense (check_divisible refuses
    # the rest): that width is then unread, as in transformers, and stays whole
    return dataclasses.replace(config, num_heads=plan.q_heads[1], num_kv_heads=plan.kv_heads[1],
                               intermediate_size=plan.intermediate[1] or config.intermediate_size,
                               vocab_size=plan.vocab_padded, moe=moe)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_r W_r^T) + b: x_r [T, in / ranks] the rank's input features, W_r
    [out, in / ranks] its columns of the weight; the bias (full) is added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.tp = current()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp is None:
            return F.linear(x, self.weight, self.bias)
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True, slots=True)
class VocabPart:
    """One rank's part of a vocabulary-parallel LM head's logits: column j is token
    start + j; the columns of tokens >= vocab (the last parts' tail) are padding."""

    start: int
    vocab: int  # the whole vocabulary
    tp: object  # the aiollm.distributed.TensorParallel whose ranks hold the parts


class VocabParallelEmbedding(nn.Module):
    """Embedding rows [start, start + rows) of the vocabulary on each rank: ids outside the
    range look up zeros, and an all-reduce sums the ranks' rows into the full embedding."""

    def __init__(self, num_embeddings: int, dim: int, full_vocab: int):
        super().__init__()
        self.tp = current()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.start = 0 if self.tp is None else self.tp.rank * num_embeddings
        self.full_vocab = full_vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp is None:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        inside = (local >= 0) & (local < self.weight.shape[0])
        x = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
        return self.tp.all_reduce(x * inside.unsqueeze(-1).to(x.dtype))

    @property
    def vocab_part(self) -> VocabPart | None:
        """This rank's part of the logits (None: one rank, the whole vocabulary)."""
        return None if self.tp is None else VocabPart(self.start, self.full_vocab, self.tp)

    def gather_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[T, padded rows] logits of this rank's vocabulary range -> [T, vocab] of all."""
        if self.tp is None:
            return logits
        return self.tp.all_gather_columns(logits)[:, : self.full_vocab]
