"""Penalties on the logits after logit_bias and the masks (vLLM V1's order, and transformers'):
repetition (HF's: over prompt and output tokens, positive logits divided by the penalty,
negative ones multiplied), then frequency and presence (OpenAI's: over output tokens,
subtracted), and the token history they read ([B, V] seen flags and output counts, built on
the device from a padded history of ids). Which tokens a request's history holds is its
SamplingParams.penalty_scope (token_history): vLLM's above, or LightLLM's, where all three
count the output alone, or the prompt and the output alike (its input_penalty).
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


def token_history(prompts: list[list[int]], outputs: list[list[int]],
                  scopes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The padded history [B, L] int64 (-1 padding) and the prompt lengths [B] int64 that
    token_counts reads, for requests of prompt and output ids and penalty scopes
    (SamplingParams.penalty_scope). Under "vllm" the row is prompt then output, the prompt
    marked as such (seen by the repetition penalty, not counted by presence and frequency);
    under "output" it is the output alone; under "prompt_and_output" prompt and output,
    all of it counted as output is."""
    rows, marked = [], []
    for prompt, output, scope in zip(prompts, outputs, scopes):
        rows.append(output if scope == "output" else prompt + output)
        marked.append(len(prompt) if scope == "vllm" else 0)
    history = np.full((len(rows), max(1, max(map(len, rows), default=0))), -1, dtype=np.int64)
    for i, toks in enumerate(rows):
        history[i, : len(toks)] = toks
    return history, np.array(marked, dtype=np.int64)


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
