"""The KV pool's size in tokens (pool_tokens): what the Engine and each tensor-parallel
follower allocate, from what the user gave, in this order: kv_tokens (--kv-tokens, LightLLM's
--max_total_token_num); vLLM's kv_cache_memory_bytes; on a GPU a share of its memory (vLLM's
gpu_memory_utilization, SGLang's mem_fraction_static, LightLLM's mem_fraction, else
kv_memory_fraction of the memory free after loading); on the CPU cpu_kv_tokens or a default
of full contexts. SGLang's max_total_tokens bounds the result, and so do int32 slot ids
(MAX_KV_TOKENS). aiollm/engine/kv_plan.py checks the same plan before the weights load;
aiollm/model/kv_pool.py allocates the pool.

vLLM's kv_cache_memory_bytes (`--kv-cache-memory-bytes`, LLM(kv_cache_memory_bytes=...)) is
the pool's size in bytes per GPU: it holds the bytes over one token's K and V on this rank
(KVPool.bytes_per_token: a rank's share of the KV heads under tensor parallelism), whole
tokens, as vLLM's worker takes the bytes as its KV cache's and skips its memory profile. Like
kv_tokens it is a size, not a share: it overrides the memory shares (logged as not used), and
on the CPU it sizes the pool too (vLLM's CPU backend sizes its KV cache in bytes,
VLLM_CPU_KVCACHE_SPACE). Nothing here keeps headroom for activations out of it: bytes that
leave a GPU too little for them fail as they allocate, as in vLLM.
"""

from __future__ import annotations

import gc
import logging

import torch

from aiollm.byte_size import byte_size
from aiollm.config import KV_MEMORY_FRACTION, MAX_KV_TOKENS, MEMORY_SHARES

log = logging.getLogger(__name__)


def pool_tokens(cfg, device: torch.device, bytes_per_token: int, max_position: int) -> int:
    """KV pool size in tokens for this process: what `_sized_tokens` gives, at most
    MAX_KV_TOKENS (slot ids are int32: req_to_token, the kernels' indices) and
    cfg.max_total_tokens (SGLang's --max-total-tokens, an upper bound: its pool is the
    smaller of it and what its memory fraction leaves, as ModelRunner.init_memory_pool
    takes them; a warning where the bound is the larger). The Engine and each
    tensor-parallel follower size theirs so. Arguments and errors as `_sized_tokens`'s."""
    tokens = _sized_tokens(cfg, device, bytes_per_token, max_position)
    size, cap = bounded_tokens(cfg, tokens), cfg.max_total_tokens
    if size == cap:  # before the cap's line: it would say a size the pool never has
        return size
    share = share_given(cfg)
    sizer = (f"{named('kv_cache_memory_bytes')} {cfg.kv_cache_memory_bytes}"
             if cfg.kv_cache_memory_bytes is not None
             else f"{named('cpu_kv_tokens')} {cfg.cpu_kv_tokens}"
             if device.type != "cuda" and cfg.cpu_kv_tokens is not None
             else "the CPU's default" if device.type != "cuda"  # no share has an effect
             else "the GPU's free memory" if share is None
             else f"{named(share)} {getattr(cfg, share)}")
    if size < tokens:  # a share of a large GPU, for a model of few bytes a token
        log.info("the KV pool holds %d tokens, the most its int32 slot ids address (%s "
                 "gives %d)", MAX_KV_TOKENS, sizer, tokens)
        return size
    if cap is None:
        return tokens
    # kv_tokens sizes a pool over any other size but the bytes, which refuse it beside them
    instead = (f"raise {named('kv_cache_memory_bytes')} for more"
               if cfg.kv_cache_memory_bytes is not None
               else "kv_tokens (--kv-tokens) sizes it instead")
    log.warning("max_total_tokens (--max-total-tokens) %d is more than the %d tokens %s leaves: "
                "the KV pool holds %d (%s)", cap, tokens, sizer, tokens, instead)
    return tokens


