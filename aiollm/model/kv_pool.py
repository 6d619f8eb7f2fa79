"""The token-level KV pool (TokenAttention): KV slots per token, no padding, no blocks.

KVPool holds one K and one V tensor per layer, indexed by token slot, and hands slots out
and takes them back with a free stack kept on the CPU in numpy (vectorised: one slice per
call, never a Python loop over tokens; a numpy call costs about a microsecond where a torch
CPU op costs several, and the planner makes a few per step). ReqToTokenTable maps each
request's positions to slots: row r, column p holds the slot of token p of the request that
owns row r. How many slots the pool holds: aiollm/model/kv_pool_size.py.
"""

from __future__ import annotations

import numpy as np
import torch

from aiollm.byte_size import byte_size
from aiollm.model.kv_pool_size import SIZES, named


def pool_misfit(num_tokens: int, need: int, device: torch.device, share: str | None = None,
                part: str = "") -> str:
    """The error of a pool of num_tokens slots (`need` bytes; of its `part` where named, such
    as the free list in host memory) that `device` cannot hold, and what to lower:
    kv_tokens, and the memory share that sized it where one did (`share`: an option of
    MEMORY_SHARES, named "name (--flag)", the form serve rewrites as the user typed it); or
    where `share` is max_total_tokens, the bound that sized it, alone (the pool is the
    smaller of it and a share's tokens, so no share lowered above it helps); or where it is
    cpu_kv_tokens, the CPU pool's size given, alone, by that name (no flag sets it), or
    kv_cache_memory_bytes, vLLM's size in bytes, alone (SIZES)."""
    size = f"{part}: {byte_size(need)}" if part else byte_size(need)
    if share in SIZES:  # the size given: no share helps
        lower = named(share)
    else:
        lower = "kv_tokens (--kv-tokens)" + ("" if share is None else f" or {named(share)}")
    return (f"a KV pool of {num_tokens} tokens ({size}) does not fit in the memory of "
            f"{device}: lower {lower}")


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros, except that on the CPU the memory comes zeroed from calloc (numpy): the OS
    maps zero pages lazily, so a pool of gigabytes costs nothing until its slots are written,
    where torch.zeros writes every byte at start-up (seconds)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


class KVPool:
    """K and V of every layer for num_tokens token slots (plus one scratch slot), and the
    free list of those slots. Raises ValueError naming kv_tokens, and `sized_by` (the
    memory share, an option of MEMORY_SHARES, that sized num_tokens; None: none did), or
    only the option of SIZES that `sized_by` is (pool_misfit),
    when the pool does not fit in the device's memory."""

    # host memory a slot takes whatever the device: its id in the free stack (int64) and its
    # in-use flag (one byte); int64 as alloc hands slots out. int32 would fit every id
    # (MAX_KV_TOKENS) but save only 4 bytes a token, beside K and V of 22.5 KiB a token
    # (SmolLM2-135M in bfloat16) to 128 KiB (Llama-3-8B)
    HOST_BYTES_PER_TOKEN = np.dtype(np.int64).itemsize + np.dtype(np.bool_).itemsize

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_tokens: int,
        dtype: torch.dtype,
        device: torch.device | str,
        sized_by: str | None = None,
    ):
        if num_tokens <= 0:
            raise ValueError(f"KV pool needs a positive token count, got {num_tokens}")
        self.capacity = num_tokens
        self.device = torch.device(device)
        # one extra slot, never handed out: padding rows of a CUDA-graph batch write there
        self.scratch_slot = num_tokens
        shape = (num_tokens + 1, num_kv_heads, head_dim)
        try:
            self.k_cache = [_zeros(shape, dtype, self.device) for _ in range(num_layers)]
            self.v_cache = [_zeros(shape, dtype, self.device) for _ in range(num_layers)]
        except (MemoryError, torch.OutOfMemoryError) as e:  # numpy's on the CPU is a MemoryError
            need = num_tokens * self.bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
            raise ValueError(pool_misfit(num_tokens, need, self.device, sized_by)) from e
        # Free stack on the CPU: slots [0, n_free) of _stack are free. Popping from the end
        # hands out the most recently freed slots first (they are warm in cache).
        try:
            self._stack = np.arange(num_tokens - 1, -1, -1, dtype=np.int64)
            self._in_use = np.zeros(num_tokens, dtype=bool)
        except (MemoryError, ValueError) as e:  # ValueError: past numpy's largest array
            host = num_tokens * self.HOST_BYTES_PER_TOKEN
            raise ValueError(pool_misfit(num_tokens, host, torch.device("cpu"), sized_by,
                                         part="its free list")) from e
        self._n_free = num_tokens

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        """Bytes of K and V one token takes over all layers (one rank's KV heads)."""
        size = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * size

    def release(self) -> None:
        """Drop the K and V tensors (the pool's memory: most of a GPU's, by default) once no
        step will run again (a stopped engine); the slot counts stay readable."""
        self.k_cache, self.v_cache = [], []

    @property
    def n_free(self) -> int:
        return self._n_free

    @property
    def n_used(self) -> int:
        return self.capacity - self._n_free

    def alloc(self, n: int) -> torch.Tensor | None:
        """n free slots as an int64 CPU tensor, or None if the pool has fewer than n."""
        if n > self._n_free:
            return None
        self._n_free -= n
        slots = self._stack[self._n_free : self._n_free + n].copy()
        self._in_use[slots] = True
        return torch.from_numpy(slots)

    def free(self, slots: torch.Tensor | np.ndarray) -> None:
        if isinstance(slots, torch.Tensor):
            slots = slots.cpu().numpy()
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        n = slots.size
        if n == 0:
            return
        if (slots.min() < 0 or slots.max() >= self.capacity or not self._in_use[slots].all()
                or np.unique(slots).size != n):
            raise RuntimeError("KVPool.free: a slot is not in use or is given twice")
        self._in_use[slots] = False
        self._stack[self._n_free : self._n_free + n] = slots
        self._n_free += n


