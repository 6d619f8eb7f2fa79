"""SamplingTensors: one batch's sampling parameters as [B] device tensors, built once per
step from columns of the request table, plus the host flags that let sample()
(model/sampler.py) skip the stages no row uses.

Built with few numpy calls and two host-to-device copies (it runs once per step on the event
loop, with no host sync): temperature, top-p, top-k and min-p in the forms the draw reads
them, the penalties and, when some row has one, the token history (model/penalties.py), the
ids min_tokens bans (model/logit_masks.py), and the noise keys of (seed, step)
(aiollm.kernels.sampling.row_keys). A batch of greedy rows with nothing to mask copies
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aiollm.kernels.sampling import row_keys
from aiollm.model.forward_batch import to_device
from aiollm.model.penalties import needs_history, token_counts

GREEDY_EPS = 1e-5  # temperatures below this are greedy (dividing by them overflows)


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
    max_top_logprobs: int
    # [B] bool: rows whose top-p counts the whole distribution's mass (LightLLM's cut),
    # not the top-k set's renormalised (vLLM's); None when no sampled row with top-p is
    top_p_joint: torch.Tensor | None = None
    # exponential_decay_length_penalty: each eos logit x of a row gains |x| * eos_scale
    # (factor ** (step - start) - 1, 0 where none); None when no row's is in effect
    eos_ids: torch.Tensor | None = None  # [E] int64
    eos_scale: torch.Tensor | None = None  # [B] fp32
    want_logprobs: bool = True  # some row asked for logprobs (else sample() may skip them)
    # what logprobs report (LOGPROBS_MODES, vLLM's --logprobs-mode), and whether a row that
    # asked for them had its logits changed by a penalty or a min_tokens ban (lp_penalized)
    # or is sampled with a temperature other than 1 or a truncation (lp_scaled): sample()
    # makes a second pass over the logits for the reported values only when one did
    logprobs_mode: str = "raw_logprobs"
    lp_penalized: bool = False
    lp_scaled: bool = False
    # Token history, present only when some row uses a penalty.
    seen: torch.Tensor | None = None  # [B, V] bool: token in prompt or output
    output_counts: torch.Tensor | None = None  # [B, V] fp32: occurrences in the output
    # min_tokens: ids banned on rows still under their min_tokens (None when no row is).
    ban_ids: torch.Tensor | None = None  # [B, K] int64, -1 padding
    ban_active: torch.Tensor | None = None  # [B] bool
    # Constraints (engine/token_mask.py TokenMask), set once the step's grammars have advanced.
    allowed: torch.Tensor | None = None  # [B, ceil(V / 32)] int32 bitmask: bit t = t allowed
    # the grammars' part of `allowed` (all bits set on rows without one; `allowed` itself
    # when no row has allowed_token_ids), which raw logprobs are taken after, as vLLM V1
    # masks a grammar before its sampler (None: no row has a grammar, or no row reports
    # raw logprobs)
    grammar: torch.Tensor | None = None
    bias_ids: torch.Tensor | None = None  # [B, K] int64 logit_bias ids (padding id 0, bias 0)
    bias: torch.Tensor | None = None  # [B, K] fp32

    @property
    def use_penalties(self) -> bool:
        return self.seen is not None

    @property
    def raw_logprobs(self) -> bool:
        """Whether some row reports logprobs of its raw row (a raw_* mode), which a
        grammar's mask is in (`grammar`, asked of the step's masks only then)."""
        return self.want_logprobs and self.logprobs_mode.startswith("raw")

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
        logprobs_mode: str = "raw_logprobs",
        top_p_joint: np.ndarray | None = None,
        length_penalty: np.ndarray | None = None,
        eos_ids: list[int] | None = None,
    ) -> SamplingTensors:
        """Build from [B] arrays (request table columns; step = output_len).

        token_ids [B, L] (prompt then output tokens, -1 padding) and prompt_lens [B] are
        required only when some row has a penalty (see needs_history()); they are ignored
        otherwise. top_p_joint [B] bool (None: none) marks rows whose top-p counts the
        whole distribution (LightLLM's), not the top-k set renormalised (vLLM's).
        length_penalty [B, 2] (start, factor; None: none) raises the logits of eos_ids by
        exponential_decay_length_penalty on rows whose step is past start. min_tokens [B]
        and stop_ids [B, K] (eos + stop ids, -1 padding) ban those ids on rows whose step <
        min_tokens. logprobs_mode: one of LOGPROBS_MODES (model/sampler.py says what each
        reports).
        """
        b = len(temperature)
        want_logprobs = bool(np.count_nonzero(np.asarray(top_logprobs) >= 0))
        max_top = int(np.max(top_logprobs, initial=0))
        banning = min_tokens is not None and stop_ids is not None and bool(
            np.count_nonzero(np.asarray(step) < np.asarray(min_tokens)))
        eos_scale = _eos_scale(length_penalty, step) if eos_ids else None
        if (not np.count_nonzero(np.asarray(temperature) >= GREEDY_EPS) and not banning
                and eos_scale is None
                and not needs_history(repetition_penalty, presence_penalty, frequency_penalty)):
            # every row greedy, nothing to mask: sample() reads no per-row parameter, so
            # nothing is copied to the device (the common case of a greedy decode batch)
            return cls(None, None, None, None, None, None, None, None, None, all_greedy=True,
                       any_greedy=True, use_top_p=False, use_min_p=False, trunc_width=0,
                       max_top_logprobs=max_top,
                       want_logprobs=want_logprobs, logprobs_mode=logprobs_mode)
        # Host flags with few numpy calls: this runs once per step on the event loop.
        floats = np.empty((8, b), dtype=np.float32)
        floats[7] = 0.0 if eos_scale is None else eos_scale
        floats[0] = temperature
        floats[1] = float("-inf")  # the draw's floor where nothing truncates
        floats[2] = top_p
        floats[3] = min_p
        floats[4] = repetition_penalty
        floats[5] = presence_penalty
        floats[6] = frequency_penalty
        ints = np.empty((5, b), dtype=np.int32)
        ints[0] = np.clip(top_k, -1, vocab_size)
        ints[2:4] = row_keys(seed, step)
        ints[4] = 0 if top_p_joint is None else top_p_joint
        temp, p, mp, k = floats[0], floats[2], floats[3], ints[0]
        greedy = temp < GREEDY_EPS
        ints[1] = greedy
        n_greedy = int(np.count_nonzero(greedy))
        k[k <= 0] = vocab_size
        use_top_p = use_min_p = joint = False
        trunc_width = 0
        if n_greedy < b:
            sampled = ~greedy if n_greedy else slice(None)
            k_s = k[sampled]
            has_k, has_p = k_s < vocab_size, p[sampled] < 1.0
            use_top_p = bool(np.count_nonzero(has_p))
            joint = bool(np.count_nonzero(has_p & (ints[4][sampled] != 0)))
            use_min_p = bool(np.count_nonzero(mp[sampled] > 0.0))
            if use_top_p and np.count_nonzero(has_p & ~has_k):
                trunc_width = vocab_size  # top-p without top-k: a full sort
            elif np.count_nonzero(has_k):
                trunc_width = int(k_s[has_k].max())
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
            max_top_logprobs=max_top,
            want_logprobs=want_logprobs,
            logprobs_mode=logprobs_mode,
            top_p_joint=i[4] != 0 if joint else None,
        )
        if eos_scale is not None:
            st.eos_scale = f[7]
            st.eos_ids = to_device(np.asarray(eos_ids, dtype=np.int64), device)
        if want_logprobs:
            lp_rows = np.asarray(top_logprobs) >= 0
            changed = (floats[4] != 1.0) | (floats[5] != 0.0) | (floats[6] != 0.0)
            if min_tokens is not None and stop_ids is not None:
                changed |= np.asarray(step) < np.asarray(min_tokens)
            changed |= floats[7] != 0.0
            st.lp_penalized = bool(np.count_nonzero(lp_rows & changed))
            # temp is 1/temperature by now, 1 on greedy rows; k is vocab_size where off
            scaled = ~greedy & ((temp != 1.0) | (k < vocab_size) | (p < 1.0) | (mp > -np.inf))
            st.lp_scaled = bool(np.count_nonzero(lp_rows & scaled))
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
        logprobs_mode: str = "raw_logprobs",
    ) -> SamplingTensors:
        """Gather the parameters of `slots` from an aiollm.native RequestTable. step (the
        output index each row samples) defaults to the table's output_len; the engine
        passes it while earlier tokens are still in flight."""

        f = table.gather_fields(_FIELDS, slots)
        step = f["output_len"] if step is None else step
        factor = f["length_penalty_factor"]  # 1 on every row but a LightLLM one's with it
        length_penalty = (np.stack([f["length_penalty_start"], factor], axis=1)
                          if np.count_nonzero(factor != 1.0) else None)
        ban_ids = None
        if np.count_nonzero(np.asarray(step) < f["min_new_tokens"]):  # min_tokens bans them
            eos = np.broadcast_to(np.asarray(eos_ids, dtype=np.int64), (len(slots), len(eos_ids)))
            ban_ids = np.concatenate([eos, table.stop_ids(slots)], axis=1)
        return cls.from_numpy(
            temperature=f["temperature"],
            top_p=f["top_p"],
            top_k=f["top_k"],
            min_p=f["min_p"],
            repetition_penalty=f["repetition_penalty"],
            presence_penalty=f["presence_penalty"],
            frequency_penalty=f["frequency_penalty"],
            seed=f["seed"],
            step=step,
            top_logprobs=f["top_logprobs"],
            vocab_size=vocab_size,
            device=device,
            token_ids=token_ids,
            prompt_lens=prompt_lens,
            min_tokens=f["min_new_tokens"],
            stop_ids=ban_ids,
            logprobs_mode=logprobs_mode,
            top_p_joint=f["top_p_joint"],
            length_penalty=length_penalty,
            eos_ids=eos_ids,
        )


def _eos_scale(length_penalty: np.ndarray | None, step: np.ndarray) -> np.ndarray | None:
    """[B] float32 factor ** (step - start) - 1 where step > start and factor > 1 (in
    float32's range: a steep factor makes eos certain, never inf * 0), else 0; None where
    no row's is in effect."""
    if length_penalty is None:
        return None
    lp = np.asarray(length_penalty, dtype=np.float64).reshape(-1, 2)
    past = np.maximum(np.asarray(step, dtype=np.float64) - lp[:, 0], 0.0)
    live = (lp[:, 1] > 1.0) & (past > 0)
    if not np.count_nonzero(live):
        return None
    with np.errstate(over="ignore"):
        scale = np.where(live, np.power(np.maximum(lp[:, 1], 1.0), past) - 1.0, 0.0)
    return np.minimum(scale, 1e30).astype(np.float32)


_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed", "output_len", "top_logprobs", "min_new_tokens",
           "top_p_joint", "length_penalty_start", "length_penalty_factor")
