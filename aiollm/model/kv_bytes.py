"""vLLM's kv_cache_memory_bytes (`--kv-cache-memory-bytes`, LLM(kv_cache_memory_bytes=...)):
the KV pool sized in bytes per GPU rather than from a share of its memory.

The pool holds the bytes over one token's K and V on this rank (KVPool.bytes_per_token: a
rank's share of the KV heads under tensor parallelism), whole tokens, as vLLM's worker takes
the bytes as its KV cache's and skips its memory profile. Like kv_tokens it is a size, not a
share: it overrides the memory shares (gpu_memory_utilization...), which kv_pool logs as not
used, and on the CPU it sizes the pool too (vLLM's CPU backend sizes its KV cache in bytes,
VLLM_CPU_KVCACHE_SPACE). Nothing here keeps headroom for activations: bytes that leave a
GPU too little for them fail as they allocate, as in vLLM.
"""

from __future__ import annotations

from aiollm.byte_size import byte_size

NAMED = "kv_cache_memory_bytes (--kv-cache-memory-bytes)"  # kv_pool.named's form


def _sized(n: int) -> str:
    """n bytes as given, and read as people read them past 1 KiB: 65536 (64.00 KiB)."""
    return f"{n}" if n < 1024 else f"{n} ({byte_size(n)})"


def bytes_pool_tokens(kv_bytes: int, bytes_per_token: int,
                      max_model_len: int | None = None) -> int:
    """Tokens a KV pool of `kv_bytes` holds, K and V of `bytes_per_token` each (whole
    tokens, the rest of the bytes unused). Raises ValueError naming kv_cache_memory_bytes,
    the value and the bytes needed when they hold no token, or less than one request of
    max_model_len tokens (as EngineConfig refuses a kv_tokens below it)."""
    tokens = kv_bytes // bytes_per_token
    least = max_model_len or 1
    if tokens >= least:
        return tokens
    need = _sized(least * bytes_per_token)
    if tokens < 1:
        raise ValueError(f"kv_cache_memory_bytes {_sized(kv_bytes)} holds no token: one token's K "
                         f"and V take {bytes_per_token} bytes; give {NAMED} at least {need}")
    raise ValueError(f"kv_cache_memory_bytes {_sized(kv_bytes)} holds {tokens} tokens of "
                     f"{bytes_per_token} bytes (K and V), less than max_model_len "
                     f"{max_model_len}: the KV cache must hold one request of max_model_len "
                     f"tokens; give {NAMED} at least {need}, or max_model_len "
                     f"(--max-model-len) at most {tokens} (left out: the longest that fits)")


def bytes_misfit(kv_bytes: int, free: int, device, when: str = "free after loading") -> str:
    """The error of a kv_cache_memory_bytes past the bytes of `device` that are `free`
    (`when`: which free memory, for the message): the flag, the bytes asked and free, and
    what to change. Checked before the pool is allocated, which would fail out of memory
    or leave nothing for the step's activations."""
    return (f"kv_cache_memory_bytes {_sized(kv_bytes)} is more than the {_sized(free)} of "
            f"{device} {when}: lower {NAMED}, or free memory on {device}")
