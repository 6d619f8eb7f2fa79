"""The sampler's logprobs modes (vLLM's --logprobs-mode) against plain per-row references:
each mode reports its row (raw: the model's; processed: the one the token was drawn from),
the draw itself is the same in every mode, and the kernel path agrees with the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiollm.config import LOGPROBS_MODES, EngineConfig
from aiollm.kernels import sampling
from aiollm.model import sampler
from aiollm.model.sampler import sample
from aiollm.model.sampling_tensors import SamplingTensors

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B, V = 6, 64
HISTORY = [3, 9, 9, 17]  # row 0's prompt + output tokens (repetition penalty 2)
BANNED = [5, 11]  # row 1: eos and a stop id, under min_tokens
BIAS = {7: 4.0, 20: -3.0}  # row 3's logit_bias
ALLOWED = list(range(10, 40))  # row 4's allowed tokens (a grammar's or allowed_token_ids)
TEMPERATURE = [0.0, 0.0, 0.7, 1.5, 1.0, 0.5]
TOP_K, TOP_P, MIN_P = [-1, -1, 5, -1, -1, -1], [1, 1, 1, 0.8, 1, 1], [0, 0, 0, 0, 0, 0.1]
TOP_LOGPROBS = [3, 2, 4, 1, 0, -1]  # row 5 asks for none


def batch(mode: str, device: str, seed: int = 0):
    """Random logits [B, V] and the SamplingTensors of the rows above under `mode`, with
    the bias and allowed-token mask set as the engine sets a step's constraints."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g) * 3).to(device)
    history = np.full((B, len(HISTORY)), -1, dtype=np.int64)
    history[0] = HISTORY
    rep = np.ones(B, np.float32)
    rep[0] = 2.0
    st = SamplingTensors.from_numpy(
        temperature=np.array(TEMPERATURE, np.float32), top_p=np.array(TOP_P, np.float32),
        top_k=np.array(TOP_K), min_p=np.array(MIN_P, np.float32), repetition_penalty=rep,
        presence_penalty=np.zeros(B, np.float32), frequency_penalty=np.zeros(B, np.float32),
        seed=np.arange(B) + 100 * seed, step=np.zeros(B, np.int64),
        top_logprobs=np.array(TOP_LOGPROBS), vocab_size=V, device=device, token_ids=history,
        prompt_lens=np.full(B, 2, np.int64), min_tokens=np.array([0, 3, 0, 0, 0, 0]),
        stop_ids=np.tile(np.array(BANNED), (B, 1)), logprobs_mode=mode)  # row 1 under it
    bias_ids = torch.zeros(B, len(BIAS), dtype=torch.int64)
    bias = torch.zeros(B, len(BIAS))
    bias_ids[3], bias[3] = torch.tensor(list(BIAS)), torch.tensor(list(BIAS.values()))
    allowed = np.ones((B, V), dtype=bool)
    allowed[4] = False
    allowed[4, ALLOWED] = True
    st.bias_ids, st.bias = bias_ids.to(device), bias.to(device)
    st.allowed = bitmask(allowed).to(device)
    return logits, st


