"""A launched step's results on their way to the host, and what the engine reads from them.

Launched holds the host tensors a step queued on the device fills in (page-locked copies,
or a decode batch's packed [2 * bs] argmax and non-finite flags) and the CUDA events that
time it; once its `done` event has completed, Launched.collect() gives a StepResult: the
same values as numpy arrays, with the helpers that write a request's logprobs and prompt
logprobs from them (engine/hand_out.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.engine.request import TokenLogprob
from aiollm.model.prompt_logprobs import PromptScoring


@dataclass(slots=True)
class Launched:
    """A step queued on the device: host tensors that fill in when `done` completes."""

    next_ids: torch.Tensor | None  # [S] int64 (None: nothing sampled)
    logprobs: torch.Tensor | None
    top_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None
    bad: torch.Tensor | None
    start: torch.cuda.Event | None
    done: torch.cuda.Event | None
    packed: np.ndarray | None = None  # a decode batch's [2 * bs] argmax and non-finite flags
    ranks: torch.Tensor | None = None  # [S] int64: the sampled tokens' ranks (with logprobs)
    n: int = 0
    bs: int = 0
    # a constrained step's forward only: (inputs, logits [S, V], non-finite flags [S])
    deferred: tuple | None = None
    scoring: PromptScoring | None = None  # prompt logprobs, their results in host tensors
    # a constrained step's end of forward (timed steps): the device's wait for the mask is
    # the time from here to its sampling (the engine's step log)
    forward_end: torch.cuda.Event | None = None
    # a constrained step's host seconds to fill its mask and to queue its sampling (step log)
    mask_host_s: float | None = None
    sample_host_s: float | None = None
    # perf_counter() seconds: the start of the loop's turn that launched the step, and the
    # end of its launch (the step log's host timeline)
    turn_start: float | None = None
    issued: float | None = None

    def collect(self) -> StepResult | None:
        """The results, once `done` has completed (None: the step sampled and scored
        nothing)."""
        if self.packed is not None:
            n, bs = self.n, self.bs
            return StepResult(next_ids=self.packed[:n].copy(), logprobs=None, top_ids=None,
                              top_logprobs=None, bad=self.packed[bs : bs + n] != 0)
        if self.next_ids is None and self.scoring is None:
            return None

        def np_(t):
            return None if t is None else t.numpy()

        return StepResult(next_ids=np_(self.next_ids), logprobs=np_(self.logprobs),
                          top_ids=np_(self.top_ids), top_logprobs=np_(self.top_logprobs),
                          bad=np_(self.bad), scoring=self.scoring, ranks=np_(self.ranks))


@dataclass(slots=True)
class StepResult:
    """A completed step's sampled tokens, by sampled row, as numpy (S rows), with the
    prompt logprobs it scored."""

    next_ids: np.ndarray  # [S] int64
    logprobs: np.ndarray | None  # [S] fp32
    top_ids: np.ndarray | None  # [S, K]
    top_logprobs: np.ndarray | None
    bad: np.ndarray | None  # [S] bool: non-finite logits
    scoring: PromptScoring | None = None
    ranks: np.ndarray | None = None  # [S] int64: tokens at least as likely as the sampled one

    def record_prompt_logprobs(self) -> None:
        """Write the step's prompt logprobs into their requests' prompt_logprobs."""
        sc = self.scoring
        lps, ranks, tgt = sc.logprobs.numpy(), sc.ranks.numpy(), sc.targets.cpu().numpy()
        k = 0
        for r, first, count in sc.spans:
            n_top = r.params.prompt_logprobs
            for j in range(first, first + count):
                top = []
                if n_top:
                    top = [(int(t), float(v)) for t, v in
                           zip(sc.top_ids[k, :n_top].numpy(), sc.top_logprobs[k, :n_top].numpy())]
                r.prompt_logprobs[j + 1] = TokenLogprob(int(tgt[k]), float(lps[k]), top,
                                                        int(ranks[k]))
                k += 1
            r.prompt_scored = max(r.prompt_scored, first + count)

    def logprob_entry(self, row: int, n_top: int) -> TokenLogprob:
        """The sampled token of `row` with its logprob and the n_top most likely tokens of
        the row the logprobs mode reports, as vLLM V1 lists them: n_top of them also where
        fewer could be drawn (a grammar, top-k, top-p, min-p), those at -inf, in any order
        (the API reports -inf as -9999.0: api/logprob_json.py)."""
        top = []
        if n_top and self.top_ids is not None:
            top = [(int(t), float(lp)) for t, lp in
                   zip(self.top_ids[row, :n_top], self.top_logprobs[row, :n_top])]
        rank = None if self.ranks is None else int(self.ranks[row])
        return TokenLogprob(int(self.next_ids[row]), float(self.logprobs[row]), top, rank)

