"""Randomized batches under every --logprobs-mode: each row's tokens, logprobs, ranks and top
logprobs equal those of the same row sampled alone, whatever the rows around it ask (logprobs
or none, greedy or sampled, penalties, a min_tokens ban, logit_bias, an allowed-token mask),
and each equals a plain per-request reference of its mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiollm.config import LOGPROBS_MODES
from aiollm.kernels import sampling
from aiollm.model import sampler
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

V = 96
# where the Triton kernel runs: the GPU, or the interpreter on the CPU (tests/conftest.py)
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_rows(rng: np.random.Generator, b: int) -> dict:
    """Per-row columns of b random requests, each feature on about half of the rows."""
    def some(p, value, off):
        return np.where(rng.random(b) < p, value, off)
    temp = some(0.6, rng.uniform(0.3, 2.0, b), 0.0).astype(np.float32)
    history = rng.integers(0, V, (b, 6))
    # half the biased ids seen before, so that the bias and the penalties meet on a token
    # (their order then shows); min-p on rows with top-p, so that it cuts what top-p counts
    bias_ids = np.where(rng.random((b, 3)) < 0.5, history[:, :3], rng.integers(0, V, (b, 3)))
    top_p = some(0.3, rng.uniform(0.3, 0.95, b), 1.0).astype(np.float32)
    min_p = np.where((top_p < 1) & (rng.random(b) < 0.5), rng.uniform(0.05, 0.5, b),
                     some(0.2, rng.uniform(0.01, 0.3, b), 0.0)).astype(np.float32)
    return dict(
        temperature=temp,
        top_k=some(0.3, rng.integers(1, 20, b), -1),
        top_p=top_p, min_p=min_p,
        repetition_penalty=some(0.3, rng.uniform(0.5, 2.0, b), 1.0).astype(np.float32),
        presence_penalty=some(0.2, rng.uniform(-1, 1, b), 0.0).astype(np.float32),
        frequency_penalty=some(0.2, rng.uniform(-1, 1, b), 0.0).astype(np.float32),
        seed=rng.integers(0, 1 << 40, b), step=rng.integers(0, 4, b),
        min_tokens=some(0.3, 5, 0).astype(np.int64),
        top_logprobs=rng.choice([-1, -1, 0, 1, 5, 20], b),
        history=history, stop=rng.integers(0, V, (b, 2)),
        bias=some(0.3, 1, 0).astype(bool), bias_ids=bias_ids,
        bias_vals=rng.uniform(-5, 5, (b, 3)).astype(np.float32),
        masked=some(0.3, 1, 0).astype(bool), allowed=rng.random((b, V)) < 0.4)


def build(rows: dict, idx, mode: str, constrain: bool, device: str = "cpu"):
    """SamplingTensors of rows[idx] under `mode` on `device`; the bias and mask set as the
    engine sets a step's constraints (all-zero bias and all-ones words on rows without
    them)."""
    c = {k: v[idx] for k, v in rows.items()}
    b = len(c["temperature"])
    st = SamplingTensors.from_numpy(
        temperature=c["temperature"], top_p=c["top_p"], top_k=c["top_k"], min_p=c["min_p"],
        repetition_penalty=c["repetition_penalty"], presence_penalty=c["presence_penalty"],
        frequency_penalty=c["frequency_penalty"], seed=c["seed"], step=c["step"],
        top_logprobs=c["top_logprobs"], vocab_size=V, device=device, token_ids=c["history"],
        prompt_lens=np.full(b, 3, np.int64), min_tokens=c["min_tokens"],
        stop_ids=c["stop"], logprobs_mode=mode)
    if constrain and (c["bias"].any() or c["masked"].any()):
        st.bias_ids = torch.from_numpy(c["bias_ids"]).to(device)
        st.bias = torch.from_numpy(np.where(c["bias"][:, None], c["bias_vals"], 0.0)
                                   .astype(np.float32)).to(device)
        allowed = np.where(c["masked"][:, None], c["allowed"], True)
        words = allowed.reshape(b, V // 32, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)
        words = words.sum(-1).astype(np.uint32).view(np.int32)
        st.allowed = torch.from_numpy(words).to(device)
    return st


def reference_row(logits: torch.Tensor, rows: dict, i: int, mode: str,
                  constrain: bool) -> torch.Tensor:
    """Row i's reported values [V] by plain per-request Python: raw, the model's; processed,
    the ban, the bias and the mask, then the penalties, then on a sampled row the temperature
    and the top-k, min-p and top-p (over what those two keep) cut at -inf."""
    x = logits[i].clone()
    if mode.startswith("processed"):
        if rows["step"][i] < rows["min_tokens"][i]:
            x[rows["stop"][i]] = float("-inf")
        if constrain and rows["bias"][i]:
            for tok, v in zip(rows["bias_ids"][i].tolist(), rows["bias_vals"][i].tolist()):
                x[tok] += v
        if constrain and rows["masked"][i]:
            x[torch.from_numpy(~rows["allowed"][i])] = float("-inf")
        hist = rows["history"][i].tolist()  # the penalties after the bias, as vLLM's
        rep = float(rows["repetition_penalty"][i])
        for tok in set(hist):
            x[tok] = x[tok] / rep if x[tok] > 0 else x[tok] * rep
        out = hist[3:]
        for tok in set(out):
            x[tok] -= (float(rows["frequency_penalty"][i]) * out.count(tok)
                       + float(rows["presence_penalty"][i]))
        t = float(rows["temperature"][i])
        if t >= 1e-5:
            cut = torch.zeros(V, dtype=torch.bool)
            k = int(rows["top_k"][i])
            if k > 0:
                cut |= x < x.topk(k).values[-1]
            mp = float(rows["min_p"][i])  # min-p before top-p, as vLLM V1 applies it
            if mp > 0:
                cut |= (x - x.max()) / t < np.log(mp)
            p = float(rows["top_p"][i])
            if p < 1:
                probs, order = (x / t).masked_fill(cut, float("-inf")).softmax(-1).sort(
                    descending=True)
                before = probs.cumsum(-1) - probs
                drop = order[before >= p]
                cut[drop[drop != order[0]]] = True
            x = (x / t).masked_fill(cut, float("-inf"))
    return x.log_softmax(-1) if mode.endswith("logprobs") else x


def random_batch(trial: int) -> tuple[int, dict, torch.Tensor, bool]:
    """Trial `trial`'s batch: (rows, their parameters, logits [B, V] fp32, whether the
    rows are constrained by bias and masks)."""
    rng = np.random.default_rng(trial)
    b = int(rng.integers(2, 9))
    rows = random_rows(rng, b)
    logits = torch.from_numpy(rng.normal(0, 3, (b, V)).astype(np.float32))
    return b, rows, logits, trial % 3 != 0


@pytest.mark.parametrize("mode", LOGPROBS_MODES)
def test_each_row_reports_what_it_reports_alone(mode):
    for trial in range(12):
        b, rows, logits, constrain = random_batch(trial)
        out = sample(logits, build(rows, slice(None), mode, constrain))
        base = sample(logits, build(rows, slice(None), "raw_logprobs", constrain))
        assert torch.equal(out.next_ids, base.next_ids), trial  # the mode draws the same
        for i in range(b):
            n = int(rows["top_logprobs"][i])
            alone = sample(logits[i:i + 1], build(rows, slice(i, i + 1), mode, constrain))
            assert out.next_ids[i] == alone.next_ids[0], (trial, i)
            if n < 0:
                continue
            where = (trial, i, mode)
            assert torch.isfinite(out.logprobs[i]), where
            torch.testing.assert_close(out.logprobs[i], alone.logprobs[0], msg=str(where))
            assert out.ranks[i] == alone.ranks[0], where
            ref_row = reference_row(logits, rows, i, mode, constrain)
            want = ref_row[out.next_ids[i]]
            torch.testing.assert_close(out.logprobs[i], want, msg=str(where))
            assert out.ranks[i] == int((ref_row >= want).sum()), where
            if n:
                got, ref = out.top_logprobs[i, :n], alone.top_logprobs[0, :n]
                torch.testing.assert_close(got, ref, msg=str(where))
                finite = torch.isfinite(ref)
                assert torch.equal(out.top_ids[i, :n][finite], alone.top_ids[0, :n][finite])


@pytest.mark.parametrize("mode", LOGPROBS_MODES)
def test_kernel_path_gives_each_row_what_the_reference_does(mode, monkeypatch):
    """The random batches through the Triton row scan (on the GPU, or TRITON_INTERPRET=1 on
    the CPU): the same tokens, logprobs, ranks and top lists as the PyTorch reference, with
    rows drawn over a top-k or top-p floor and rows drawn without one alike."""
    if sampling.triton is None:
        pytest.skip("triton is not installed")
    paths = set()
    for trial in range(12):
        _, rows, logits, constrain = random_batch(trial)
        logits = logits.to(KERNEL_DEVICE)
        monkeypatch.setattr(sampler, "row_scan", sampling.row_scan_ref)
        want = sample(logits, build(rows, slice(None), mode, constrain, KERNEL_DEVICE))
        monkeypatch.setattr(sampler, "row_scan", sampling.row_scan_triton)
        st = build(rows, slice(None), mode, constrain, KERNEL_DEVICE)
        paths.add(st.trunc_width > 0)
        got = sample(logits, st)
        assert torch.equal(got.next_ids, want.next_ids), trial
        asked = torch.from_numpy(rows["top_logprobs"] >= 0).to(KERNEL_DEVICE)
        if not asked.any():
            continue
        torch.testing.assert_close(got.logprobs[asked], want.logprobs[asked], msg=str(trial))
        assert torch.equal(got.ranks[asked], want.ranks[asked]), trial
        if want.top_logprobs is not None:
            torch.testing.assert_close(got.top_logprobs[asked], want.top_logprobs[asked])
            assert torch.equal(got.top_ids[asked], want.top_ids[asked]), trial
    assert paths == {False, True}  # batches with a topk or sort for the floor and without

def test_processed_row_is_what_the_draw_took_when_the_floor_ties():
    """A token tied with the k-th logit is kept (as vLLM's top-k keeps it), also past rank
    k: processed logprobs list all three at softmax([5, 4, 4]) and every one is drawn.
    Once the draw left the tied token past the top max(k) out, and processed logprobs
    listed 2 (0.73/0.27) so as to match it. Bf16 logits tie often."""
    row = torch.tensor([[0.0, 4.0, 4.0, 0, 0, 0, 0, 5.0]])
    one = lambda x: np.full(1, x)  # noqa: E731
    drawn = set()
    for seed in range(64):
        st = SamplingTensors.from_numpy(
            temperature=one(1.0).astype(np.float32), top_p=one(1.0).astype(np.float32),
            top_k=one(2), min_p=one(0.0).astype(np.float32),
            repetition_penalty=one(1.0).astype(np.float32),
            presence_penalty=one(0.0).astype(np.float32),
            frequency_penalty=one(0.0).astype(np.float32), seed=one(seed),
            step=one(0), top_logprobs=one(5), vocab_size=8, device="cpu",
            logprobs_mode="processed_logprobs")
        out = sample(row, st)
        drawn.add(out.next_ids.item())
        finite = torch.isfinite(out.top_logprobs[0])
        assert int(finite.sum()) == 3, out.top_logprobs
        assert set(out.top_ids[0][finite].tolist()) == {1, 2, 7}
        torch.testing.assert_close(out.top_logprobs[0][finite],
                                   torch.tensor([5.0, 4.0, 4.0]).log_softmax(-1))
    assert drawn == {1, 2, 7}
