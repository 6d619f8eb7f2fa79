"""A constrained step's sparse logit biases: each request's logit_bias (token id -> a value
added to its logit) and -inf on the ids its bad words ban at this step (engine/bad_words.py),
as TokenMask's [B, K] id and value tensors (padding: id 0, bias 0), which the sampler adds
(model/logit_masks.py). Grammars.start keeps a request's biases as arrays and Grammars.masks
gathers a step's rows, filled on the host and copied to the device in one async copy each."""

from __future__ import annotations

import numpy as np
import torch

from aiollm.engine.bad_words import banned_ids
from aiollm.engine.token_mask import to_device


def bias_arrays(logit_bias: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """A request's logit_bias as ([K] int64 token ids, [K] fp32 biases), in its order."""
    return (np.fromiter(logit_bias, np.int64, len(logit_bias)),
            np.fromiter(logit_bias.values(), np.float32, len(logit_bias)))


def step_biases(states: list, rows: list[int], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The [B, K] int64 ids and [B, K] fp32 biases (B = len(states)) of a step's rows
    `rows` (those with a GrammarState), on `device` (queued copies): each row's logit_bias,
    then -inf on the ids its bad words ban now; None where no row has any."""
    b = len(states)
    pin = device.type == "cuda"
    banned = {i: banned_ids(states[i].bad_words, states[i].recent) for i in rows
              if states[i].bad_words is not None}
    k = max((len(states[i].bias_ids if states[i].bias_ids is not None else ())
             + len(banned.get(i, ())) for i in rows), default=0)
    if not k:
        return None
    # made and filled through numpy views: torch's fills and per-row copies of a
    # 49,152-entry bias took 15-40 ms each on a busy 2-core host (its thread pool
    # hands them out), numpy's 0.01-0.05 ms
    ids = torch.empty((b, k), dtype=torch.int64, pin_memory=pin)
    vals = torch.empty((b, k), dtype=torch.float32, pin_memory=pin)
    ids_np, vals_np = ids.numpy(), vals.numpy()
    ids_np.fill(0)
    vals_np.fill(0)
    for i in rows:
        s = states[i]
        n = 0
        if s.bias_ids is not None:
            n = len(s.bias_ids)
            ids_np[i, :n] = s.bias_ids
            vals_np[i, :n] = s.bias
        if banned.get(i):
            ids_np[i, n : n + len(banned[i])] = banned[i]
            vals_np[i, n : n + len(banned[i])] = -np.inf
    return to_device(ids, device), to_device(vals, device)
