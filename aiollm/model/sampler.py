"""The sampler: next tokens and their logprobs for a whole batch in a few tensor ops.

Per-request parameters arrive as [B] tensors (SamplingTensors, built once per step from
columns of the request table); sample() has no per-request Python loop and no host sync,
so it runs as-is on CPU and CUDA and its shapes depend only on B, V and a few host ints.

Order of operations on each row:
  1. penalties on the raw logits: repetition (HF: over prompt + output tokens, positive
     logits divided, negative multiplied), then frequency and presence (OpenAI: over output
     tokens, subtracted);
  2. min_tokens: eos and stop ids banned (-inf) while a request is under its min_tokens;
  3. logprobs are taken here: log_softmax of these logits, before temperature and
     truncation, i.e. the model's distribution as the request's penalties shaped it
     (what OpenAI and vLLM report), with the chosen token's rank on the same row;
  4. greedy rows (temperature < 1e-5) take the argmax; for the others top-k, top-p (on
     temperature-scaled probabilities renormalised over the top-k set) and min-p (relative
     to the most likely token, after temperature) each keep a most-likely prefix of the
     sorted row, so together they reduce to one logit floor per row (ties at the floor
     are kept, as HF's top-k does);
  5. the draw is a Gumbel-max race over the tokens at or above the floor:
     argmax(logits / T + g), g = -log(-log(u)), which samples softmax(logits / T) exactly.
     When every sampled row has a top-k, only the top max(k) candidates are scanned.

The noise u is a counter-based hash of (seed, step, token id): keys of (seed, step) on the
host, then a 32-bit hash of (keys, id) per token on the device. A request's draw depends on
its own seed and step only: not on the batch around it, its row, the device's RNG state or
a torch.Generator. Unseeded requests get a random seed from the engine, so one code path
serves all. On CUDA one Triton pass over the logits gives the argmax, the logsumexp and
the draw together (aiollm.kernels.sampling.row_scan, beside its PyTorch reference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from aiollm.kernels.sampling import row_keys, row_scan
from aiollm.model.forward_batch import to_device

log = logging.getLogger(__name__)

GREEDY_EPS = 1e-5  # temperatures below this are greedy (dividing by them overflows)


@dataclass(slots=True)
class SampleResult:
    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] fp32: logprob of next_ids (None: no row asked)
    top_ids: torch.Tensor | None  # [B, K] int64, K = max top_logprobs in the batch
    top_logprobs: torch.Tensor | None  # [B, K] fp32
    # [B] int64: 1 + the number of tokens more likely than next_ids on the row the logprobs
    # come from (None: no row asked for logprobs)
    ranks: torch.Tensor | None = None


@dataclass(slots=True)
class SamplingTensors:
    """Per-request sampling parameters of one batch as [B] device tensors, plus host flags
    (computed from the numpy inputs, no sync) that let sample() skip unused stages. When
    every row is greedy with nothing to mask, the tensors are None: sample() reads none."""

    scale_floor: torch.Tensor  # [2, B] fp32: 1/temperature (1 on greedy rows), -inf
    top_p: torch.Tensor  # [B] fp32
    top_k: torch.Tensor  # [B] int32, vocab_size where off
    min_p_offset: torch.Tensor  # [B] fp32: temperature * log(min_p), -inf where off
    repetition_penalty: torch.Tensor  # [B] fp32
    presence_penalty: torch.Tensor  # [B] fp32
    frequency_penalty: torch.Tensor  # [B] fp32
    keys: torch.Tensor  # [2, B] int32: the noise keys of (seed, step), see row_keys
    is_greedy: torch.Tensor | None  # [B] bool, only when greedy and sampled rows mix
    all_greedy: bool
    any_greedy: bool
    use_top_p: bool
    use_min_p: bool
    trunc_width: int  # sorted prefix top-k/top-p need: 0 none, < V a topk, V a full sort
    draw_on_candidates: bool  # every sampled row has a top-k: draw among the trunc_width best
    max_top_logprobs: int
    want_logprobs: bool = True  # some row asked for logprobs (else sample() may skip them)
    # Token history, present only when some row uses a penalty.
    seen: torch.Tensor | None = None  # [B, V] bool: token in prompt or output
    output_counts: torch.Tensor | None = None  # [B, V] fp32: occurrences in the output
    # min_tokens: ids banned on rows still under their min_tokens (None when no row is).
    ban_ids: torch.Tensor | None = None  # [B, K] int64, -1 padding
    ban_active: torch.Tensor | None = None  # [B] bool
    # Constraints (engine/token_mask.py TokenMask), set once the step's grammars have advanced.
    allowed: torch.Tensor | None = None  # [B, ceil(V / 32)] int32 bitmask: bit t = t allowed
    bias_ids: torch.Tensor | None = None  # [B, K] int64 logit_bias ids (padding id 0, bias 0)
    bias: torch.Tensor | None = None  # [B, K] fp32

    @property
    def use_penalties(self) -> bool:
        return self.seen is not None

    @classmethod
    def from_numpy(
        cls,
        *,
        temperature: np.ndarray,
        top_p: np.ndarray,
        top_k: np.ndarray,
        min_p: np.ndarray,
        repetition_penalty: np.ndarray,
        presence_penalty: np.ndarray,
        frequency_penalty: np.ndarray,
        seed: np.ndarray,
        step: np.ndarray,
        top_logprobs: np.ndarray,
        vocab_size: int,
        device: torch.device | str,
        token_ids: np.ndarray | torch.Tensor | None = None,
        prompt_lens: np.ndarray | torch.Tensor | None = None,
        min_tokens: np.ndarray | None = None,
        stop_ids: np.ndarray | None = None,
    ) -> SamplingTensors:
        """Build from [B] arrays (request table columns; step = output_len).

        token_ids [B, L] (prompt then output tokens, -1 padding) and prompt_lens [B] are
        required only when some row has a penalty (see needs_history()); they are ignored
        otherwise. min_tokens [B] and stop_ids [B, K] (eos + stop ids, -1 padding) ban those
        ids on rows whose step < min_tokens.
        """
        b = len(temperature)
        want_logprobs = bool(np.count_nonzero(np.asarray(top_logprobs) >= 0))
        max_top = int(np.max(top_logprobs, initial=0))
        banning = min_tokens is not None and stop_ids is not None and bool(
            np.count_nonzero(np.asarray(step) < np.asarray(min_tokens)))
        if (not np.count_nonzero(np.asarray(temperature) >= GREEDY_EPS) and not banning
                and not needs_history(repetition_penalty, presence_penalty, frequency_penalty)):
            # every row greedy, nothing to mask: sample() reads no per-row parameter, so
            # nothing is copied to the device (the common case of a greedy decode batch)
            return cls(None, None, None, None, None, None, None, None, None, all_greedy=True,
                       any_greedy=True, use_top_p=False, use_min_p=False, trunc_width=0,
                       draw_on_candidates=False, max_top_logprobs=max_top,
                       want_logprobs=want_logprobs)
        # Host flags with few numpy calls: this runs once per step on the event loop.
        floats = np.empty((7, b), dtype=np.float32)
        floats[0] = temperature
        floats[1] = float("-inf")  # the draw's floor where nothing truncates
        floats[2] = top_p
        floats[3] = min_p
        floats[4] = repetition_penalty
        floats[5] = presence_penalty
        floats[6] = frequency_penalty
        ints = np.empty((4, b), dtype=np.int32)
        ints[0] = np.clip(top_k, -1, vocab_size)
        ints[2:] = row_keys(seed, step)
        temp, p, mp, k = floats[0], floats[2], floats[3], ints[0]
        greedy = temp < GREEDY_EPS
        ints[1] = greedy
        n_greedy = int(np.count_nonzero(greedy))
        k[k <= 0] = vocab_size
        use_top_p = use_min_p = on_candidates = False
        trunc_width = 0
        if n_greedy < b:
            sampled = ~greedy if n_greedy else slice(None)
            k_s = k[sampled]
            has_k, has_p = k_s < vocab_size, p[sampled] < 1.0
            use_top_p = bool(np.count_nonzero(has_p))
            use_min_p = bool(np.count_nonzero(mp[sampled] > 0.0))
            if use_top_p and np.count_nonzero(has_p & ~has_k):
                trunc_width = vocab_size  # top-p without top-k: a full sort
            elif np.count_nonzero(has_k):
                trunc_width = int(k_s[has_k].max())
            on_candidates = trunc_width > 0 and bool(has_k.all())
        temp[greedy] = 1.0
        with np.errstate(divide="ignore"):
            np.log(mp, out=mp)
        mp *= temp  # min-p in raw logits: logit >= max + T * log(min_p)
        np.reciprocal(temp, out=temp)
        # Two host-to-device copies for the whole parameter set.
        f, i = to_device(floats, device), to_device(ints, device)
        st = cls(
            scale_floor=f[0:2],
            top_p=f[2],
            min_p_offset=f[3],
            repetition_penalty=f[4],
            presence_penalty=f[5],
            frequency_penalty=f[6],
            top_k=i[0],
            keys=i[2:4],
            is_greedy=i[1] != 0 if 0 < n_greedy < b else None,
            all_greedy=n_greedy == b,
            any_greedy=n_greedy > 0,
            use_top_p=use_top_p,
            use_min_p=use_min_p,
            trunc_width=trunc_width,
            draw_on_candidates=on_candidates,
            max_top_logprobs=max_top,
            want_logprobs=want_logprobs,
        )
        if needs_history(floats[4], floats[5], floats[6]):
            if token_ids is None or prompt_lens is None:
                raise ValueError("a penalty is set: token_ids and prompt_lens are required")
            ids = torch.as_tensor(token_ids, dtype=torch.int64).to(device)
            plen = torch.as_tensor(prompt_lens, dtype=torch.int64).to(device)
            st.seen, st.output_counts = token_counts(ids, plen, vocab_size)
        if min_tokens is not None and stop_ids is not None:
            active = np.asarray(step) < np.asarray(min_tokens)
            if np.count_nonzero(active):
                st.ban_ids = to_device(np.asarray(stop_ids, dtype=np.int64), device)
                st.ban_active = to_device(active, device)
        return st

    @classmethod
    def from_table(
        cls,
        table,
        slots: np.ndarray,
        *,
        vocab_size: int,
        device: torch.device | str,
        eos_ids: list[int],
        token_ids: np.ndarray | torch.Tensor | None = None,
        prompt_lens: np.ndarray | torch.Tensor | None = None,
        step: np.ndarray | None = None,
    ) -> SamplingTensors:
        """Gather the parameters of `slots` from an aiollm.native RequestTable. step (the
        output index each row samples) defaults to the table's output_len; the engine
        passes it while earlier tokens are still in flight."""

        f = table.gather_fields(_FIELDS, slots)
        rows = table.array[np.asarray(slots, dtype=np.int64)]
        used = np.arange(rows["stop_ids"].shape[1]) < rows["n_stop"][:, None]
        stop = np.where(used, rows["stop_ids"], -1)
        eos = np.broadcast_to(np.asarray(eos_ids, dtype=np.int64), (len(slots), len(eos_ids)))
        return cls.from_numpy(
            temperature=f["temperature"],
            top_p=f["top_p"],
            top_k=f["top_k"],
            min_p=f["min_p"],
            repetition_penalty=f["repetition_penalty"],
            presence_penalty=f["presence_penalty"],
            frequency_penalty=f["frequency_penalty"],
            seed=f["seed"],
            step=f["output_len"] if step is None else step,
            top_logprobs=f["top_logprobs"],
            vocab_size=vocab_size,
            device=device,
            token_ids=token_ids,
            prompt_lens=prompt_lens,
            min_tokens=f["min_new_tokens"],
            stop_ids=np.concatenate([eos, stop.astype(np.int64)], axis=1),
        )


_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed", "output_len", "top_logprobs", "min_new_tokens")


def needs_history(repetition_penalty, presence_penalty, frequency_penalty) -> bool:
    """Whether any row uses a penalty, i.e. the engine must pass the token history."""
    return bool(
        np.count_nonzero(np.asarray(repetition_penalty) != 1.0)
        or np.count_nonzero(np.asarray(presence_penalty))
        or np.count_nonzero(np.asarray(frequency_penalty))
    )


def token_counts(
    token_ids: torch.Tensor, prompt_lens: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From a padded history [B, L] (prompt then output, -1 padding) return
    seen [B, V] bool (in prompt or output) and output_counts [B, V] fp32."""
    b, length = token_ids.shape
    valid = token_ids >= 0
    # Padding goes to an extra column V that is dropped, so one scatter serves all rows.
    idx = torch.where(valid, token_ids, vocab_size)
    pos = torch.arange(length, device=token_ids.device)
    is_output = valid & (pos[None, :] >= prompt_lens[:, None])
    counts = torch.zeros(b, vocab_size + 1, dtype=torch.float32, device=token_ids.device)
    seen = torch.zeros_like(counts)
    counts.scatter_add_(1, idx, is_output.float())
    seen.scatter_add_(1, idx, valid.float())
    return seen[:, :vocab_size] > 0, counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """Repetition, then frequency and presence penalties; returns a new tensor."""
    rp = st.repetition_penalty[:, None]
    penalised = torch.where(logits > 0, logits / rp, logits * rp)
    logits = torch.where(st.seen, penalised, logits)
    counts = st.output_counts
    return (
        logits
        - st.frequency_penalty[:, None] * counts
        - st.presence_penalty[:, None] * (counts > 0).float()
    )


