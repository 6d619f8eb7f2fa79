"""Prompt logprobs: log P(prompt[j + 1] | prompt[: j + 1]) for the prompt positions of the
requests that ask (echo with logprobs, prompt_logprobs), computed during their prefill.

A prefill step computes the hidden state of every new token but the model keeps only each
request's last one for sampling; for a request that asks, the hidden states of its prompt
positions are also put through the final norm and the LM head, in blocks of BLOCK rows so
that a long prompt never holds a [prompt, vocab] logits tensor at once. A prompt split over
several steps (chunked prefill) gets each chunk's positions in the step that computes it;
positions already scored (a paused request recomputing its prompt) are not scored again.

Each scored position gives the prompt token's logprob, its rank among the vocabulary
(1 + the number of tokens more likely), and the top-k tokens with their logprobs.

Under tensor parallelism each rank's LM head holds a part of the vocabulary: every rank
scores the same positions (rank 0's step message carries them), and each block's logits are
all-gathered over the ranks, as the sampled rows' are, before the log-softmax. The other
way, a log-sum-exp, a top-k and a rank count per part combined across the ranks, sends less
(2 + 2k numbers a position, not the vocabulary) but must mask the last part's padding rows,
merge the top-k lists and find which rank holds each target. The gather reuses the
collective the sampled rows already take and scores each position on the whole row of
logits exactly as one rank does (the same top-k and rank among ties), BLOCK rows at a time.
Only rank 0 needs the results: the other ranks take part in the gather and stop there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 256  # positions whose logits are materialised at once: BLOCK * vocab * 4 bytes


@dataclass(slots=True)
class PromptScoring:
    """The positions of one step to score and, after the forward pass, their results."""

    index: torch.Tensor  # [P] int64: rows of the step's new tokens to score
    # [P] int64: the prompt token that follows each of them (None on a tensor-parallel rank
    # other than 0, which only takes part in the logits' gather)
    targets: torch.Tensor | None
    top_k: int  # alternatives per position (the most any scored request asked for)
    spans: list[tuple[object, int, int]]  # (request, first position, count) in `index` order
    index_host: np.ndarray | None = None  # `index` on the host (rank 0's step message)
    logprobs: torch.Tensor | None = None  # [P] fp32
    ranks: torch.Tensor | None = None  # [P] int64
    top_ids: torch.Tensor | None = None  # [P, top_k] int64
    top_logprobs: torch.Tensor | None = None  # [P, top_k] fp32

    @classmethod
    def gather_only(cls, index: np.ndarray, device: torch.device) -> "PromptScoring":
        """A tensor-parallel rank's share (not rank 0's): the positions `index` [P] int64 of
        rank 0's step message, whose logits it gathers with the other ranks."""
        return cls(torch.from_numpy(index).to(device), None, 0, [])

    def compute(self, hidden: torch.Tensor, lm_head: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """hidden [P, H] (after the final norm), lm_head [V', H] (this rank's rows of it):
        fill in the results. gather: [B, V'] float32 logits of this rank's vocabulary ->
        [B, V] of the whole (under tensor parallelism; a collective every rank calls)."""
        lps, ranks, tids, tlps = [], [], [], []
        for s in range(0, hidden.shape[0], BLOCK):
            h = hidden[s : s + BLOCK]
            if h.is_cuda and h.dtype != torch.float32:
                logits = torch.mm(h, lm_head.t(), out_dtype=torch.float32)
            else:
                logits = F.linear(h, lm_head).float()
            if gather is not None:
                logits = gather(logits)
            if self.targets is None:
                continue
            lse = logits.logsumexp(dim=-1, keepdim=True)
            chosen = logits.gather(1, self.targets[s : s + BLOCK, None])
            lps.append((chosen - lse).squeeze(1))
            ranks.append((logits > chosen).sum(dim=-1) + 1)
            if self.top_k:
                vals, ids = logits.topk(self.top_k, dim=-1)
                tids.append(ids)
                tlps.append(vals - lse)
        if self.targets is None:
            return
        self.logprobs = torch.cat(lps)
        self.ranks = torch.cat(ranks)
        if self.top_k:
            self.top_ids, self.top_logprobs = torch.cat(tids), torch.cat(tlps)


def plan_scoring(reqs: Sequence, prefix_lens: Sequence[int], extend_lens: Sequence[int],
                 device: torch.device) -> PromptScoring | None:
    """The prompt positions of a step's requests that need scoring, or None.

    reqs: the step's requests (with prompt_ids, prompt_logprobs: None unless asked,
    prompt_scored: the positions scored so far, and params.prompt_logprobs: top-k);
    prefix_lens / extend_lens: where each request's new tokens sit in its sequence."""
    index, targets, spans = [], [], []
    top_k = 0
    offset = 0
    for r, pre, ext in zip(reqs, prefix_lens, extend_lens):
        if r.prompt_logprobs is not None:
            # position j scores token j + 1: positions from the first unscored on
            first = max(pre, r.prompt_scored)
            last = min(pre + ext, len(r.prompt_ids) - 1)
            if first < last:
                index.append(np.arange(offset + first - pre, offset + last - pre))
                targets.append(np.asarray(r.prompt_ids[first + 1 : last + 1]))
                spans.append((r, first, last - first))
                top_k = max(top_k, r.params.prompt_logprobs)
        offset += ext
    if not index:
        return None
    host = np.concatenate(index).astype(np.int64)
    tgt = torch.from_numpy(np.concatenate(targets).astype(np.int64)).to(device)
    return PromptScoring(torch.from_numpy(host).to(device), tgt, top_k, spans, index_host=host)
