"""Prompt scores from a vocabulary split into parts (model/vocab_parallel_logprobs.py) against
the whole row's log-softmax, on float32 CPU logits with many ties (small integers): equal
logprobs, ranks and top-k lists, ties in ascending token id, whatever the split."""

from __future__ import annotations

import pytest
import torch

from aiollm.model.prompt_logprobs import PromptScoring
from aiollm.model.vocab_parallel_logprobs import combine, part_summary, target_logits


def int_case(vocab: int, positions: int = 40, hidden: int = 8, seed: int = 0):
    """(hidden [P, H], lm_head [V, H], targets [P]): small integers, so that every logit is
    an exact integer in float32 (the same whichever rows a matmul computes) and many tie."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(-2, 3, (positions, hidden), generator=g).float()
    w = torch.randint(-1, 2, (vocab, hidden), generator=g).float()
    targets = torch.randint(0, vocab, (positions,), generator=g)
    return h, w, targets


def reference_scores(logits: torch.Tensor, targets: torch.Tensor, k: int):
    """The whole rows' scores: the top-k a stable sort's first k (equal logits in
    ascending token id)."""
    lse = logits.logsumexp(dim=-1)
    chosen = logits.gather(1, targets[:, None]).squeeze(1)
    # vLLM's rank: the tokens at least as likely as the target, itself included (ties
    # share the worse rank)
    ranks = (logits >= chosen[:, None]).sum(dim=-1)
    vals, ids = logits.sort(dim=-1, descending=True, stable=True)
    k = min(k, logits.shape[1])
    return chosen - lse, ranks, ids[:, :k], vals[:, :k] - lse[:, None]


@pytest.mark.parametrize("vocab,k", [(50, 5), (50, 20), (12, 20)])
def test_one_rank_orders_ties_by_token_id(vocab, k):
    """One rank's prompt top-k came from torch.topk, which on the CPU orders equal logits
    arbitrarily (and keeps arbitrary ones of those equal at the k-th place), and asking for
    more alternatives than the vocabulary has failed the step. Equal logits now come in
    ascending token id, and a vocabulary smaller than k gives all of it."""
    h, w, targets = int_case(vocab)
    sc = PromptScoring(torch.arange(len(h)), targets, k, [])
    sc.compute(h, w)
    lp, ranks, ids, top = reference_scores(h @ w.t(), targets, k)
    assert torch.equal(sc.top_ids, ids) and torch.equal(sc.ranks, ranks)
    assert torch.equal(sc.logprobs, lp) and torch.equal(sc.top_logprobs, top)


@pytest.mark.parametrize("vocab,ranks", [(161, 2), (29, 2), (37, 3), (64, 4), (4, 3)])
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_parts_combine_into_whole_rows(vocab, ranks, k):
    """Parts padded as the model's shards are (the last ones' tail rows padding, here
    logits larger than any real one, which must not count), parts narrower than k (29 over
    2, k 20), a part with no tokens at all (4 over 3), targets at every part's first and
    last token: the parts' summaries combine into the whole rows' scores."""
    h, w, targets = int_case(vocab, seed=vocab + ranks)
    targets = boundary_targets(targets, vocab, ranks)
    width = -(-vocab // ranks)
    logits = h @ w.t()
    padded = torch.cat([logits, torch.full((len(h), ranks * width - vocab), 100.0)], dim=1)
    parts = [padded[:, r * width: (r + 1) * width].clone() for r in range(ranks)]
    chosen = sum(target_logits(p, targets, r * width) for r, p in enumerate(parts))
    k_eff = min(k, vocab)
    summaries = torch.stack([part_summary(p, chosen, k_eff, r * width, vocab)
                             for r, p in enumerate(parts)])
    assert summaries.shape == (ranks, len(h), 2 + 2 * k_eff)
    lp, rk, ids, top = combine(summaries, chosen, k_eff)
    want = reference_scores(logits, targets, k)
    assert torch.equal(rk, want[1])
    assert torch.allclose(lp, want[0], atol=1e-5, rtol=0)
    if k:
        assert torch.equal(ids, want[2])
        assert torch.allclose(top, want[3], atol=1e-5, rtol=0)
    else:
        assert ids is None and top is None


# vocabularies over 2 ranks: parts of 15 (the second 14 and a padding row) and of 81
VOCABS = [29, 161]
KS = [0, 1, 5, 20]


def score_on_rank(rank: int, ranks: int, init: str, out: str) -> None:
    """A process of a gloo group of `ranks`: for each vocabulary of VOCABS, score
    int_case(vocab, 300) (two blocks of positions) with PromptScoring on this rank's shard
    of the LM head, padded as the model's are (the padding rows random, large), for each
    top-k of KS; rank 0 saves the results, a list per vocabulary of (logprobs, ranks, top
    ids, top logprobs) per k, to `out`. (tests/test_tensor_parallel_scores.py runs it;
    here so that the spawned processes import no more than it needs.)"""
    import torch.distributed as dist

    from aiollm.distributed.group import TensorParallel
    from aiollm.model.parallel import VocabPart

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=ranks)
    try:
        tp = TensorParallel(rank, ranks, torch.device("cpu"))
        results = []
        for vocab in VOCABS:
            h, w, targets = int_case(vocab, positions=300, seed=vocab)
            width = -(-vocab // ranks)
            start = rank * width
            shard = torch.randint(-4, 5, (width, w.shape[1]),
                                  generator=torch.Generator().manual_seed(rank)).float() * 3
            real = w[start: start + width]
            shard[: len(real)] = real
            case = []
            for k in KS:
                sc = PromptScoring(torch.arange(len(h)),
                                   boundary_targets(targets, vocab, ranks), k, [],
                                   results=rank == 0)
                sc.compute(h, shard, VocabPart(start, vocab, tp))
                case.append((sc.logprobs, sc.ranks, sc.top_ids, sc.top_logprobs))
            results.append(case)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def boundary_targets(targets: torch.Tensor, vocab: int, ranks: int) -> torch.Tensor:
    """targets with its first entries replaced by the first and last token of each part
    of `vocab` over `ranks` (and the token before each part)."""
    width = -(-vocab // ranks)
    firsts = [min(r * width, vocab - 1) for r in range(ranks)]
    edges = sorted({t for f in firsts for t in (f, f - 1, f + width - 1) if 0 <= t < vocab})
    targets = targets.clone()
    targets[: len(edges)] = torch.tensor(edges)
    return targets