class ReqToTokenTable:
    """[rows + 1, max_len] int32 map from (request row, position) to KV slot.

    Rows 0..rows-1 are handed out to requests. The extra last row (`pad_row`) never is: the
    padding rows of a CUDA-graph batch write and read there. The master copy is on the CPU
    (the engine reads it to free a finished request's slots without touching the GPU); on a
    GPU a device copy is kept in step by `write_device` (or by the decode graph itself).
    """

    def __init__(self, rows: int, max_len: int, device: torch.device | str):
        self.rows = rows
        self.max_len = max_len
        self.pad_row = rows
        self.cpu = torch.zeros((rows + 1, max_len), dtype=torch.int32)
        self._np = self.cpu.numpy()  # shares memory with self.cpu
        self.device = torch.device(device)
        self.table = self.cpu if self.device.type == "cpu" else self.cpu.to(self.device)
        self._free_rows = list(range(rows - 1, -1, -1))
        # tensor parallelism, rank 0: write_row appends (row, start, slots) here, so the
        # next step message carries them to the other ranks' tables
        self.mirror: list | None = None

    def release(self) -> None:
        """Drop the map's tensors (rows x max_len, on the device and the host) once no step
        will run again (a stopped engine); the row counts stay readable."""
        self.cpu = self.table = self._np = None

    @property
    def n_free_rows(self) -> int:
        return len(self._free_rows)

    def alloc_row(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free_row(self, row: int) -> None:
        assert 0 <= row < self.rows and row not in self._free_rows, f"bad req_to_token row {row}"
        self._free_rows.append(row)

    def write_cpu(self, rows, positions, slots) -> None:
        """Record slots[i] for (rows[i], positions[i]) on the CPU master copy (numpy arrays
        or CPU tensors)."""
        self._np[np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64)] = \
            np.asarray(slots)

    def write_device(self, rows: torch.Tensor, positions: torch.Tensor,
                     slots: torch.Tensor) -> None:
        """Mirror a write_cpu on the device copy (tensors already on the device)."""
        if self.table is not self.cpu:
            from aiollm.kernels.decode_io import write_slots

            write_slots(self.table, rows, positions, slots)

    def write_row(self, row: int, start: int, slots: np.ndarray) -> None:
        """Record slots for positions start.. of one row, on the CPU copy and the device's
        (a copy queued on the current stream, so steps launched before it read the old row
        and steps after it the new one)."""
        end = start + slots.shape[0]
        self._np[row, start:end] = slots
        if self.mirror is not None:
            self.mirror.append((row, start, np.array(slots, dtype=np.int64)))
        if self.table is not self.cpu:
            self.table[row, start:end].copy_(self.cpu[row, start:end], non_blocking=True)

    def slots_of(self, row: int, start: int, end: int) -> np.ndarray:
        return self._np[row, start:end].astype(np.int64)
