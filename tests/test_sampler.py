"""The sampler against plain per-request references: greedy, truncation, penalties,
seeded reproducibility, the empirical distribution of draws, logprobs, min_tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aiollm.kernels import sampling
from aiollm.kernels.sampling import row_keys, uniform_noise
from aiollm.model.logit_masks import apply_bitmask_, mask_token_ids
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# where a Triton kernel runs: the GPU, or the interpreter on the CPU (tests/conftest.py)
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def params(b: int, vocab: int, device="cpu", **over) -> SamplingTensors:
    """SamplingTensors for b rows: defaults of SamplingParams, overridden per field by a
    scalar or a length-b sequence."""
    cols = dict(
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        seed=0,
        step=0,
        top_logprobs=0,
    )
    history = ("token_ids", "prompt_lens", "min_tokens", "stop_ids", "logprobs_mode")
    extra = {k: over.pop(k) for k in history if k in over}
    cols.update(over)
    arrays = {k: np.broadcast_to(np.asarray(v), (b,)).copy() for k, v in cols.items()}
    return SamplingTensors.from_numpy(**arrays, vocab_size=vocab, device=device, **extra)


def tv_distance(counts: np.ndarray, probs: np.ndarray) -> float:
    return 0.5 * float(np.abs(counts / counts.sum() - probs).sum())


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    n = counts.sum()
    keep = probs > 0
    assert counts[~keep].sum() == 0, "drew a token of probability 0"
    expected = n * probs[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum())


# 99.9% quantiles of chi-square for small degrees of freedom (the draws use fixed seeds, so
# a pass is deterministic; the bound only says the seeds are not special).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax(device):
    torch.manual_seed(0)
    logits = torch.randn(16, 1000, device=device) * 3
    st = params(16, 1000, device, temperature=0.0, seed=np.arange(16))
    out = sample(logits, st)
    assert torch.equal(out.next_ids, logits.argmax(-1))
    assert out.next_ids.dtype == torch.int64 and out.top_ids is None


def test_greedy_rows_in_a_mixed_batch_are_argmax():
    torch.manual_seed(1)
    logits = torch.randn(8, 500)
    temp = np.array([0, 1, 0, 0.7, 0, 1.3, 0, 1])
    st = params(8, 500, temperature=temp, top_k=[-1, 20, -1, -1, 5, -1, 1, -1], seed=np.arange(8))
    out = sample(logits, st)
    greedy = torch.from_numpy(temp == 0)
    assert torch.equal(out.next_ids[greedy], logits.argmax(-1)[greedy])


def test_top_k_one_and_tiny_top_p_are_greedy():
    torch.manual_seed(2)
    logits = torch.randn(32, 300) * 2
    for step in range(5):
        by_k = sample(logits, params(32, 300, top_k=1, seed=np.arange(32), step=step))
        by_p = sample(logits, params(32, 300, top_p=1e-6, seed=np.arange(32), step=step))
        assert torch.equal(by_k.next_ids, logits.argmax(-1))
        assert torch.equal(by_p.next_ids, logits.argmax(-1))


def draw_counts(logits_row: torch.Tensor, n: int, **over) -> np.ndarray:
    """Counts of n draws from one row: n copies of it, seeds 0..n-1, in one batch."""
    v = logits_row.shape[0]
    st = params(n, v, seed=np.arange(n), **over)
    ids = sample(logits_row.expand(n, v).contiguous(), st).next_ids
    return np.bincount(ids.numpy(), minlength=v)


def test_temperature_one_matches_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = logits.softmax(-1).numpy()
    counts = draw_counts(logits, 100_000)
    assert tv_distance(counts, probs) < 0.01
    assert chi_square(counts, probs) < CHI2_999[5]


def test_draws_over_steps_of_one_seed_match_softmax():
    logits = torch.tensor([1.0, 0.0, 0.5, -0.5, 0.2])
    n = 50_000
    st = params(n, 5, seed=7, step=np.arange(n))
    ids = sample(logits.expand(n, 5).contiguous(), st).next_ids
    counts = np.bincount(ids.numpy(), minlength=5)
    probs = logits.softmax(-1).numpy()
    assert tv_distance(counts, probs) < 0.01
    assert chi_square(counts, probs) < CHI2_999[4]


@pytest.mark.parametrize(
    "over, keep",
    [
        (dict(temperature=0.5), None),
        (dict(top_k=3), 3),
        (dict(top_p=0.8), "p"),
        (dict(top_k=4, top_p=0.7, temperature=1.5), "kp"),
    ],
)
def test_truncated_distributions(over, keep):
    logits = torch.tensor([1.5, 1.2, 0.3, 0.0, -0.4, -1.0, -2.0, 0.9])
    t = over.get("temperature", 1.0)
    scaled = logits / t
    order = torch.argsort(scaled, descending=True)
    mask = torch.zeros(8, dtype=torch.bool)
    k = over.get("top_k", 8)
    mask[order[:k]] = True
    if "top_p" in over:
        p = torch.where(mask, scaled, float("-inf")).softmax(-1)[order]
        before = torch.cumsum(p, 0) - p
        mask[order[before >= over["top_p"]]] = False
    probs = torch.where(mask, scaled, float("-inf")).softmax(-1).numpy()
    counts = draw_counts(logits, 60_000, **over)
    df = int((probs > 0).sum()) - 1
    assert tv_distance(counts, probs) < 0.012
    assert chi_square(counts, probs) < CHI2_999[df]


def test_mixed_truncation_in_one_batch():
    """Rows with top-k, with top-p and with neither share a batch (one draw over the full
    vocabulary with a per-row floor); each row keeps its own distribution."""
    logits = torch.tensor([1.5, 1.2, 0.3, 0.0, -0.4, -1.0])
    n = 30_000
    kinds = np.arange(3 * n) % 3
    st = params(3 * n, 6, seed=np.arange(3 * n), top_k=np.where(kinds == 0, 2, -1),
                top_p=np.where(kinds == 1, 0.6, 1.0))
    ids = sample(logits.expand(3 * n, 6).contiguous(), st).next_ids.numpy()
    full = logits.softmax(-1).numpy()
    top2 = np.array([full[0], full[1], 0, 0, 0, 0]) / (full[0] + full[1])
    for kind, probs in [(0, top2), (1, top2), (2, full)]:  # top-p 0.6 keeps two tokens here
        counts = np.bincount(ids[kinds == kind], minlength=6)
        assert tv_distance(counts, probs) < 0.012
        assert chi_square(counts, probs) < CHI2_999[int((probs > 0).sum()) - 1]


def test_min_p_keeps_only_tokens_above_the_threshold():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]))
    # min_p 0.3: threshold 0.12 keeps the first three, renormalised.
    counts = draw_counts(logits, 50_000, min_p=0.3)
    probs = np.array([0.4, 0.3, 0.15, 0.0, 0.0]) / 0.85
    assert counts[3:].sum() == 0
    assert tv_distance(counts, probs) < 0.01
    # min_p after temperature: at T=2 the probabilities flatten and all five pass 0.3.
    counts = draw_counts(logits, 20_000, min_p=0.3, temperature=2.0)
    assert (counts > 0).all()


def reference_penalties(logits, history, prompt_len, rep, pres, freq):
    """Plain per-request Python: HF repetition over prompt + output, OpenAI presence and
    frequency over the output."""
    out = logits.clone()
    for tok in set(history):
        x = out[tok].item()
        out[tok] = x / rep if x > 0 else x * rep
    output = history[prompt_len:]
    for tok in set(output):
        out[tok] -= freq * output.count(tok) + pres
    return out


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_penalties_match_a_per_request_reference(mode):
    """The draw follows the penalised logits; the logprobs are the model's own (raw, the
    default) or, processed, the penalised ones (greedy rows: no temperature to apply)."""
    rng = np.random.default_rng(3)
    b, v = 6, 40
    logits = torch.from_numpy(rng.normal(size=(b, v)).astype(np.float32)) * 3
    histories, prompt_lens = [], []
    for _ in range(b):
        n_prompt, n_out = rng.integers(0, 12), rng.integers(0, 15)
        histories.append([int(t) for t in rng.integers(0, v, size=n_prompt + n_out)])
        prompt_lens.append(int(n_prompt))
    width = max(len(h) for h in histories)
    token_ids = np.full((b, width), -1, dtype=np.int64)
    for i, h in enumerate(histories):
        token_ids[i, : len(h)] = h
    rep = np.array([1.0, 1.3, 0.8, 2.0, 1.0, 1.1])
    pres = np.array([0.0, 0.0, 0.5, -0.3, 1.0, 0.2])
    freq = np.array([0.0, 0.4, 0.0, 0.1, -0.5, 0.3])
    st = params(
        b, v, temperature=0.0, repetition_penalty=rep, presence_penalty=pres,
        frequency_penalty=freq, top_logprobs=v, token_ids=token_ids, prompt_lens=prompt_lens,
        logprobs_mode=mode,
    )
    out = sample(logits, st)
    for i in range(b):
        ref = reference_penalties(logits[i], histories[i], prompt_lens[i], rep[i], pres[i], freq[i])
        ref_lp = (ref if mode == "processed_logprobs" else logits[i]).log_softmax(-1)
        got = torch.empty(v).scatter_(0, out.top_ids[i], out.top_logprobs[i])
        torch.testing.assert_close(got, ref_lp, atol=1e-5, rtol=1e-5)
        assert out.next_ids[i].item() == ref.argmax().item()


def run_request(logits: torch.Tensor, row: int, batch_logits: torch.Tensor, cols: dict, steps: int):
    """Token ids that row `row` of a batch draws over `steps` steps."""
    b, v = batch_logits.shape
    batch_logits = batch_logits.clone()
    batch_logits[row] = logits
    got = []
    for step in range(steps):
        st = params(b, v, step=step, **cols)
        got.append(sample(batch_logits, st).next_ids[row].item())
    return got


def test_seeded_draws_do_not_depend_on_the_batch():
    torch.manual_seed(4)
    v = 256
    logits = torch.randn(v) * 2
    target = dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.01, seed=123456789)

    def cols_for(b, row, others):
        cols = {k: np.array([others[k][i % len(others[k])] for i in range(b)]) for k in others}
        for k, x in target.items():
            cols[k][row] = x
        return cols

    alone = run_request(logits, 0, torch.zeros(1, v), {k: [x] for k, x in target.items()}, 20)
    others = dict(
        temperature=[0.0, 1.0, 1.3, 0.5],
        top_k=[-1, 10, -1, 200],  # a row with top_k off forces the full-sort path
        top_p=[1.0, 0.9, 0.5, 1.0],
        min_p=[0.0, 0.0, 0.1, 0.0],
        seed=[1, 2, 3, 4],
    )
    for b, row in [(5, 0), (8, 3), (3, 2), (16, 15)]:
        mates = torch.randn(b, v)
        assert run_request(logits, row, mates, cols_for(b, row, others), 20) == alone
    assert len(set(alone)) > 3, "draws of successive steps should differ"
    reseeded = {**{k: [x] for k, x in target.items()}, "seed": [5]}
    other_seed = run_request(logits, 0, torch.zeros(1, v), reseeded, 20)
    assert other_seed != alone


def test_noise_is_uniform_and_depends_on_seed_step_and_id():
    ids = torch.arange(4096)[None, :]
    u = uniform_noise(torch.from_numpy(row_keys([0, 1, 0], [0, 0, 1])), ids)
    assert ((u > 0) & (u < 1)).all()
    hist = torch.histc(u[0], bins=8, min=0, max=1)
    assert (hist - 512).abs().max() < 100
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    # the same (seed, step) gives the same noise for the same ids, whatever the row
    again = uniform_noise(torch.from_numpy(row_keys([9, 1], [3, 0])), ids)
    assert torch.equal(again[1], u[1])
    extreme = row_keys([-1, 2**63 - 1, -(2**63), 0], [0, 0, 0, 2**40])
    assert extreme.dtype == np.int32 and len({tuple(c) for c in extreme.T}) == 4
    # neighbouring ids and steps are uncorrelated
    assert abs(np.corrcoef(u[0, :-1].numpy(), u[0, 1:].numpy())[0, 1]) < 0.05
    assert abs(np.corrcoef(u[0].numpy(), u[2].numpy())[0, 1]) < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_match_log_softmax(device):
    torch.manual_seed(5)
    logits = torch.randn(10, 700, device=device) * 4
    n_top = np.array([0, 1, 5, 0, 3, 20, 0, 0, 2, 1])
    st = params(10, 700, device, temperature=[0, 1, 0.6, 1, 0, 1, 2, 0, 1, 0.9],
                top_k=[-1, -1, 40, -1, -1, 100, -1, -1, 5, -1], seed=np.arange(10),
                top_logprobs=n_top)
    out = sample(logits, st)
    ref = logits.log_softmax(-1)
    torch.testing.assert_close(out.logprobs, ref.gather(1, out.next_ids[:, None]).squeeze(1))
    assert out.top_ids.shape == (10, 20) and out.top_logprobs.dtype == torch.float32
    top_ref, top_ids_ref = ref.topk(20, dim=-1)
    torch.testing.assert_close(out.top_logprobs, top_ref)
    assert torch.equal(out.top_ids, top_ids_ref)
    assert out.top_logprobs.exp().sum(-1).max().item() <= 1.0 + 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_chosen_tokens_rank_is_its_place_in_the_vocabulary(device):
    """The sampled token's rank (vLLM's Logprob.rank) was not computed: only its place in
    the top-k list was known. It is 1 + the tokens whose logit is above it, on the row its
    logprob comes from: 1 for greedy rows, also where the top-k list is empty."""
    torch.manual_seed(6)
    logits = torch.randn(6, 500, device=device) * 3
    st = params(6, 500, device, temperature=[0, 2, 2, 0, 3, 2], seed=np.arange(6),
                top_logprobs=[0, 0, 2, 0, 0, 5])
    out = sample(logits, st)
    chosen = logits.gather(1, out.next_ids[:, None])
    assert out.ranks.tolist() == (logits >= chosen).sum(-1).tolist()
    assert out.ranks[[0, 3]].tolist() == [1, 1]
    assert out.ranks.max().item() > 5  # a draw outside the top list has its rank too
    assert sample(logits, params(6, 500, device, top_logprobs=-1)).ranks is None


@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits", "processed_logprobs"])
def test_tied_tokens_share_the_worse_rank(mode):
    """vLLM V1 ranks the chosen token by the number of tokens at least as likely as it
    (itself included): tokens tied with it share the worse rank. Ours counted only those
    strictly more likely (+1), so a greedy pick tied with two others said rank 1, not 3."""
    logits = torch.tensor([[2.0, 0.5, 2.0, 2.0, -1.0], [0.0, 3.0, 1.0, 1.0, 1.0]])
    st = params(2, 5, temperature=0.0, top_logprobs=1, logprobs_mode=mode)
    out = sample(logits, st)
    assert out.next_ids.tolist() == [0, 1]
    assert out.ranks.tolist() == [3, 1]
    # a sampled token tied with others below the top: 1 above it, 3 equal to it
    for seed in range(40):
        st = params(1, 5, temperature=1.0, seed=seed, top_logprobs=1, logprobs_mode=mode)
        out = sample(logits[1:], st)
        if out.next_ids.item() in (2, 3, 4):
            assert out.ranks.item() == 4, seed
            break
    else:
        raise AssertionError("no seed drew a tied token")


def test_min_tokens_bans_stop_ids_until_reached():
    logits = torch.zeros(4, 10)
    logits[:, 2] = 10.0  # eos would win every time
    logits[:, 7] = 9.0  # a stop id, next best
    stop_ids = np.array([[2, 7, -1], [2, 7, -1], [2, -1, -1], [-1, -1, -1]])
    st = params(4, 10, temperature=0.0, step=[0, 5, 1, 0], min_tokens=[3, 3, 2, 1],
                stop_ids=stop_ids)
    out = sample(logits, st)
    assert out.next_ids.tolist() == [0, 2, 7, 2]  # banned, past min_tokens, eos only, no ids
    # raw logprobs (the default) are the model's: the banned ids keep theirs
    assert out.logprobs[0].item() == pytest.approx(-torch.logsumexp(logits[0], 0).item())
    # eos and the stop id are more likely on the model's row, 7 others tie with it (vLLM:
    # ties share the worse rank)
    assert out.ranks[0].item() == 10
    # processed: banned ids carry no probability; and the caller's logits are untouched
    st = params(4, 10, temperature=0.0, step=[0, 5, 1, 0], min_tokens=[3, 3, 2, 1],
                stop_ids=stop_ids, logprobs_mode="processed_logprobs")
    out = sample(logits, st)
    assert out.logprobs[0].item() == pytest.approx(-math.log(8))
    assert out.ranks[0].item() == 8  # the 8 tokens left, all tied
    assert logits[0, 2].item() == 10.0


def test_mask_token_ids_in_place():
    logits = torch.ones(3, 5)
    ids = torch.tensor([[0, 0, 4], [1, -1, -1], [3, 2, 1]])
    mask_token_ids(logits, ids, torch.tensor([True, True, False]))
    assert torch.isinf(logits[0, [0, 4]]).all() and torch.isfinite(logits[0, 1:4]).all()
    assert torch.isinf(logits[1, 1]) and torch.isfinite(logits[1, [0, 2, 3, 4]]).all()
    assert torch.equal(logits[2], torch.ones(5))


def test_from_table_reads_request_columns():
    from aiollm.native.request_table import RequestTable

    table = RequestTable(8)
    slots = np.array([table.alloc() for _ in range(3)], dtype=np.int32)
    for f, vals in dict(temperature=[0.0, 0.7, 1.0], top_k=[-1, 5, 1], top_p=[1.0, 0.5, 1.0],
                        seed=[11, 22, 33], output_len=[0, 4, 1], min_new_tokens=[2, 0, 0],
                        top_logprobs=[0, 3, 0], repetition_penalty=[1.0, 1.0, 1.0]).items():
        table.col(f)[slots] = vals
    table.set_stop_ids(int(slots[0]), [9])
    st = SamplingTensors.from_table(table, slots, vocab_size=16, device="cpu", eos_ids=[2])
    assert st.top_k.tolist() == [16, 5, 1] and st.max_top_logprobs == 3
    assert torch.equal(st.keys, torch.from_numpy(row_keys([11, 22, 33], [0, 4, 1])))
    assert st.is_greedy.tolist() == [True, False, False]
    assert st.ban_active.tolist() == [True, False, False]
    assert st.ban_ids[0].tolist()[:2] == [2, 9]
    logits = torch.zeros(3, 16)
    logits[:, 2] = 5.0
    logits[:, 9] = 4.0
    assert sample(logits, st).next_ids[0].item() not in (2, 9)


def test_min_tokens_bans_every_stop_id_of_a_request_past_the_records_8():
    """A request's stop ids past the 8 its table record holds are banned too while min_tokens
    are not out (they live on the host: RequestTable.stop_ids lists them all); a step with
    no row under min_tokens reads no stop id at all."""
    from aiollm.native.request_table import RequestTable

    table = RequestTable(4)
    slots = np.array([table.alloc() for _ in range(2)], dtype=np.int32)
    table.col("min_new_tokens")[slots] = [3, 0]
    table.col("temperature")[slots] = 0.0
    table.set_stop_ids(int(slots[0]), list(range(20, 32)))  # 12 ids: 28..31 on the host
    logits = torch.zeros(2, 40)
    logits[:, 31] = 5.0
    st = SamplingTensors.from_table(table, slots, vocab_size=40, device="cpu", eos_ids=[2])
    assert sample(logits, st).next_ids.tolist()[0] not in range(20, 32)
    assert sample(logits, st).next_ids.tolist()[1] == 31  # no min_tokens: not banned
    table.col("output_len")[slots[0]] = 3
    st = SamplingTensors.from_table(table, slots, vocab_size=40, device="cpu", eos_ids=[2])
    assert st.ban_ids is None and sample(logits, st).next_ids.tolist() == [31, 31]


@pytest.mark.parametrize(
    "b, c, broadcast",
    [(1, 3000, True), (5, 777, True), (4, 50, False), (3, 2048, False), (4, 5000, True)],
)
def test_triton_scan_matches_the_reference(b, c, broadcast):
    """The fused kernel (under TRITON_INTERPRET=1 on the CPU) against the reference, with
    rows whose floor keeps nothing (+inf: index 0) or only some of the kernel's blocks
    (the others skip the noise)."""

    if sampling.triton is None:
        pytest.skip("triton is not installed")
    device = KERNEL_DEVICE
    g = torch.Generator().manual_seed(c)
    values = torch.randn(b, c, generator=g) * 3
    values[0, :7] = float("-inf")  # banned ids
    values[-1, c // 2] = values[-1, c // 3] = 30.0  # a tie: the first index wins
    if broadcast:
        ids = torch.arange(c)[None, :]
    else:
        ids = torch.randperm(50_000, generator=g)[: b * c].view(b, c)
    scale_floor = torch.stack([torch.rand(b, generator=g) + 0.5, torch.randn(b, generator=g)])
    scale_floor[1, 0] = float("-inf")
    if b > 2:
        scale_floor[1, 1] = float("inf")
        values[2, : c // 2] -= 100.0  # kept only past the middle: (4, 5000)'s first block
        scale_floor[1, 2] = values[2, c // 2 :].amax() - 0.5  # has nothing to keep
    keys = torch.from_numpy(row_keys(np.arange(b) * 977 - 5, np.arange(b) + 3))
    args = [t.to(device) for t in (values, scale_floor, keys, ids)]
    want = sampling.row_scan_ref(*args)
    got = sampling.row_scan_triton(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    torch.testing.assert_close(got[1], want[1])
    only_stats = sampling.row_scan_triton(args[0])
    assert torch.equal(only_stats[0], want[0]) and only_stats[2] is None
    only_draw = sampling.row_scan_triton(*args, stats=False)
    assert torch.equal(only_draw[2], want[2]) and only_draw[1] is None


def test_all_greedy_without_logprobs_copies_nothing_and_takes_the_argmax():
    """The common decode batch (all greedy, no logprobs, nothing banned) skips the
    parameter tensors and the logprob pass, and picks what the full path picks."""
    torch.manual_seed(3)
    logits = torch.randn(5, 300) * 4
    fast = params(5, 300, temperature=0.0, top_logprobs=-1)
    assert fast.all_greedy and not fast.want_logprobs and fast.keys is None
    full = params(5, 300, temperature=0.0, top_logprobs=0)
    assert full.all_greedy and full.want_logprobs
    a, b = sample(logits, fast), sample(logits, full)
    assert a.logprobs is None and b.logprobs is not None
    assert torch.equal(a.next_ids, b.next_ids)
    assert torch.equal(a.next_ids, logits.argmax(dim=-1))
    # one row sampling, or a row under min_tokens, leaves the fast path
    assert not params(5, 300, temperature=[0, 0, 0, 0, 0.7], top_logprobs=-1).all_greedy
    banned = params(5, 300, temperature=0.0, top_logprobs=-1, min_tokens=np.full(5, 2),
                    stop_ids=np.full((5, 1), 7))
    assert banned.ban_ids is not None
    assert (sample(logits, banned).next_ids != 7).all()


@pytest.mark.parametrize("device", DEVICES)
def test_noise_is_below_one_so_a_draw_stays_in_the_allowed_set(device):
    """u = 1 would give a token the Gumbel noise +inf: an allowed token would win whatever its
    logit, and a disallowed one (-inf, masked by a grammar or top-k) would score NaN, which
    argmax picks. (seed 2136, step 0) hashes id 2399 to the top 24-bit value, whose u is
    (2**24 - 0.5) / 2**24: it must not round to 1 in float32."""
    keys = torch.from_numpy(row_keys([2136], [0]))
    ids = torch.arange(4096)[None, :]
    u = uniform_noise(keys, ids)
    assert u.max() < 1 and u[0, 2399] == u.max()
    masked = torch.full((1, 4096), float("-inf"))
    masked[0, 5], masked[0, 6] = 1.0, 2.0  # a grammar's mask: two tokens allowed
    peaked = torch.zeros(1, 4096)
    peaked[0, 7] = 60.0  # every other token has a probability below 1e-22
    for logits, allowed in ((masked, {5, 6}), (peaked, {7})):
        st = params(1, 4096, device, seed=2136, step=0)
        assert int(sample(logits.to(device), st).next_ids[0]) in allowed
        if sampling.triton is not None:  # the kernel's own noise
            kst = params(1, 4096, KERNEL_DEVICE, seed=2136, step=0)
            drawn = sampling.row_scan_triton(logits.to(KERNEL_DEVICE), kst.scale_floor,
                                             kst.keys, ids.to(KERNEL_DEVICE))[2]
            assert int(drawn[0]) in allowed


@pytest.mark.gpu
def test_the_gpu_bitmask_before_and_after_xgrammar_is_imported(monkeypatch):
    """On a GPU apply_bitmask_ runs the PyTorch reference until xgrammar is imported (its
    first import would hold the event loop), xgrammar's kernel after: both mask exactly the
    tokens whose bit is clear, as the CPU's reference does."""
    import sys

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    g = torch.Generator().manual_seed(0)
    vocab = 1000
    logits = torch.randn((5, vocab), generator=g)
    bitmask = torch.randint(-2**31, 2**31 - 1, (5, (vocab + 31) // 32), generator=g,
                            dtype=torch.int64).to(torch.int32)
    want = apply_bitmask_(logits.clone(), bitmask)
    assert torch.isinf(want).any() and torch.isfinite(want).any()
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "xgrammar", raising=False)
        before = apply_bitmask_(logits.cuda(), bitmask.cuda()).cpu()
    import xgrammar  # noqa: F401

    after = apply_bitmask_(logits.cuda(), bitmask.cuda()).cpu()
    assert torch.equal(before, want) and torch.equal(after, want)
