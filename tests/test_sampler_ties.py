"""Ties at a row's top-k cut-off: every token tied with the k-th value is kept and drawable,
and a row's kept set, probabilities and seeded draws do not depend on the other rows of its
batch (whose largest top-k sets how many of the best tokens the floor's topk returns). Bf16
logits upcast to fp32 tie often among the top 50."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiollm.config import LOGPROBS_MODES
from aiollm.kernels import sampling
from aiollm.kernels.sampling import row_keys
from aiollm.model import sampler
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

V = 64
T = 0.7
TIED = [3, 17, 40, 55]  # tied with each other at the row's second-best logit


def tied_row() -> torch.Tensor:
    """A row whose top_k=2 cut-off falls on four tied tokens, the rest well below."""
    g = torch.Generator().manual_seed(0)
    row = torch.rand(V, generator=g) * 2.0  # below 2
    row[60] = 5.0
    row[TIED] = 4.0
    return row


def st_for(top_k, seed, *, temperature=T, top_p=1.0, min_p=0.0, top_logprobs=-1,
           mode="raw_logprobs", step=0, vocab=V, device="cpu") -> SamplingTensors:
    b = len(top_k)
    col = lambda x, dt=np.float32: np.broadcast_to(np.asarray(x, dt), (b,)).copy()  # noqa: E731
    return SamplingTensors.from_numpy(
        temperature=col(temperature), top_p=col(top_p), top_k=col(top_k, np.int64),
        min_p=col(min_p), repetition_penalty=col(1.0), presence_penalty=col(0.0),
        frequency_penalty=col(0.0), seed=col(seed, np.int64), step=col(step, np.int64),
        top_logprobs=col(top_logprobs, np.int64), vocab_size=vocab, device=device,
        logprobs_mode=mode)


def threshold_draw(row: torch.Tensor, floor: float, seed: int, step: int = 0) -> int:
    """vLLM's form of top-k: every token >= the floor kept, then the same Gumbel race over
    the whole row (the same noise of (seed, step, id) the sampler uses)."""
    keys = torch.from_numpy(row_keys(np.array([seed]), np.array([step])))
    scale_floor = torch.tensor([[1.0 / T], [floor]])
    return int(sampling.gumbel_argmax_ref(row[None], scale_floor, keys,
                                          torch.arange(V)[None]).item())


@pytest.mark.parametrize("others", [[], [1], [10], [0, 30], [1, 2, 63]])
def test_tied_tokens_past_rank_k_are_drawn_whatever_the_batch(others):
    """Alone (a topk of 2) or beside a row of larger top_k, the row draws what the whole-row
    threshold draw does, so all four tied tokens are drawable. Once, alone it drew only 60
    and the tied token topk happened to keep; in a batch with top_k=10 all."""
    row = tied_row()
    mates = torch.randn(len(others), V, generator=torch.Generator().manual_seed(1))
    logits = torch.cat([row[None], mates])
    drawn = []
    for seed in range(300):
        st = st_for([2] + others, [seed] + [seed + 1000] * len(others))
        got = int(sample(logits, st).next_ids[0])
        assert got == threshold_draw(row, 4.0, seed), seed
        drawn.append(got)
    assert set(drawn) == {60, *TIED}


@pytest.mark.parametrize("mode", ["processed_logprobs", "processed_logits"])
def test_processed_row_keeps_every_tied_token_whatever_the_batch(mode):
    """The distribution drawn from, as processed logprobs report it: the best token and all
    four tied ones at softmax([5, 4, 4, 4, 4] / T), alone or beside a row of top_k 20."""
    row = tied_row()
    kept = torch.tensor([5.0, 4.0, 4.0, 4.0, 4.0]) / T
    want = kept.log_softmax(-1) if mode == "processed_logprobs" else kept
    mate = torch.randn(1, V, generator=torch.Generator().manual_seed(2))
    for logits, ks in [(row[None], [2]), (torch.cat([row[None], mate]), [2, 20]),
                       (torch.cat([mate, row[None]]), [20, 2])]:
        at = ks.index(2)
        out = sample(logits, st_for(ks, 7, top_logprobs=8, mode=mode))
        top = out.top_logprobs[at]
        finite = torch.isfinite(top)
        assert int(finite.sum()) == 5, top
        assert set(out.top_ids[at][finite].tolist()) == {60, *TIED}
        torch.testing.assert_close(top[finite], want)


def test_top_p_and_min_p_with_ties_do_not_depend_on_the_batch():
    """Top-p's mass over the k best ranks and min-p's floor are values of the row alone: a
    top-p that keeps the tie, one that cuts above it, a min-p that cuts above it."""
    row = tied_row()
    mates = torch.randn(2, V, generator=torch.Generator().manual_seed(3))
    cases = [(dict(top_p=0.95), {60, *TIED}),  # 60 holds ~0.80 of top-2's mass: tie kept
             (dict(top_p=0.5), {60}),
             (dict(min_p=0.5), {60})]  # tied tokens at e^(-1/T) ~ 0.24 of the best
    for over, allowed in cases:
        for seed in range(60):
            alone = sample(row[None], st_for([2], seed, **over)).next_ids[0].item()
            batch = sample(torch.cat([mates[:1], row[None], mates[1:]]),
                           st_for([30, 2, 5], [1, seed, 2], **over)).next_ids[1].item()
            assert alone == batch and alone in allowed, (over, seed)


def test_bf16_logits_draw_the_same_in_any_batch():
    """Rows of bf16-rounded logits (ties among the top 50 are common) draw the same seeded
    tokens from the same processed distribution alone as among rows of other top_k, a
    greedy row and a top-p row; some rows' cut-off ties reach past rank k, so a draw on
    the top k alone would differ from one beside a row of larger k."""
    g = torch.Generator().manual_seed(4)
    v, ks = 512, [7, 20, 50]
    kw = dict(step=0, vocab=v, mode="processed_logprobs")
    tied_past_k = 0
    for step in range(30):
        kw["step"] = step
        rows = (torch.randn(3, v, generator=g) * 1.5).bfloat16().float()
        alone = [sample(rows[i:i + 1], st_for([k], 11 + i, temperature=0.8, top_logprobs=64,
                                              **kw)) for i, k in enumerate(ks)]
        mates = torch.randn(3, v, generator=g)
        batch = sample(torch.cat([mates[:1], rows, mates[1:]]), st_for(
            [100] + ks + [2, 3], [5, 11, 12, 13, 6, 7], temperature=[0.0, 0.8, 0.8, 0.8, 1.1, 0.9],
            top_p=[1.0, 1.0, 1.0, 1.0, 0.9, 1.0], top_logprobs=[-1, 64, 64, 64, 0, -1], **kw))
        for i, one in enumerate(alone):
            assert batch.next_ids[1 + i] == one.next_ids[0], (step, i)
            torch.testing.assert_close(batch.top_logprobs[1 + i], one.top_logprobs[0])
            torch.testing.assert_close(batch.logprobs[1 + i], one.logprobs[0])
        top = rows.sort(dim=-1, descending=True).values
        floors = top[torch.arange(3), torch.tensor(ks) - 1]
        tied_past_k += int(((rows >= floors[:, None]).sum(-1) > torch.tensor(ks)).sum())
    assert tied_past_k  # a cut-off tied past rank k at least once


@pytest.mark.parametrize("mode", LOGPROBS_MODES)
def test_kernel_path_draws_tied_rows_as_the_reference(mode, monkeypatch):
    """The Triton row scan (on the GPU, or TRITON_INTERPRET=1 on the CPU) on a batch with a
    row whose cut-off ties past rank k, a top-k row and a greedy row: the reference's tokens
    and logprobs."""
    if sampling.triton is None:
        pytest.skip("triton is not installed")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = tied_row()
    mates = torch.randn(2, V, generator=torch.Generator().manual_seed(5))
    logits = torch.cat([row[None], mates]).to(device)
    kw = dict(top_logprobs=[3, 0, 2], mode=mode, temperature=[T, 1.0, 0.0], device=device)
    for path in (sampling.row_scan_ref, sampling.row_scan_triton):
        monkeypatch.setattr(sampler, "row_scan", path)
        out = [sample(logits, st_for([2, 2, 4], s, **kw)) for s in range(6)]
        if path is sampling.row_scan_ref:
            want = out
            assert len({o.next_ids[0].item() for o in out}) > 1  # the tied row draws
    for got, ref in zip(out, want):
        assert torch.equal(got.next_ids, ref.next_ids)
        torch.testing.assert_close(got.logprobs, ref.logprobs)
        torch.testing.assert_close(got.top_logprobs, ref.top_logprobs)


def test_a_cut_off_tied_at_minus_inf_draws_only_the_allowed_tokens():
    """A grammar (or allowed_token_ids) that leaves fewer than k tokens puts the row's
    cut-off at -inf, tied with all the masked tokens, which can never win the race: the
    row draws the same seeded tokens as the whole-row threshold draw, both allowed ones
    over the seeds, alone and beside a row whose cut-off ties past rank k."""
    allowed = [9, 60]  # top_k 3: the third is -inf, tied with every masked token
    masked = torch.full((V,), float("-inf"))
    masked[allowed] = tied_row()[allowed]
    words = np.zeros(V, dtype=bool)
    words[allowed] = True
    bits = torch.from_numpy((words.reshape(V // 32, 32).astype(np.uint64)
                             << np.arange(32, dtype=np.uint64)).sum(-1).astype(np.uint32)
                            .view(np.int32))
    mate = torch.randn(1, V, generator=torch.Generator().manual_seed(6))
    drawn = set()
    for seed in range(40):
        for logits, ks, at in [(masked[None], [3], 0),
                               (torch.cat([tied_row()[None], masked[None], mate]), [2, 3, 3], 1)]:
            st = st_for(ks, seed)
            st.allowed = bits.expand(len(ks), -1).clone()
            st.allowed[:at] = -1
            st.allowed[at + 1:] = -1
            got = int(sample(logits, st).next_ids[at])
            assert got == threshold_draw(masked, float("-inf"), seed), seed
            drawn.add(got)
    assert drawn == set(allowed)


@pytest.mark.parametrize("mode", LOGPROBS_MODES)
def test_top_logprobs_list_tied_tokens_in_ascending_id_whatever_the_batch(mode):
    """A row's top logprobs list with ties among its entries and at its last place (bf16
    logits tie often): equal values in ascending token id, and at the last place the lowest
    ids, as prompt logprobs list them (model/vocab_parallel_logprobs.top_k), alone or
    beside a row asking for more (the batch takes the top of its largest top_logprobs)."""
    row = tied_row()
    row[[8, 30]] = 5.0  # tied with the best, 60
    want_ids = [8, 30, 60, 3, 17]  # then 40 and 55, tied with 3 and 17 at the 5th place
    mate = torch.randn(1, V, generator=torch.Generator().manual_seed(8))
    for logits, lp, at in [(row[None], [5], 0), (torch.cat([mate, row[None]]), [20, 5], 1)]:
        out = sample(logits, st_for([-1] * len(lp), 3, temperature=1.0, top_logprobs=lp,
                                    mode=mode))
        assert out.top_ids[at][:5].tolist() == want_ids, out.top_ids[at]


def test_a_near_greedy_temperature_draws_the_same_in_any_batch():
    """At a temperature just above greedy (1e-5, 1e-4) tied logits scaled by 1/T swallow
    most of the noise in float32, so the race's best score is often tied too: the winner
    was the first tied one in scan order, the candidates' (topk's) alone and token id order
    on the whole row beside a top-p row (no top-k: every row races on its whole row), so
    a seeded draw depended on its batch (~2% of draws at 1e-5 with six tokens tied). Every
    row now races on its whole row, in token id order (h187)."""
    vocab = 512
    g = torch.Generator().manual_seed(4)
    mate = torch.randn(1, vocab, generator=g)
    differ = 0
    for seed in range(400):
        row = (torch.randn(vocab, generator=g) * 3).to(torch.bfloat16).float()
        row[torch.randperm(vocab, generator=g)[:6]] = 18.0  # tied at the top, as bf16 ties
        for temperature in (1e-5, 1e-4):
            alone = st_for([20], seed, temperature=temperature, vocab=vocab)
            beside = SamplingTensors.from_numpy(
                temperature=np.array([temperature, 1.0], np.float32),
                top_p=np.array([1.0, 0.9], np.float32), top_k=np.array([20, -1]),
                min_p=np.zeros(2, np.float32), repetition_penalty=np.ones(2, np.float32),
                presence_penalty=np.zeros(2, np.float32),
                frequency_penalty=np.zeros(2, np.float32), seed=np.array([seed, 1]),
                step=np.zeros(2, np.int64), top_logprobs=np.array([-1, -1]),
                vocab_size=vocab, device="cpu")
            drawn = int(sample(row[None], alone).next_ids[0])
            differ += drawn != int(sample(torch.cat([row[None], mate]), beside).next_ids[0])
            assert row[drawn] == 18.0
    assert differ == 0, differ
