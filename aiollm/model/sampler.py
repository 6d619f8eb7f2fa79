"""The sampler: next tokens and their logprobs for a whole batch in a few tensor ops.

Per-request parameters arrive as [B] tensors (SamplingTensors, built once per step from
columns of the request table: model/sampling_tensors.py). This file holds the draw itself:
sample() has no per-request Python loop and no host sync, so it runs as-is on CPU and CUDA
and its shapes depend only on B, V and a few host ints.

Order of operations on each row:
  1. logit_bias (bad words among them, as biases of -inf) and the grammar's allowed-token
     bitmask (model/logit_masks.py); eos and stop ids banned (-inf) while a request is
     under its min_tokens (vLLM's place for the ban; the code bans after step 2, which
     gives the same row: -inf stays -inf under every penalty);
  2. penalties on those logits: repetition (HF: over prompt + output tokens, positive
     logits divided, negative multiplied; over the output alone on LightLLM's /generate
     unless input_penalty, SamplingParams.penalty_scope), then frequency and presence
     (OpenAI: over output tokens, subtracted) (model/penalties.py), then
     exponential_decay_length_penalty on the eos logits (transformers' and LightLLM's).
     vLLM V1's order (bias before penalties, as transformers' SequenceBias before
     RepetitionPenalty): the penalty divides a biased logit, by the biased logit's sign;
  3. greedy rows (temperature < 1e-5) take the argmax; for the others top-k, top-p (on
     temperature-scaled probabilities renormalised over the tokens top-k and min-p keep, as
     vLLM V1 applies min-p first; transformers and SGLang cut top-p before min-p; on rows
     of st.top_p_joint, LightLLM's, over the whole distribution instead) and
     min-p (relative to the most likely token, after temperature) each keep a most-likely
     prefix of the sorted row, so together they reduce to one logit floor per row: every
     token at or above it is kept, ties at the floor included (as HF's and vLLM's top-k
     do; bf16 logits tie often). Top-p's mass is that of the k highest ranks alone: their
     values do not depend on which tied tokens fill them, so neither on the batch (vLLM's
     mass also counts the tokens tied with the k-th past rank k);
  4. the draw is a Gumbel-max race over the tokens at or above the floor:
     argmax(logits / T + g), g = -log(-log(u)), which samples softmax(logits / T) exactly.
     It runs over the whole row, in the pass that gives argmax and logsumexp (vLLM's form
     of top-k: a threshold, not a candidate list), so a row draws from exactly the tokens
     at or above its floor, ties past rank k included, and its draw does not depend on
     the batch (save on a row with no finite logit left, where any token breaks its
     constraints). The kernel skips the noise of blocks with nothing at or above the
     floor. Timed on an H100 (bench/sampler.py) this beat a race on the max(k) + 1 best
     tokens that fell back to the whole row where the floor tied past them; a race on the
     max(k) best alone leaves such ties out, so a row's draw depended on its batch.

Logprobs (the chosen token's, its rank and the top ones, all on one row) report what the
server's logprobs mode (LOGPROBS_MODES, vLLM V1's --logprobs-mode) names:
  raw_logprobs (default): log_softmax of the logits as they came in, before steps 1 and 2,
     temperature and truncation: a token the request bans, biases, penalises or leaves out
     of its allowed_token_ids keeps its logprob (and can be listed among the top ones), as
     in vLLM V1; but a grammar's forbidden tokens are -inf there (st.grammar, the grammars'
     part of step 1's bitmask), as vLLM's model runner masks a grammar before its sampler;
  processed_logprobs: log_softmax of the row the token was drawn from (vLLM's "processed"):
     steps 1 and 2, then on sampled rows the logits divided by the temperature, with -inf
     below the floor of step 3 (every token at or above it was drawable); on greedy rows,
     steps 1, 2;
  raw_logits, processed_logits: those rows' logits themselves, not normalised.
A step makes one more pass over the logits for them only when a row asked for logprobs and
its row under the mode differs from the one the draw scanned (under a raw mode: a penalty or
ban on that row, or a constraint other than a grammar alone on any row of the step, as which
rows a grammar or bias touched is not known on the host; under a processed one: that row
sampled with a temperature other than 1 or a truncation): else the draw's logsumexp serves.

The noise u is a counter-based hash of (seed, step, token id): keys of (seed, step) on the
host, then a 32-bit hash of (keys, id) per token on the device. A request's draw depends on
its own seed and step only: not on the batch around it, its row, the device's RNG state or
a torch.Generator. Unseeded requests get a random seed from the engine, so one code path
serves all. On CUDA one Triton pass over the logits gives the argmax, the logsumexp and
the draw together (aiollm.kernels.sampling.row_scan, beside its PyTorch reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aiollm.config import LOGPROBS_MODES
from aiollm.kernels.sampling import row_scan
from aiollm.model.logit_masks import apply_bitmask_, apply_constraints, mask_token_ids
from aiollm.model.penalties import apply_penalties
from aiollm.model.sampling_tensors import SamplingTensors
from aiollm.model.vocab_parallel_logprobs import top_k as ordered_top_k


@dataclass(slots=True)
class SampleResult:
    """What sample() gives for a batch of B rows: the next ids and, for rows that asked,
    their logprobs, ranks and the top logprobs."""

    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] fp32: logprob of next_ids (None: no row asked)
    # [B, K] int64, K = max top_logprobs in the batch: largest first, equal values in
    # ascending token id (the lowest ids kept at the K-th place), whatever the batch
    top_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None  # [B, K] fp32
    # [B] int64: the number of tokens at least as likely as next_ids (itself included) on
    # the row the logprobs come from, vLLM V1's rank (None: no row asked for logprobs)
    ranks: torch.Tensor | None = None


_VOCAB_IDS: dict = {}


def _vocab_ids(vocab: int, device: torch.device) -> torch.Tensor:
    """arange(vocab)[None] as the ids of a full row, made once per device."""
    key = (vocab, str(device))
    if key not in _VOCAB_IDS:
        _VOCAB_IDS[key] = torch.arange(vocab, device=device)[None, :]
    return _VOCAB_IDS[key]


def _floor(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """[2, B]: [1/temperature, the logit floor that top-k, top-p and min-p leave] per row
    (each keeps a most-likely prefix of the sorted row, so together they keep the shortest;
    -inf where none truncates)."""
    vocab = logits.shape[1]
    if not st.trunc_width:
        if not st.use_min_p:
            return st.scale_floor
        floor = logits.amax(dim=-1) + st.min_p_offset
        return torch.stack([st.scale_floor[0], floor])
    if st.trunc_width < vocab:
        vals = logits.topk(st.trunc_width, dim=-1).values
    else:
        vals = logits.sort(dim=-1, descending=True).values
    n_keep = st.top_k.clamp(max=st.trunc_width).long()
    min_p_floor = vals[:, 0] + st.min_p_offset if st.use_min_p else None
    if st.use_top_p:
        # top-p over the renormalised top-k set (its k highest ranks: their values, unlike
        # which of tied tokens fill them, do not depend on the batch), temperature-scaled,
        # less what min-p cuts (vLLM V1 applies min-p before top-k and top-p)
        rank = torch.arange(st.trunc_width, device=vals.device)[None, :]
        cut = rank >= n_keep[:, None]
        if min_p_floor is not None:
            cut |= vals < min_p_floor[:, None]
        scaled = (vals * st.scale_floor[0, :, None]).masked_fill(cut, float("-inf"))
        probs = scaled.softmax(dim=-1)
        if st.top_p_joint is not None:
            # LightLLM's rows: the mass of the whole temperature-scaled distribution, which
            # top-k (and min-p) then cut; one more pass over the row, for them alone
            full = (logits * st.scale_floor[0, :, None]).logsumexp(dim=-1, keepdim=True)
            whole = (vals * st.scale_floor[0, :, None] - full).exp()
            probs = torch.where(st.top_p_joint[:, None], whole, probs)
        before = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))
        # the most likely token always stays, also for a top_p that is 0 in float32
        n_top_p = (before < st.top_p[:, None]).sum(dim=-1).clamp(min=1)
        n_keep = torch.where(st.top_p < 1.0, torch.minimum(n_keep, n_top_p), n_keep)
    limited = (st.top_k < vocab) | (st.top_p < 1.0)
    floor = vals.gather(1, (n_keep - 1)[:, None]).squeeze(1)
    floor = torch.where(limited, floor, float("-inf"))
    if min_p_floor is not None:
        floor = torch.maximum(floor, min_p_floor)
    return torch.stack([st.scale_floor[0], floor])


def sample(logits: torch.Tensor, st: SamplingTensors) -> SampleResult:
    """Next token of every row of logits [B, V] fp32; `logits` is not modified. The logprobs
    (when some row asked) are those of st.logprobs_mode (see the module's docstring)."""
    assert logits.dim() == 2 and logits.dtype == torch.float32, (logits.shape, logits.dtype)
    assert st.logprobs_mode in LOGPROBS_MODES, st.logprobs_mode
    raw = logits
    constrained = st.allowed is not None or st.bias_ids is not None
    # vLLM V1 masks a grammar before its sampler, so its raw rows are the grammar's
    grammar_first = st.grammar is not None and st.raw_logprobs
    # vLLM V1's order (and transformers'): the bias, then the penalties, which divide or
    # multiply a biased logit by its sign. A ban (-inf) stays -inf under either, so it
    # comes last, in place on a tensor of this step's own
    if constrained:
        logits = apply_constraints(logits, st)
    if st.use_penalties:
        logits = apply_penalties(logits, st)
    if st.eos_scale is not None:  # exponential_decay_length_penalty, after the penalties
        logits = logits.clone() if logits is raw else logits
        eos = logits[:, st.eos_ids]
        # a banned eos (-inf) stays banned: -inf + inf * scale would be NaN, which wins a draw
        logits[:, st.eos_ids] = torch.where(eos.isinf(), eos,
                                            eos + eos.abs() * st.eos_scale[:, None])
    if st.ban_ids is not None:
        logits = mask_token_ids(logits.clone() if logits is raw else logits, st.ban_ids,
                                st.ban_active)
    if grammar_first:
        if (st.grammar is st.allowed and st.bias_ids is None and st.ban_ids is None
                and not st.use_penalties and st.eos_scale is None):
            raw = logits  # the grammar is all that changed the row
        else:
            raw = apply_bitmask_(raw.clone(), st.grammar)

    if st.all_greedy and not st.want_logprobs and st.ban_ids is None and not st.use_penalties:
        return SampleResult(logits.argmax(dim=-1), None, None, None)
    scale_floor = None
    if st.all_greedy:
        next_ids, lse, _ = row_scan(logits)
    else:  # one pass: argmax, logsumexp and the draw over every token >= the floor
        scale_floor = _floor(logits, st)
        vocab = _vocab_ids(logits.shape[1], logits.device)
        greedy, lse, next_ids = row_scan(logits, scale_floor, st.keys, vocab)
        if st.any_greedy:
            next_ids = torch.where(st.is_greedy, greedy, next_ids)
    if not st.want_logprobs:
        return SampleResult(next_ids, None, None, None)

    values, lse = _reported(raw, logits, lse, scale_floor, st, constrained)
    chosen = values.gather(1, next_ids[:, None])
    logprobs = (chosen if lse is None else chosen - lse).squeeze(1)
    # the chosen token's place in the vocabulary, as vLLM V1 reports it: the tokens at least
    # as likely, itself included (tied tokens share the worse rank); one compare, no sort
    ranks = (values >= chosen).sum(dim=-1)
    top_ids = top_logprobs = None
    if st.max_top_logprobs > 0:
        # ties in token id order (as prompt logprobs list them): torch.topk's pick among
        # them may change with k, the batch's largest top_logprobs
        k = min(st.max_top_logprobs, values.shape[1])
        top_logprobs, top_ids = ordered_top_k(values, k)
        if lse is not None:
            top_logprobs = top_logprobs - lse
    return SampleResult(next_ids, logprobs, top_ids, top_logprobs, ranks)


def _reported(raw: torch.Tensor, logits: torch.Tensor, lse: torch.Tensor,
              scale_floor: torch.Tensor | None, st: SamplingTensors, constrained: bool):
    """The row [B, V] logprobs are read from under st.logprobs_mode, and its logsumexp
    [B, 1] (None for the *_logits modes: the values are reported as they are). raw: the
    logits given to sample(), a grammar's forbidden tokens -inf under a raw mode; logits,
    lse: the row after penalties, bans and constraints and its logsumexp, which the draw
    computed; scale_floor: the draw's [1/T, floor] ([2, B], None when every row is
    greedy): every token at or above the floor was drawable."""
    mode = st.logprobs_mode
    if mode.startswith("raw"):
        if mode == "raw_logits":
            return raw, None
        # a row that asked and was not changed has the same logsumexp in `lse`
        changed = logits is not raw and (st.lp_penalized or constrained)
        return raw, (row_scan(raw)[1] if changed else lse)
    if scale_floor is None or not st.lp_scaled:  # the drawn row is `logits` itself
        return logits, (None if mode == "processed_logits" else lse)
    scale, floor = scale_floor[0, :, None], scale_floor[1, :, None]
    drawn = torch.where(logits >= floor, logits * scale, float("-inf"))
    if st.is_greedy is not None:  # greedy rows take the argmax of `logits`: no truncation
        drawn = torch.where(st.is_greedy[:, None], logits, drawn)
    return drawn, (None if mode == "processed_logits" else row_scan(drawn)[1])
