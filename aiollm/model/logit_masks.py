"""Masks and biases on logits before the draw: ids banned outright (min_tokens' eos and stop
ids), logit_bias, and the allowed-token bitmask of constrained decoding (engine/grammar.py
builds it, engine/token_mask.py holds it). The bitmask layout is xgrammar's and llguidance's:
token t is allowed in row b when bit t % 32 of word t // 32 of row b is set.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from aiollm.model.sampling_tensors import SamplingTensors

log = logging.getLogger(__name__)


def mask_token_ids(logits: torch.Tensor, ids: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Set logits[b, ids[b, j]] = -inf where active[b] and ids[b, j] >= 0, in place.

    Adding 0 or -inf by scatter_add keeps duplicate and padding ids harmless (padding is
    pointed at id 0 with an addend of 0) and the result exact in any order."""
    hit = active[:, None] & (ids >= 0)
    add = torch.where(hit, float("-inf"), 0.0).to(logits.dtype)
    return logits.scatter_add_(1, ids.clamp(min=0), add)


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
    device. xgrammar's Triton kernel on a GPU (once xgrammar is imported); on the CPU, and on
    a GPU before, the reference (masked_fill_), which is faster on the CPU than xgrammar's
    own CPU kernel. Returns logits."""
    global _XGR_KERNEL
    # only once something else imported xgrammar (a grammar's compile, on a worker thread):
    # its first import here, for allowed_token_ids alone, would hold the event loop 1-2 s
    if logits.is_cuda and _XGR_KERNEL and "xgrammar" in sys.modules:
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