def mask_token_ids(logits: torch.Tensor, ids: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Set logits[b, ids[b, j]] = -inf where active[b] and ids[b, j] >= 0, in place.

    Adding 0 or -inf by scatter_add keeps duplicate and padding ids harmless (padding is
    pointed at id 0 with an addend of 0) and the result exact in any order."""
    hit = active[:, None] & (ids >= 0)
    add = torch.where(hit, float("-inf"), 0.0).to(logits.dtype)
    return logits.scatter_add_(1, ids.clamp(min=0), add)


_VOCAB_IDS: dict = {}


def _vocab_ids(vocab: int, device: torch.device) -> torch.Tensor:
    """arange(vocab)[None] as the ids of a full row, made once per device."""
    key = (vocab, str(device))
    if key not in _VOCAB_IDS:
        _VOCAB_IDS[key] = torch.arange(vocab, device=device)[None, :]
    return _VOCAB_IDS[key]


def _floor(logits: torch.Tensor, st: SamplingTensors):
    """[1/temperature, the logit floor that top-k, top-p and min-p leave] per row (each
    keeps a most-likely prefix of the sorted row, so together they keep the shortest), and
    the candidates (values, ids) to draw from when every sampled row has a top-k."""
    vocab = logits.shape[1]
    if not st.trunc_width:
        if not st.use_min_p:
            return st.scale_floor, None
        floor = logits.amax(dim=-1) + st.min_p_offset
        return torch.stack([st.scale_floor[0], floor]), None
    if st.trunc_width < vocab:
        vals, ids = logits.topk(st.trunc_width, dim=-1)
    else:
        vals, ids = logits.sort(dim=-1, descending=True)
    n_keep = st.top_k.clamp(max=st.trunc_width).long()
    if st.use_top_p:
        # top-p over the renormalised top-k set, on temperature-scaled probabilities
        rank = torch.arange(st.trunc_width, device=vals.device)[None, :]
        scaled = (vals * st.scale_floor[0, :, None]).masked_fill(
            rank >= n_keep[:, None], float("-inf")
        )
        probs = scaled.softmax(dim=-1)
        before = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))
        # the most likely token always stays, also for a top_p that is 0 in float32
        n_top_p = (before < st.top_p[:, None]).sum(dim=-1).clamp(min=1)
        n_keep = torch.where(st.top_p < 1.0, torch.minimum(n_keep, n_top_p), n_keep)
    limited = (st.top_k < vocab) | (st.top_p < 1.0)
    floor = vals.gather(1, (n_keep - 1)[:, None]).squeeze(1)
    floor = torch.where(limited, floor, float("-inf"))
    if st.use_min_p:
        floor = torch.maximum(floor, vals[:, 0] + st.min_p_offset)
    scale_floor = torch.stack([st.scale_floor[0], floor])
    return scale_floor, ((vals, ids) if st.draw_on_candidates else None)


_BITS: dict = {}


def apply_constraints(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """Logit biases added, then tokens outside the allowed bitmask set to -inf (OpenAI's
    logit_bias order: the bias shapes the distribution, the grammar decides what may come).
    Token t is allowed in row b when bit t % 32 of allowed[b, t // 32] is set (xgrammar's and
    llguidance's layout); the words past V are ignored. Returns a new tensor."""
    if st.bias_ids is not None:
        logits = logits.scatter_add(1, st.bias_ids, st.bias)
    if st.allowed is not None:
        logits = logits.masked_fill(_disallowed(st.allowed, logits.shape[1]), float("-inf"))
    return logits


def _disallowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, vocab] bool: where bit t % 32 of bitmask[b, t // 32] is clear."""
    b = bitmask.shape[0]
    key = str(bitmask.device)
    if key not in _BITS:
        _BITS[key] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> _BITS[key]) & 1  # [B, W, 32]
    return bits.view(b, -1)[:, :vocab] == 0


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """In place: logits[b, t] = -inf where bit t % 32 of bitmask[b, t // 32] is clear.
    logits [B, V] fp32 (rows contiguous), bitmask [B, >= ceil(V / 32)] int32 on the same
    device. xgrammar's Triton kernel on a GPU; on the CPU the reference (masked_fill_), which
    is faster there than xgrammar's own CPU kernel. Returns logits."""
    global _XGR_KERNEL
    if logits.is_cuda and _XGR_KERNEL:
        import xgrammar as xgr

        try:
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1])
            return logits
        except Exception:  # e.g. a Triton the library's kernel does not build with
            log.warning("xgrammar's bitmask kernel failed; using the PyTorch reference",
                        exc_info=True)
            _XGR_KERNEL = False
    return logits.masked_fill_(_disallowed(bitmask, logits.shape[1]), float("-inf"))


