"""Penalties on the logits after logit_bias and the masks (vLLM V1's order, and transformers'):
repetition (HF's: over prompt and output tokens, positive logits divided by the penalty,
negative ones multiplied), then frequency and presence (OpenAI's: over output tokens,
subtracted), and the token history they read ([B, V] seen flags and output counts, built on
the device from a padded history of ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from aiollm.model.sampling_tensors import SamplingTensors


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
