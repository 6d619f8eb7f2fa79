"""Log-softmax scores of rows of logits whose vocabulary is split into parts (the columns of a
vocabulary-parallel LM head, one part per tensor-parallel rank), combined from a few numbers
per row and part instead of the rows themselves.

For row i and a scored token t_i, one rank holding the whole row computes
    logprob_i = x_i[t_i] - logsumexp_v x_i[v]
    rank_i    = #{v : x_i[v] >= x_i[t_i]}           (ties share the worse rank, as vLLM V1)
    top-k     = the k largest x_i[v], minus the log-sum-exp.
Each of these splits over a partition of v: the logit of t_i lives in one part (every other
part contributes 0 to a sum), the log-sum-exp is the log-sum-exp of the parts' log-sum-exps,
the count is a sum of the parts' counts, and the k largest of the row are the k largest of
the parts' k largest. So a part is summarised by [P, 2 + 2k] numbers (its log-sum-exp, its
count at or above the target's logit, its k largest values and their token ids) and the
parts' summaries combine into exactly the whole row's scores, the log-sum-exp to float rounding.
This is the decomposition Megatron-LM's vocab-parallel cross-entropy uses for the loss
(Shoeybi et al. 2019, section 3), extended to ranks and top-k.

The top-k order is fixed here rather than left to torch.topk, which keeps an unspecified
one of several equal values at the k-th place and orders equal values arbitrarily (on the
CPU it does, for one row): equal values go in ascending token id, and at the k-th place the
lowest ids are kept. One rank and several then give the same list.
"""

from __future__ import annotations

import torch

# token ids travel in the float32 summaries: exact below 2**24
MAX_VOCAB = 1 << 24


def top_k(values: torch.Tensor, k: int, ids: torch.Tensor | None = None, first: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of values [P, n] float32 (1 <= k <= n), largest
    first, equal values in ascending token id and, of several equal to the k-th largest,
    the lowest ids kept. ids: [P, n] int64, each entry's token id (None: entry j is token
    first + j). Returns (values [P, k] float32, token ids [P, k] int64)."""
    n = values.shape[1]
    assert 1 <= k <= n, (k, n)
    vals, pos = values.topk(k, dim=-1)
    tok = pos + first if ids is None else ids.gather(1, pos)
    # every entry above the k-th value is in vals; of the entries equal to it, take the
    # lowest ids: the largest keys -id among them
    kth = vals[:, -1:]
    col_ids = (torch.arange(first, first + n, device=values.device) if ids is None else ids)
    tie_key = torch.where(values == kth, -col_ids.to(torch.float32), float("-inf"))
    tie_pos = tie_key.topk(k, dim=-1).indices
    tie_tok = tie_pos + first if ids is None else ids.gather(1, tie_pos)
    above = (vals > kth).sum(dim=-1, keepdim=True)
    j = torch.arange(k, device=values.device)
    tok = torch.where(j >= above, tie_tok.gather(1, (j - above).clamp(min=0)), tok)
    # equal values above the k-th in ascending id: sort by id, then stably by value
    tok, order = tok.sort(dim=-1)
    vals, order = vals.gather(1, order).sort(dim=-1, descending=True, stable=True)
    return vals, tok.gather(1, order)


def target_logits(logits: torch.Tensor, targets: torch.Tensor, start: int) -> torch.Tensor:
    """logits [P, n] float32 of tokens [start, start + n), targets [P] int64 token ids:
    [P] float32, each target's logit where it falls in this part and 0 elsewhere (so that
    the sum over the parts is every target's logit, exactly)."""
    local = targets - start
    inside = (local >= 0) & (local < logits.shape[1])
    chosen = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1)
    return torch.where(inside, chosen, 0.0)


def part_summary(logits: torch.Tensor, chosen: torch.Tensor, k: int, start: int, vocab: int
                 ) -> torch.Tensor:
    """One part's summary of rows of logits [P, n] float32, tokens [start, start + n), the
    columns of tokens >= vocab padding (set to -inf here, in place); chosen [P] float32 the
    target's logit of each row (from every part). Returns [P, 2 + 2k] float32: the part's
    log-sum-exp, its number of logits at or above the target's (padding not counted), its k
    largest logits (-inf where
    the part has fewer than k columns), their token ids (vocab for those missing)."""
    p, n = logits.shape
    assert vocab < MAX_VOCAB, vocab
    real = min(n, max(0, vocab - start))  # the columns of real tokens
    if real < n:
        logits[:, real:] = float("-inf")
    out = torch.empty((p, 2 + 2 * k), dtype=torch.float32, device=logits.device)
    out[:, 0] = logits.logsumexp(dim=-1)
    out[:, 1] = (logits[:, :real] >= chosen[:, None]).sum(dim=-1)
    if k:
        m = min(k, n)
        vals, ids = top_k(logits, m, first=start)
        out[:, 2: 2 + m] = vals
        out[:, 2 + m: 2 + k] = float("-inf")
        out[:, 2 + k: 2 + k + m] = ids
        out[:, 2 + k + m:] = vocab  # an id no real token has, which loses every tie
    return out


def combine(parts: torch.Tensor, chosen: torch.Tensor, k: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The whole rows' scores from the parts' summaries parts [R, P, 2 + 2k] (part_summary
    of each part) and the targets' logits chosen [P] float32; k at most the vocabulary.
    Returns (logprobs [P] float32, ranks [P] int64, top ids [P, k] int64 and top logprobs
    [P, k] float32, or None and None when k is 0)."""
    r, p, _ = parts.shape
    lse = parts[:, :, 0].logsumexp(dim=0)
    ranks = parts[:, :, 1].sum(dim=0).to(torch.int64)
    if not k:
        return chosen - lse, ranks, None, None
    vals = parts[:, :, 2: 2 + k].permute(1, 0, 2).reshape(p, r * k)
    ids = parts[:, :, 2 + k:].permute(1, 0, 2).reshape(p, r * k).to(torch.int64)
    top_vals, top_ids = top_k(vals, k, ids=ids)
    return chosen - lse, ranks, top_ids, top_vals - lse[:, None]
