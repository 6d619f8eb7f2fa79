"""A constrained step's token masks: what the sampler applies, and the reused memory the
bitmask rows are filled in (engine/grammar.py's Grammars.masks builds them).

The bitmask layout is xgrammar's (and llguidance's): token t is bit t % 32 of word t // 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)
class TokenMask:
    """A step's constraints on the device, one row per sampled row."""

    bitmask: torch.Tensor | None  # [B, W] int32
    # [B, W] int32: the grammars' part of `bitmask` (all bits set on rows without one),
    # which raw logprobs see, as vLLM V1 masks a grammar before its sampler and
    # allowed_token_ids after; `bitmask` itself when no row has allowed_token_ids, None
    # when no row has a grammar or none reports raw logprobs
    grammar: torch.Tensor | None = None
    bias_ids: torch.Tensor | None = None  # [B, K] int64 (padding: id 0, bias 0)
    bias: torch.Tensor | None = None  # [B, K] fp32


_ONES, _ZEROS, _DIRTY = 0, 1, 2  # what a bitmask row's tail holds


class BitmaskBuffers:
    """Reused bitmask memory: page-locked host rows [R, W] in turns (a turn is refilled two
    steps later, when the step that copied it has completed) and one device copy target.

    A row's words past the grammar vocabulary's (its tail) are zero while the row carries a
    grammar and all ones otherwise (an allowed-ids row ANDs its own in); `tail` remembers
    which per row, so a step rewrites only the tails of rows that changed role. xgrammar
    writes full rows of grammar_words words: into the host rows directly when that is the
    model's width, else into a scratch block that is then copied in. A step that mixes
    grammar and allowed-ids rows and reports raw logprobs also needs its grammars' part
    apart: page-locked turns and a device target of their own, made on first use (a copy
    from pageable memory may wait for the step running on the device: CUDA stages it)."""

    TURNS = 2

    def __init__(self, rows: int, words: int, grammar_words: int, grammar_vocab: int,
                 device: torch.device):
        pin = device.type == "cuda"
        self.rows, self.words, self.grammar_words = rows, words, grammar_words
        self.host = [torch.full((rows, words), -1, dtype=torch.int32, pin_memory=pin)
                     for _ in range(self.TURNS)]
        self.host_np = [t.numpy() for t in self.host]
        self.tail = [np.zeros(rows, dtype=np.int8) for _ in range(self.TURNS)]  # _ONES...
        self.scratch = (None if grammar_words == words else
                        torch.empty((rows, grammar_words), dtype=torch.int32))
        # bits of the last grammar word past the grammar vocabulary (ids no token has)
        extra = grammar_words * 32 - grammar_vocab
        self.last_word = (np.uint32((1 << (32 - extra)) - 1).view(np.int32) if extra
                          else None)
        self.device_buf = (torch.empty((rows, words), dtype=torch.int32, device=device)
                           if pin else None)
        self.part_host: list[torch.Tensor] | None = None  # the grammars' part, on first use
        self.part_device: torch.Tensor | None = None
        self.turn = 0

    def fill(self, b: int, grammar_rows: list[int], allowed_rows: list[int],
             states: list, batch, part: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The [b, W] bitmask of a step on the device (queued copy), or on the host (CPU),
        and its grammars' part (TokenMask.grammar) when `part` asks for it (a row reports
        raw logprobs): None without grammar rows, the bitmask itself without allowed rows,
        else a copy taken before the allowed ids are ANDed in (only steps that mix both
        and ask for it pay for it)."""
        assert b <= self.rows, (b, self.rows)
        t = self.turn
        self.turn = (t + 1) % self.TURNS
        host, arr, tail = self.host[t], self.host_np[t], self.tail[t]
        gw = self.grammar_words
        is_grammar = np.zeros(b, dtype=bool)
        is_grammar[grammar_rows] = True
        if gw < self.words:
            want = is_grammar.astype(np.int8)  # _ZEROS where a grammar, else _ONES
            flip = np.flatnonzero(tail[:b] != want)
            if len(flip):
                arr[flip, gw:] = np.where(is_grammar[flip], 0, -1)[:, None]
                tail[flip] = want[flip]
            tail[allowed_rows] = _DIRTY
        if grammar_rows:
            matchers = [states[i].matcher for i in grammar_rows]
            if self.scratch is None:
                batch.batch_fill_next_token_bitmask(matchers, host, grammar_rows)
            else:  # same rows in the scratch block: one slice copy (fancy indexing is 15x slower)
                batch.batch_fill_next_token_bitmask(matchers, self.scratch, grammar_rows)
                arr[:b, :gw] = self.scratch.numpy()[:b]
            if self.last_word is not None:
                arr[grammar_rows, gw - 1] &= self.last_word
        plain = np.flatnonzero(~is_grammar)
        if len(plain):  # rows without a grammar: all allowed (or their allowed set, below)
            arr[plain, :gw] = -1
        grammar = None
        if part and grammar_rows and allowed_rows:
            grammar = self._grammar_part(t, b, arr)
        for i in allowed_rows:
            arr[i] &= states[i].allowed
        # the CPU samples from the host turn before the turn comes back
        mask = _queued(host[:b], self.device_buf)
        if part and grammar is None and grammar_rows:
            grammar = mask
        return mask, grammar

    def _grammar_part(self, t: int, b: int, arr: np.ndarray) -> torch.Tensor:
        """Turn t's rows `arr[:b]` as they are now (before the allowed ids), copied into
        the part's own page-locked turn and queued for its device target (the host turn
        on the CPU)."""
        if self.part_host is None:
            pin = self.device_buf is not None
            self.part_host = [torch.empty((self.rows, self.words), dtype=torch.int32,
                                          pin_memory=pin) for _ in range(self.TURNS)]
            self.part_device = (torch.empty_like(self.device_buf) if pin else None)
        host = self.part_host[t][:b]
        host.numpy()[:] = arr[:b]
        return _queued(host, self.part_device)


def _queued(host: torch.Tensor, device_buf: torch.Tensor | None) -> torch.Tensor:
    """Rows `host` [b, W] (a page-locked turn) queued for a copy into the first b rows of
    `device_buf`, which it returns; `host` itself where there is none (the CPU)."""
    if device_buf is None:
        return host
    dev = device_buf[:host.shape[0]]
    dev.copy_(host, non_blocking=True)
    return dev


def to_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """t (a page-locked host tensor, or None) queued for a copy to `device` (as is on the
    CPU)."""
    if t is None or device.type == "cpu":
        return t
    return t.to(device, non_blocking=True)
