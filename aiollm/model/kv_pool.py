"""The token-level KV pool (TokenAttention): KV slots per token, no padding, no blocks.

KVPool holds one K and one V tensor per layer, indexed by token slot, and hands slots out
and takes them back with a free stack kept on the CPU in numpy (vectorised: one slice per
call, never a Python loop over tokens; a numpy call costs about a microsecond where a torch
CPU op costs several, and the planner makes a few per step). ReqToTokenTable maps each
request's positions to slots: row r, column p holds the slot of token p of the request that
owns row r.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import torch

from aiollm.byte_size import byte_size
from aiollm.config import KV_MEMORY_FRACTION, MAX_KV_TOKENS, MEMORY_SHARES
from aiollm.model.kv_bytes import bytes_misfit, bytes_pool_tokens

log = logging.getLogger(__name__)


def pool_tokens(cfg, device: torch.device, bytes_per_token: int, max_position: int) -> int:
    """KV pool size in tokens for this process: what `_sized_tokens` gives, at most
    MAX_KV_TOKENS (slot ids are int32: req_to_token, the kernels' indices) and
    cfg.max_total_tokens (SGLang's --max-total-tokens, an upper bound: its pool is the
    smaller of it and what its memory fraction leaves, as ModelRunner.init_memory_pool
    takes them; a warning where the bound is the larger). The Engine and each
    tensor-parallel follower size theirs so. Arguments and errors as `_sized_tokens`'s."""
    tokens = _sized_tokens(cfg, device, bytes_per_token, max_position)
    cap = cfg.max_total_tokens  # at most MAX_KV_TOKENS (EngineConfig)
    if cap is not None and cap <= tokens:  # before the cap's line: it would say a size
        return cap  # the pool never has
    if tokens > MAX_KV_TOKENS:  # a share of a large GPU, for a model of few bytes a token
        log.info("the KV pool holds %d tokens, the most its int32 slot ids address (the "
                 "memory gives %d)", MAX_KV_TOKENS, tokens)
        return MAX_KV_TOKENS
    if cap is None:
        return tokens
    share = share_given(cfg)
    sizer = (f"{named('kv_cache_memory_bytes')} {cfg.kv_cache_memory_bytes}"
             if cfg.kv_cache_memory_bytes is not None
             else f"{named('cpu_kv_tokens')} {cfg.cpu_kv_tokens}"
             if device.type != "cuda" and cfg.cpu_kv_tokens is not None
             else "the CPU's default" if device.type != "cuda"  # no share has an effect
             else "the GPU's free memory" if share is None
             else f"{named(share)} {getattr(cfg, share)}")
    # kv_tokens sizes a pool over any other size but the bytes, which refuse it beside them
    instead = (f"raise {named('kv_cache_memory_bytes')} for more"
               if cfg.kv_cache_memory_bytes is not None
               else "kv_tokens (--kv-tokens) sizes it instead")
    log.warning("max_total_tokens (--max-total-tokens) %d is more than the %d tokens %s leaves: "
                "the KV pool holds %d (%s)", cap, tokens, sizer, tokens, instead)
    return tokens


# EngineConfig's options that size a pool with no flag of serve's (LLM(...)'s keywords alone)
UNFLAGGED = frozenset({"cpu_kv_tokens"})
# the options that size a pool whatever the memory, the ones to lower or raise where it does
# not fit (no share of the memory can help), but kv_tokens, the size in tokens
SIZES = ("max_total_tokens", "cpu_kv_tokens", "kv_cache_memory_bytes")


def named(option: str) -> str:
    """An EngineConfig option as its log lines and errors name it, "mem_fraction
    (--mem-fraction)": the form serve rewrites to the flag as the user typed it
    (log_config.rewrite_flags: LightLLM's "(--mem_fraction)"); one of UNFLAGGED by its
    name alone."""
    return option if option in UNFLAGGED else f"{option} (--{option.replace('_', '-')})"


def share_given(cfg) -> str | None:
    """The share of a whole GPU's memory `cfg` gives (EngineConfig allows one), if any: one
    of MEMORY_SHARES but kv_memory_fraction, a share of the memory free after loading."""
    return next((name for name in MEMORY_SHARES
                 if name != "kv_memory_fraction" and getattr(cfg, name) is not None), None)


def _sized_tokens(cfg, device: torch.device, bytes_per_token: int, max_position: int) -> int:
    """KV pool size in tokens, before max_total_tokens: cfg.kv_tokens when given;
    cfg.kv_cache_memory_bytes over bytes_per_token when given (kv_bytes.bytes_pool_tokens;
    on a GPU, ValueError naming it unless it is within the free memory after loading); else
    on a GPU, with cfg.gpu_memory_utilization, what `utilization_pool_tokens` leaves, with
    SGLang's mem_fraction_static or LightLLM's mem_fraction what `static_pool_tokens`
    leaves, else kv_memory_fraction (default KV_MEMORY_FRACTION) of the free memory after
    loading (PyTorch's cached blocks and cyclic garbage's counted free) over
    bytes_per_token; on the CPU, cfg.cpu_pool_tokens of the context (the smaller of
    max_position and max_model_len, tokens). Raises ValueError naming the share given when
    it leaves no room for a pool."""
    utilization = cfg.gpu_memory_utilization
    share = share_given(cfg)
    if cfg.kv_tokens is not None:
        if share is not None:  # as vLLM's kv_cache_memory_bytes overrides it (and
            # LightLLM's max_total_token_num its mem_fraction)
            log.info("the KV pool holds the %d tokens of kv_tokens (--kv-tokens): %s %s is "
                     "not used", cfg.kv_tokens, named(share), getattr(cfg, share))
        return cfg.kv_tokens
    if cfg.kv_cache_memory_bytes is not None:
        return _bytes_tokens(cfg, device, bytes_per_token, share)
    if device.type == "cuda":
        free, total = _free_memory(device)
        if utilization is not None:
            return utilization_pool_tokens(utilization, free, total,
                                           torch.cuda.memory_reserved(device), bytes_per_token)
        if share is not None:
            return static_pool_tokens(share, getattr(cfg, share), free, total,
                                      torch.cuda.memory_reserved(device), bytes_per_token)
        return int(free * (cfg.kv_memory_fraction or KV_MEMORY_FRACTION)) // bytes_per_token
    if share is not None:
        log.info("%s %s has no effect on the CPU", named(share), getattr(cfg, share))
    return cfg.cpu_pool_tokens(min([x for x in (max_position, cfg.max_model_len) if x] or [8192]))


def _free_memory(device: torch.device) -> tuple[int, int]:
    """torch.cuda.mem_get_info(device), bytes free and in all, once the blocks PyTorch keeps
    cached (the load's temporary tensors, ~0.9 GB for a 135M GGUF; an earlier engine's) are
    given back, with those that garbage in reference cycles still holds (collected first, as
    vLLM does): they are free for the pool too."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)


def _bytes_tokens(cfg, device: torch.device, bytes_per_token: int, share: str | None) -> int:
    """The tokens of cfg.kv_cache_memory_bytes (kv_bytes.bytes_pool_tokens), the share
    given logged as not used; on a GPU, ValueError (kv_bytes.bytes_misfit) where the bytes
    are more than its free memory."""
    kv_bytes = cfg.kv_cache_memory_bytes
    tokens = bytes_pool_tokens(kv_bytes, bytes_per_token, cfg.max_model_len)
    if device.type == "cuda" and kv_bytes > (free := _free_memory(device)[0]):
        raise ValueError(bytes_misfit(kv_bytes, free, device))
    if share is not None:  # as vLLM's kv_cache_memory_bytes overrides its share
        log.info("the KV pool holds the %d tokens of %s %d: %s %s is not used", tokens,
                 named("kv_cache_memory_bytes"), kv_bytes, named(share), getattr(cfg, share))
    return tokens


def utilization_pool_tokens(utilization: float, free: int, total: int, in_use: int,
                            bytes_per_token: int) -> int:
    """KV pool tokens under vLLM's gpu_memory_utilization: this process's memory stays within
    utilization x total, so the pool gets that less what the process holds after loading
    (in_use: PyTorch's reserved memory once the cache is emptied: weights, request tables)
    less the headroom the default sizing keeps for activations, CUDA graphs and sampling,
    (1 - KV_MEMORY_FRACTION) x free; and never more than free less that headroom (another
    process's memory is not this one's to take). Bytes in, tokens out.

    Only this process's memory counts against the share, so two servers at 0.45 each share
    one GPU, as in vLLM; the CUDA context and libraries' workspaces (NCCL's, cuBLAS's: out of
    PyTorch's sight) come out of the headroom. Raises ValueError naming
    gpu_memory_utilization and the sizes (`byte_size`) when no token fits."""
    headroom = int(free * (1 - KV_MEMORY_FRACTION))
    budget = min(int(utilization * total) - in_use - headroom, free - headroom)
    if budget < bytes_per_token:
        raise ValueError(
            f"gpu_memory_utilization {utilization} leaves no room for the KV cache: "
            f"{utilization} x {byte_size(total)} = {byte_size(utilization * total)}, of "
            f"which this process holds {byte_size(in_use)} after loading and "
            f"{byte_size(headroom)} is kept for activations ({byte_size(free)} free); "
            "raise gpu_memory_utilization, or size the pool with kv_tokens (--kv-tokens)")
    return budget // bytes_per_token


def static_pool_tokens(name: str, fraction: float, free: int, total: int, in_use: int,
                       bytes_per_token: int, free_is: str = "free after loading") -> int:
    """KV pool tokens under SGLang's mem_fraction_static or LightLLM's mem_fraction (`name`;
    `fraction` in (0, 1]): the pool gets the memory free after loading (`free`) less
    (1 - fraction) of a whole, kept for activations, CUDA graphs and sampling. The whole is,
    as SGLang's ModelRunner.profile_max_num_token takes it, the memory free when this
    process started (free now plus what loading took, `in_use`: PyTorch's reserved memory,
    the weights), so that weights and pool stay within fraction x it; as LightLLM's
    MemoryManager.profile_size takes it, the GPU's `total`, so that every process's memory
    stays within fraction x total. Bytes in, tokens out. Raises ValueError naming `name`
    and the sizes (`byte_size`; `free` described as `free_is`) when no token fits."""
    whole, of = ((free + in_use, "the memory free at start") if name == "mem_fraction_static"
                 else (total, "the GPU's memory"))
    kept = int((1 - fraction) * whole)
    budget = free - kept
    if budget < bytes_per_token:
        raise ValueError(
            f"{name} {fraction} leaves no room for the KV cache: (1 - {fraction}) x "
            f"{byte_size(whole)} ({of}) = {byte_size(kept)} is kept for activations, more "
            f"than the {byte_size(free)} {free_is}; raise {name}, or size the pool "
            "with kv_tokens (--kv-tokens)")
    return budget // bytes_per_token


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