def bitmask(allowed: np.ndarray) -> torch.Tensor:
    """xgrammar's bitmask [B, V / 32] int32 of allowed [B, V] bool: bit t % 32 of word
    t // 32 set where token t is allowed."""
    b = allowed.shape[0]
    words = (allowed.reshape(b, V // 32, 32).astype(np.uint64)
             << np.arange(32, dtype=np.uint64))
    return torch.from_numpy(words.sum(-1).astype(np.uint32).view(np.int32))


def processed_rows(logits: torch.Tensor) -> torch.Tensor:
    """Per row, by hand: the penalty, ban, bias and mask (what the draw's argmax and
    temperature see), then, on sampled rows, the temperature and truncation."""
    x = logits.cpu().clone()
    for t in set(HISTORY):
        x[0, t] = x[0, t] / 2 if x[0, t] > 0 else x[0, t] * 2
    x[1, BANNED] = float("-inf")
    for t, b in BIAS.items():
        x[3, t] += b
    keep4 = torch.zeros(V, dtype=torch.bool)
    keep4[ALLOWED] = True
    x[4, ~keep4] = float("-inf")
    out = x.clone()
    for i, temp in enumerate(TEMPERATURE):
        if temp == 0:
            continue
        row = x[i] / temp
        cut = torch.zeros(V, dtype=torch.bool)
        if TOP_K[i] > 0:
            cut |= x[i] < x[i].topk(TOP_K[i]).values[-1]
        if TOP_P[i] < 1:
            probs, order = row.softmax(-1).sort(descending=True)
            before = probs.cumsum(-1) - probs
            cut[order[before >= TOP_P[i]]] = True
        if MIN_P[i] > 0:
            probs = row.softmax(-1)
            cut |= probs < MIN_P[i] * probs.max()
        out[i] = row.masked_fill(cut, float("-inf"))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", LOGPROBS_MODES)
def test_each_mode_reports_its_row_and_draws_the_same_tokens(mode, device):
    for seed in range(3):
        logits, st = batch(mode, device, seed)
        out = sample(logits, st)
        base = sample(*batch("raw_logprobs", device, seed))
        assert torch.equal(out.next_ids, base.next_ids)  # the mode changes no draw
        row = logits.cpu() if mode.startswith("raw") else processed_rows(logits)
        values = row.log_softmax(-1) if mode.endswith("logprobs") else row
        ids = out.next_ids.cpu()
        asked = [i for i, n in enumerate(TOP_LOGPROBS) if n >= 0]
        chosen = values.gather(1, ids[:, None]).squeeze(1)
        assert torch.isfinite(chosen).all()
        torch.testing.assert_close(out.logprobs.cpu()[asked], chosen[asked])
        ranks = (values >= chosen[:, None]).sum(-1)
        assert out.ranks.cpu()[asked].tolist() == ranks[asked].tolist()
        top_vals, top_ids = values.topk(4, dim=-1)
        for i in asked:
            n = TOP_LOGPROBS[i]
            torch.testing.assert_close(out.top_logprobs.cpu()[i, :n], top_vals[i, :n])
            finite = torch.isfinite(top_vals[i, :n])  # ties at -inf come in any order
            assert out.top_ids.cpu()[i, :n][finite].tolist() == top_ids[i, :n][finite].tolist()


def test_raw_logprobs_list_what_the_request_forbids():
    """Under raw logprobs a banned, masked or penalised token keeps the model's logprob and
    can be listed, as in vLLM; under processed ones it is -inf (never listed by the API)."""
    logits, st = batch("raw_logprobs", "cpu")
    logits[1, BANNED[0]] = logits[4, 0] = 50.0  # the model's favourites, forbidden
    raw = sample(logits, st)
    assert raw.top_ids[1, 0].item() == BANNED[0] and raw.top_ids[4, 0].item() == 0
    assert raw.top_logprobs[1, 0].item() > -1e-3
    assert raw.ranks[1].item() > 1 and raw.ranks[4].item() > 1
    _, st = batch("processed_logprobs", "cpu")
    processed = sample(logits, st)
    assert torch.equal(processed.next_ids, raw.next_ids)
    assert BANNED[0] not in processed.top_ids[1, :2].tolist()
    assert processed.ranks[1].item() == 1  # greedy: the most likely of its processed row


@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits"])
def test_raw_rows_are_masked_by_a_grammar_not_by_allowed_token_ids(mode):
    """vLLM V1's model runner applies a grammar's bitmask to the logits before its sampler
    takes the raw ones; allowed_token_ids' mask, bans, logit_bias and penalties come after.
    So under a raw mode a token the grammar forbids is -inf (listed at -9999.0, the
    chosen token's logprob renormalised over what the grammar allows), and one only
    allowed_token_ids forbids keeps the model's value. Ours took the raw row before both.
    Row 4: a grammar allowing ALLOWED; then row 4 with allowed_token_ids 20..29 on top of
    its grammar, and row 2 with allowed_token_ids 0..9 alone (the step's bitmask ANDs a
    row's grammar and allowed ids; st.grammar is the grammar's alone)."""
    logits, st = batch(mode, "cpu")
    logits[4, 0] = 50.0  # the model's favourite, which the grammar forbids
    grammar = np.ones((B, V), dtype=bool)
    grammar[4] = False
    grammar[4, ALLOWED] = True
    st.grammar = st.allowed  # a grammar alone: the step's bitmask is the grammar's

    def raw_row(i: int, masked: bool) -> torch.Tensor:
        row = logits[i].masked_fill(torch.from_numpy(~grammar[i]), float("-inf")) \
            if masked else logits[i]
        return row.log_softmax(-1) if mode == "raw_logprobs" else row

    out = sample(logits, st)
    want = raw_row(4, True)
    assert out.logprobs[4].item() == pytest.approx(want[out.next_ids[4]].item(), abs=1e-5)
    assert out.ranks[4].item() == int((want >= want[out.next_ids[4]]).sum())
    assert set(out.top_ids[4].tolist()) <= set(ALLOWED)
    torch.testing.assert_close(out.top_logprobs[4], want.topk(4).values)

    ids = np.zeros((B, V), dtype=bool)
    ids[4, 20:30] = ids[2, :10] = True
    ids[[0, 1, 3, 5]] = True
    st.allowed, st.grammar = bitmask(grammar & ids), bitmask(grammar)
    out = sample(logits, st)
    assert 20 <= out.next_ids[4].item() < 30 and 0 <= out.next_ids[2].item() < 10
    for i, masked in ((4, True), (2, False)):
        want = raw_row(i, masked)
        assert out.logprobs[i].item() == pytest.approx(want[out.next_ids[i]].item(),
                                                       abs=1e-5), i
        assert out.ranks[i].item() == int((want >= want[out.next_ids[i]]).sum()), i
        torch.testing.assert_close(out.top_logprobs[i], want.topk(4).values)
    assert set(out.top_ids[4].tolist()) <= set(ALLOWED)
    # allowed_token_ids do not mask the raw row: it lists tokens they forbid
    assert any(t >= 10 for t in out.top_ids[2].tolist())


def test_kernel_path_agrees_with_the_reference(monkeypatch):
    """sample() through the Triton row scan (under TRITON_INTERPRET=1 on the CPU) gives the
    reference path's tokens, logprobs and ranks in every mode, with row 4's mask a
    grammar's (raw rows masked by it) or allowed_token_ids'."""
    if sampling.triton is None:
        pytest.skip("triton is not installed")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def case(mode: str, grammar: bool):
        logits, st = batch(mode, device)
        st.grammar = st.allowed if grammar else None
        return logits, st

    cases = [(m, g) for m in LOGPROBS_MODES for g in (False, True)]
    want = {c: sample(*case(*c)) for c in cases}
    monkeypatch.setattr(sampler, "row_scan", sampling.row_scan_triton)
    for c in cases:
        got = sample(*case(*c))
        assert torch.equal(got.next_ids, want[c].next_ids)
        asked = [i for i, n in enumerate(TOP_LOGPROBS) if n >= 0]
        torch.testing.assert_close(got.logprobs[asked], want[c].logprobs[asked])
        assert torch.equal(got.ranks[asked], want[c].ranks[asked])


def test_rows_that_ask_decide_the_extra_pass():
    """The flags that let sample() reuse the draw's logsumexp: a penalty or temperature on
    a row that asked for no logprobs leaves them off; on one that asked it sets them."""
    def st(**cols):
        base = dict(temperature=np.ones(2, np.float32), top_p=np.ones(2, np.float32),
                    top_k=np.full(2, -1), min_p=np.zeros(2, np.float32),
                    repetition_penalty=np.ones(2, np.float32),
                    presence_penalty=np.zeros(2, np.float32),
                    frequency_penalty=np.zeros(2, np.float32), seed=np.arange(2),
                    step=np.zeros(2, np.int64), top_logprobs=np.array([0, -1]))
        base.update(cols)
        return SamplingTensors.from_numpy(**base, vocab_size=V, device="cpu",
                                          token_ids=np.zeros((2, 1), np.int64),
                                          prompt_lens=np.ones(2, np.int64))
    assert not st().lp_penalized and not st().lp_scaled
    other = st(repetition_penalty=np.array([1, 1.2], np.float32),
               temperature=np.array([1, 0.5], np.float32))
    assert not other.lp_penalized and not other.lp_scaled
    own = st(presence_penalty=np.array([0.5, 0], np.float32),
             top_p=np.array([0.9, 1], np.float32))
    assert own.lp_penalized and own.lp_scaled
    assert st(temperature=np.array([0, 1], np.float32), top_k=np.array([3, -1])).lp_scaled \
        is False  # a greedy row draws from its unscaled, untruncated row


def test_engine_config_names_the_option_and_its_values():
    with pytest.raises(ValueError, match="logprobs_mode must be one of raw_logprobs, "
                                         "raw_logits, processed_logprobs, processed_logits, "
                                         "got 'processed'"):
        EngineConfig(model=None, logprobs_mode="processed")
    assert EngineConfig(model=None).logprobs_mode == "raw_logprobs"