def bounded_tokens(cfg, tokens: int) -> int:
    """`tokens` (a pool's size before its bounds) at most cfg.max_total_tokens (SGLang's
    bound, itself at most MAX_KV_TOKENS: EngineConfig) and MAX_KV_TOKENS: the size
    pool_tokens gives, and kv_plan checks before loading."""
    return min(tokens, cfg.max_total_tokens or tokens, MAX_KV_TOKENS)


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
    cfg.kv_cache_memory_bytes over bytes_per_token when given (bytes_pool_tokens;
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
    # a size given leaves any share given unused, kv_memory_fraction (of the free memory) too
    unused = share or ("kv_memory_fraction" if cfg.kv_memory_fraction is not None else None)
    size = ("kv_tokens" if cfg.kv_tokens is not None else "kv_cache_memory_bytes"
            if cfg.kv_cache_memory_bytes is not None else None)
    if size is not None and device.type != "cuda" and cfg.cpu_kv_tokens is not None:
        log.info("%s sizes the KV pool on the CPU: %s %d is not used", named(size),
                 named("cpu_kv_tokens"), cfg.cpu_kv_tokens)  # as a share beside a size is
    if cfg.kv_tokens is not None:
        if unused is not None:  # as vLLM's kv_cache_memory_bytes overrides it (and
            # LightLLM's max_total_token_num its mem_fraction)
            log.info("the KV pool holds the %d tokens of kv_tokens (--kv-tokens): %s %s is "
                     "not used", cfg.kv_tokens, named(unused), getattr(cfg, unused))
        return cfg.kv_tokens
    if cfg.kv_cache_memory_bytes is not None:
        return _bytes_tokens(cfg, device, bytes_per_token, max_position, unused)
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


def _bytes_tokens(cfg, device: torch.device, bytes_per_token: int, max_position: int,
                  share: str | None) -> int:
    """The tokens of cfg.kv_cache_memory_bytes (bytes_pool_tokens; max_position: the
    model's context), the share given (`share`, an option of MEMORY_SHARES) logged as not
    used; on a GPU, ValueError (bytes_misfit) where the bytes are more than its free memory."""
    kv_bytes = cfg.kv_cache_memory_bytes
    tokens = bytes_pool_tokens(kv_bytes, bytes_per_token, cfg.max_model_len, max_position)
    if device.type == "cuda" and kv_bytes > (free := _free_memory(device)[0]):
        raise ValueError(bytes_misfit(kv_bytes, free, device))
    if share is not None:  # as vLLM's kv_cache_memory_bytes overrides its share
        log.info("the KV pool holds the %d tokens of %s %d: %s %s is not used", tokens,
                 named("kv_cache_memory_bytes"), kv_bytes, named(share), getattr(cfg, share))
    return tokens


def _sized(n: int) -> str:
    """n bytes as given, and read as people read them past 1 KiB: 65536 (64.00 KiB)."""
    return f"{n}" if n < 1024 else f"{n} ({byte_size(n)})"


def bytes_pool_tokens(kv_bytes: int, bytes_per_token: int, max_model_len: int | None = None,
                      context: int | None = None) -> int:
    """Tokens a KV pool of `kv_bytes` holds, K and V of `bytes_per_token` each (whole
    tokens, the rest of the bytes unused). Raises ValueError naming kv_cache_memory_bytes,
    the value and the bytes needed when they hold no token (and, with no max_model_len,
    those of one request of the model's `context` in tokens, where given: a pool of one
    token serves nothing), or less than one request of max_model_len tokens (as
    EngineConfig refuses a kv_tokens below it)."""
    tokens = kv_bytes // bytes_per_token
    least = max_model_len or 1
    if tokens >= least:
        return tokens
    need, flag = _sized(least * bytes_per_token), named("kv_cache_memory_bytes")
    if tokens < 1:
        full = ("" if max_model_len or not context else f", {_sized(context * bytes_per_token)}"
                f" for one request of the model's context of {context} tokens")
        raise ValueError(f"kv_cache_memory_bytes {_sized(kv_bytes)} holds no token: one token's K "
                         f"and V take {bytes_per_token} bytes; give {flag} at least {need}{full}")
    raise ValueError(f"kv_cache_memory_bytes {_sized(kv_bytes)} holds {tokens} tokens of "
                     f"{bytes_per_token} bytes (K and V), less than max_model_len "
                     f"{max_model_len}: the KV cache must hold one request of max_model_len "
                     f"tokens; give {flag} at least {need}, or max_model_len "
                     f"(--max-model-len) at most {tokens} (left out: the longest that fits)")


def bytes_misfit(kv_bytes: int, free: int, device, when: str = "free after loading") -> str:
    """The error of a kv_cache_memory_bytes past the bytes of `device` that are `free`
    (`when`: which free memory, for the message): the flag, the bytes asked and free, and
    what to change. Checked before the pool is allocated, which would fail out of memory
    or leave nothing for the step's activations."""
    return (f"kv_cache_memory_bytes {_sized(kv_bytes)} is more than the {_sized(free)} of "
            f"{device} {when}: lower {named('kv_cache_memory_bytes')}, or free memory on "
            f"{device}")


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
