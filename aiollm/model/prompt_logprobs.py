"""Prompt logprobs: log P(prompt[j + 1] | prompt[: j + 1]) for the prompt positions of the
requests that ask (echo with logprobs, prompt_logprobs), computed during their prefill.

A prefill step computes the hidden state of every new token but the model keeps only each
request's last one for sampling; for a request that asks, the hidden states of its prompt
positions are also put through the final norm and the LM head, in blocks of BLOCK rows so
that a long prompt never holds a [prompt, vocab] logits tensor at once. A prompt split over
several steps (chunked prefill) gets each chunk's positions in the step that computes it;
positions already scored (a paused request recomputing its prompt) are not scored again.

Each scored position gives the prompt token's logprob, its rank among the vocabulary (the
tokens at least as likely, itself included: vLLM V1's rank), and the top-k tokens with
their logprobs.

Under tensor parallelism each rank's LM head holds a part of the vocabulary: every rank
scores the same positions (rank 0's step message carries them, their prompt tokens and the
top-k), each block's logits stay on their rank, and only a summary of each part travels
(vocab_parallel_logprobs.py): the prompt tokens' logits are summed over the ranks (each is
in one part), then every rank's log-sum-exp, count of logits above the prompt token's and
top-k per position, 2 + 2k float32 numbers, are all-gathered, and rank 0 combines them into
what one rank computes on the whole row. With a 152k vocabulary over 2 ranks, a block of
256 positions sends 1 KB (the sum) and 256 (2 + 2k) * 4 bytes a rank (12 KB for k = 5,
43 KB for k = 20), where gathering its logits sent 78 MB a rank and allocated 311 MB (the
gathered rows and their reordering). One rank goes through the same summary and combine,
of one part, so that one rank and several agree on ties too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from aiollm.kernels.extend_attention import capped
from aiollm.model.vocab_parallel_logprobs import combine, part_summary, target_logits

if TYPE_CHECKING:
    from aiollm.model.parallel import VocabPart

BLOCK = 256  # positions whose logits are materialised at once: BLOCK * vocab * 4 bytes


@dataclass(slots=True)
class PromptScoring:
    """The positions of one step to score and, after the forward pass, their results."""

    index: torch.Tensor  # [P] int64: rows of the step's new tokens to score
    targets: torch.Tensor  # [P] int64: the prompt token that follows each of them
    top_k: int  # alternatives per position (the most any scored request asked for)
    spans: list[tuple[object, int, int]]  # (request, first position, count) in `index` order
    index_host: np.ndarray | None = None  # `index` on the host (rank 0's step message)
    targets_host: np.ndarray | None = None  # `targets` on the host (likewise)
    # whether this rank combines the parts into results (rank 0) or only contributes its
    # part of the vocabulary (a tensor-parallel follower)
    results: bool = True
    logprobs: torch.Tensor | None = None  # [P] fp32
    ranks: torch.Tensor | None = None  # [P] int64
    top_ids: torch.Tensor | None = None  # [P, top_k] int64
    top_logprobs: torch.Tensor | None = None  # [P, top_k] fp32

    @classmethod
    def part_only(cls, index: np.ndarray, targets: np.ndarray, top_k: int,
                  device: torch.device) -> "PromptScoring":
        """A tensor-parallel follower's share: the positions `index` [P] int64, prompt tokens
        `targets` [P] int64 and top-k of rank 0's step message, which it scores on its part
        of the vocabulary for rank 0 to combine."""
        return cls(torch.from_numpy(index).to(device), torch.from_numpy(targets).to(device),
                   top_k, [], results=False)

    def compute(self, hidden: torch.Tensor, lm_head: torch.Tensor,
                part: VocabPart | None = None, softcap: float | None = None) -> None:
        """hidden [P, H] (after the final norm), lm_head [V', H] (this rank's rows of it,
        `part` of the vocabulary under tensor parallelism, where every rank calls this
        together): fill in the results (rank 0). softcap: the model's final logit soft-cap
        (Gemma 2: each logit cap x tanh(logit / cap); None: none)."""
        start, vocab = (0, lm_head.shape[0]) if part is None else (part.start, part.vocab)
        k = min(self.top_k, vocab)
        lps, ranks, tids, tlps = [], [], [], []
        for s in range(0, hidden.shape[0], BLOCK):
            h = hidden[s : s + BLOCK]
            if h.is_cuda and h.dtype != torch.float32:
                logits = torch.mm(h, lm_head.t(), out_dtype=torch.float32)
            else:
                logits = F.linear(h, lm_head).float()
            logits = capped(logits, softcap)
            chosen = target_logits(logits, self.targets[s : s + BLOCK], start)
            if part is not None:
                chosen = part.tp.all_reduce(chosen)
            summary = part_summary(logits, chosen, k, start, vocab)
            del logits  # before the next block's: one block's logits at a time
            summaries = summary[None] if part is None else part.tp.all_gather(summary)
            if not self.results:
                continue
            lp, rank, ids, top = combine(summaries, chosen, k)
            lps.append(lp)
            ranks.append(rank)
            tids.append(ids)
            tlps.append(top)
        if not self.results:
            return
        self.logprobs = torch.cat(lps)
        self.ranks = torch.cat(ranks)
        if k:
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
    tgt = np.concatenate(targets).astype(np.int64)
    return PromptScoring(torch.from_numpy(host).to(device), torch.from_numpy(tgt).to(device),
                         top_k, spans, index_host=host, targets_host=tgt)