_XGR_KERNEL = True  # False once xgrammar's kernel has failed on this machine


def sample(logits: torch.Tensor, st: SamplingTensors) -> SampleResult:
    """Next token of every row of logits [B, V] fp32; `logits` is not modified."""
    assert logits.dim() == 2 and logits.dtype == torch.float32, (logits.shape, logits.dtype)
    constrained = st.allowed is not None or st.bias_ids is not None
    if st.use_penalties:
        logits = apply_penalties(logits, st)
        if st.ban_ids is not None:
            mask_token_ids(logits, st.ban_ids, st.ban_active)
    elif st.ban_ids is not None:
        logits = mask_token_ids(logits.clone(), st.ban_ids, st.ban_active)
    if constrained:
        logits = apply_constraints(logits, st)

    if st.all_greedy and not st.want_logprobs and st.ban_ids is None and not st.use_penalties:
        return SampleResult(logits.argmax(dim=-1), None, None, None)
    if st.all_greedy:
        next_ids, lse, _ = row_scan(logits)
    else:
        scale_floor, candidates = _floor(logits, st)
        if candidates is None:  # one pass: argmax, logsumexp and the draw
            vocab = _vocab_ids(logits.shape[1], logits.device)
            greedy, lse, next_ids = row_scan(logits, scale_floor, st.keys, vocab)
        else:
            vals, ids = candidates
            greedy, lse, _ = row_scan(logits)
            _, _, choice = row_scan(vals, scale_floor, st.keys, ids, stats=False)
            next_ids = ids.gather(1, choice[:, None]).squeeze(1)
        if st.any_greedy:
            next_ids = torch.where(st.is_greedy, greedy, next_ids)

    chosen = logits.gather(1, next_ids[:, None])
    logprobs = (chosen - lse).squeeze(1)
    top_ids = top_logprobs = ranks = None
    if st.want_logprobs:
        # the chosen token's place in the vocabulary, as vLLM reports it: one compare over
        # the row (no sort), only for a step where some row asked for logprobs
        ranks = (logits > chosen).sum(dim=-1) + 1
    if st.max_top_logprobs > 0:
        k = min(st.max_top_logprobs, logits.shape[1])
        top_vals, top_ids = logits.topk(k, dim=-1)
        top_logprobs = top_vals - lse
    return SampleResult(next_ids, logprobs, top_ids, top_logprobs, ranks)
