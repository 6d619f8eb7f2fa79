"""The KV pool's plan checked before the weights load: a plan that cannot work fails in a
moment, not after minutes of reading a large model.

What is known then: the model's config (layers, this rank's KV heads, head dim, context),
the run dtype, the device's memory (a GPU's free and total memory now; on the CPU the
machine's physical memory and swap) and a lower bound of the weights' bytes (their parameter count
at the run dtype). From these: weights that leave a GPU no room for the KV cache; a
kv_tokens (--kv-tokens) or kv_cache_memory_bytes the device cannot hold (or whose free
list, in host memory, the machine cannot), or too few of the latter for max_model_len;
on a GPU,
a gpu_memory_utilization share smaller than the weights (mem_fraction_static's or
mem_fraction's leaving no room), and the most tokens a pool sized
from memory can hold (what loading leaves free is at most the free memory now less the
weights) against max_model_len; on the CPU, the pool's exact size against max_model_len.
The pool itself is sized from the free memory measured after loading, and checked again
there (aiollm/engine/loading.py, kv_pool_size.pool_tokens): another process may take memory
meanwhile.
"""

from __future__ import annotations

import gc
import os

import torch

from aiollm.byte_size import byte_size
from aiollm.config import KV_MEMORY_FRACTION, EngineConfig
from aiollm.model.config import ModelConfig
from aiollm.model.kv_pool import KVPool, pool_misfit
from aiollm.model.kv_pool_size import (bounded_tokens, bytes_misfit, bytes_pool_tokens, named,
                                     share_given, static_pool_tokens)
from aiollm.model.parallel import local_config


def check_kv_plan(cfg: EngineConfig, config: ModelConfig, device: torch.device,
                  dtype: torch.dtype, tp=None) -> None:
    """Raise ValueError, with the text the same fault gets after loading, when the KV pool
    `cfg` plans for `config`'s model (this rank's part under `tp`; K and V in `dtype`)
    cannot work on `device`:
    - on a GPU, weights whose bytes leave no room in the free memory for one token's K and
      V (naming the weights, not an option of the pool's, which cannot help);
    - kv_cache_memory_bytes holding less than one request of max_model_len (or no token),
      or past a GPU's free memory now less the weights' (naming it: aiollm/model/kv_pool_size.py,
      the texts pool_tokens raises after loading); its tokens then checked as kv_tokens':
    - kv_tokens slots whose bytes are more than a GPU's free memory now less the weights'
      (the text KVPool raises, naming kv_tokens), or on the CPU, with the pool's free list
      (KVPool.HOST_BYTES_PER_TOKEN), more than the machine's physical memory and swap, as
      a CPU pool of cpu_kv_tokens too (or of max_total_tokens below it), each naming what
      sized it (_check_cpu_pool; `memory_limit`; weights not counted: a cached GGUF's are
      mapped from a file, and the pool's pages come lazily from calloc, so only a pool past
      all of memory and swap surely fails); on a GPU, a free list past the host's memory
      and swap (as KVPool's allocation of it words it);
    - gpu_memory_utilization x the GPU's total memory below the weights' bytes (naming
      gpu_memory_utilization, as utilization_pool_tokens does); SGLang's mem_fraction_static
      or LightLLM's mem_fraction leaving no room once the weights load (static_pool_tokens);
    - a pool that holds, or on a GPU can at most hold, fewer tokens than max_model_len
      (naming max_model_len and the option that sizes the pool: pool_short).
    max_model_len past the model's context is loader.check_checkpoint's error, which the
    start gives before this one."""
    if cfg.max_model_len is not None and cfg.max_model_len > config.max_position:
        return  # check_checkpoint refuses it, naming the model's context
    local = local_config(config, tp)
    per_token = KVPool.bytes_per_token(config.num_layers, local.num_kv_heads, config.head_dim,
                                       dtype)
    if device.type == "cuda":
        gc.collect()  # as pool_tokens: cached blocks and cyclic garbage's count as free
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        weights = local.num_params() * torch.empty((), dtype=dtype).element_size()
        if weights + per_token > free:  # no share or size of the pool can help
            half = " run in bfloat16 (--dtype bfloat16)," if dtype == torch.float32 else ""
            raise ValueError(
                f"the weights take at least {byte_size(weights)} in "
                f"{str(dtype).removeprefix('torch.')}, and {byte_size(free)} of {device} is "
                f"free now: no room is left for the KV cache; free memory on {device},{half} "
                "or split the model over more GPUs (--tensor-parallel-size)")
    else:
        free, total, weights = memory_limit(), None, 0  # total: a GPU's share's
    size = cfg.kv_tokens  # a size given, in tokens or (vLLM's) in bytes
    if (kv_bytes := cfg.kv_cache_memory_bytes) is not None:
        # the text pool_tokens raises: too few bytes for max_model_len, too many for the GPU
        size = bounded_tokens(cfg, bytes_pool_tokens(kv_bytes, per_token, cfg.max_model_len,
                                                     config.max_position))
        if device.type == "cuda" and kv_bytes + weights > free:
            raise ValueError(bytes_misfit(
                kv_bytes, free - weights, device, f"free once the weights load "
                f"({byte_size(free)} free before loading, less at least "
                f"{byte_size(weights)} of weights)"))
    if size is not None:
        need = size * per_token
        host = size * KVPool.HOST_BYTES_PER_TOKEN  # the free list's, on the host
        if device.type == "cuda":
            if need + weights > free:
                raise ValueError(f"{pool_misfit(size, need, device)}; "
                                 f"{byte_size(free)} of {device} is free before loading, "
                                 f"and the weights take at least {byte_size(weights)} of it")
            if host > (limit := memory_limit()):  # the text KVPool's allocation raises
                misfit = pool_misfit(size, host, torch.device("cpu"),
                                     pool_sizer(cfg, device, size), part="its free list")
                raise ValueError(f"{misfit}; the machine has {byte_size(limit)} of memory "
                                 "and swap")
        else:
            _check_cpu_pool(cfg, size, per_token, free)
        return  # EngineConfig holds kv_tokens to max_model_len, bytes_pool_tokens the bytes
    if device.type == "cpu":  # its size is known exactly: no memory is measured
        context = min([x for x in (config.max_position, cfg.max_model_len) if x])
        most, exact = cfg.cpu_pool_tokens(context), True
        if cfg.cpu_kv_tokens is not None:  # a size given, held as kv_tokens is (not the
            # default, at most CPU_KV_MAX_TOKENS: its pages come as it fills, and a model
            # that started with it starts); max_total_tokens bounds the pool (pool_tokens)
            _check_cpu_pool(cfg, bounded_tokens(cfg, most), per_token, free)
    else:
        room, exact = free - weights, False
        u = cfg.gpu_memory_utilization
        if u is not None:  # its pool is at most KV_MEMORY_FRACTION of the memory free after
            room = int(room * KV_MEMORY_FRACTION)  # loading (utilization_pool_tokens' headroom)
        if cfg.max_model_len is not None and room // per_token < cfg.max_model_len:
            # all of the memory free after loading is short: no share can help
            raise ValueError(pool_short(cfg, device, room // per_token, per_token,
                                        at_most=True, free_bound=True))
        if u is not None and u * total < weights + per_token:
            raise ValueError(
                f"gpu_memory_utilization {u} leaves no room for the KV cache: {u} x "
                f"{byte_size(total)} = {byte_size(u * total)}, and the weights take at least "
                f"{byte_size(weights)} of it; raise gpu_memory_utilization, or size the pool "
                "with kv_tokens (--kv-tokens)")
        if u is not None:
            most = int(min(u * total - weights, room)) // per_token
        elif (share := share_given(cfg)) is not None:  # SGLang's or LightLLM's share
            # what loading leaves free is at most room, and the memory free at start is
            # room + weights: the text static_pool_tokens raises when none fits
            most = static_pool_tokens(share, getattr(cfg, share), room, total, weights,
                                      per_token, "at most free after loading (free now less "
                                      "the weights)")
        else:
            most = int(room * (cfg.kv_memory_fraction or KV_MEMORY_FRACTION)) // per_token
    if cfg.max_model_len is not None and most < cfg.max_model_len:
        raise ValueError(pool_short(cfg, device, most, per_token, at_most=not exact))


def _check_cpu_pool(cfg: EngineConfig, tokens: int, per_token: int, limit: int) -> None:
    """Raise ValueError where a CPU pool of `tokens` slots (K and V of per_token bytes
    each, and the free list's KVPool.HOST_BYTES_PER_TOKEN) is past `limit`, the machine's
    memory and swap, naming what sized it (pool_sizer: kv_tokens, kv_cache_memory_bytes,
    cpu_kv_tokens, or max_total_tokens; cpu_kv_tokens passed unchecked, and its pool
    failed after loading)."""
    need, host = tokens * per_token, tokens * KVPool.HOST_BYTES_PER_TOKEN
    if need + host > limit:
        cpu = torch.device("cpu")
        raise ValueError(f"{pool_misfit(tokens, need, cpu, pool_sizer(cfg, cpu, tokens))}; "
                         f"the machine has {byte_size(limit)} of memory and swap, and the "
                         f"pool's free list takes {byte_size(host)} of it")


def pool_short(cfg: EngineConfig, device: torch.device, kv_tokens: int, per_token: int,
               at_most: bool = False, free_bound: bool = False) -> str:
    """The start-up error when a pool of kv_tokens (of per_token bytes each; sized from
    memory, kv_tokens itself EngineConfig checks; `at_most`: the most a pool can hold, known
    before loading) cannot hold one request of cfg.max_model_len tokens, which vLLM refuses
    too ("To serve at least one request with the model's max seq len..."): the numbers, and
    what to change (`free_bound`: kv_tokens is all a GPU's free memory holds, which no
    share of it can raise)."""
    if device.type == "cpu":  # only a cpu_kv_tokens below it sizes a CPU pool so
        more = "raise cpu_kv_tokens"
    elif free_bound:
        more = f"free memory on {device} (what the weights leave is too little for any share)"
    else:
        more = f"raise {named(memory_share(cfg))}"
    holds = "can hold at most" if at_most else "holds"
    return (f"the KV cache {holds} {kv_tokens} tokens ({byte_size(kv_tokens * per_token)}), "
            f"less than one request of max_model_len {cfg.max_model_len} tokens needs "
            f"({byte_size(cfg.max_model_len * per_token)}): lower max_model_len "
            f"(--max-model-len) to at most {kv_tokens} (or leave it out: the longest that "
            f"fits), or {more}")


def pool_sizer(cfg: EngineConfig, device: torch.device, kv_tokens: int) -> str | None:
    """The option that sized a pool of kv_tokens (kv_pool_size.pool_tokens' size, or under
    tensor parallelism the least any rank holds), for KVPool's errors to name: SGLang's
    max_total_tokens where the pool holds that bound (it was the smaller of it and what the
    memory gives); None where kv_tokens was given; kv_cache_memory_bytes where given;
    else on a GPU the memory share
    (memory_share), on the CPU cpu_kv_tokens where given (EngineConfig's keyword, no flag);
    None for the CPU's default sizing, which kv_tokens replaces."""
    if cfg.max_total_tokens is not None and kv_tokens == cfg.max_total_tokens:
        return "max_total_tokens"
    if cfg.kv_tokens is not None:
        return None
    if cfg.kv_cache_memory_bytes is not None:
        return "kv_cache_memory_bytes"
    if device.type == "cuda":
        return memory_share(cfg)
    return "cpu_kv_tokens" if cfg.cpu_kv_tokens is not None else None


def memory_share(cfg: EngineConfig) -> str:
    """The option that sizes a GPU's KV pool as a share of its memory: the one given
    (EngineConfig refuses two), else kv_memory_fraction, the default's."""
    return share_given(cfg) or "kv_memory_fraction"


def memory_limit(meminfo: str = "/proc/meminfo") -> int:
    """Bytes of memory a CPU pool can fill: on Linux, the physical memory and swap
    (MemTotal + SwapTotal of `meminfo`). One allocation past them fails under the default
    heuristic overcommit (vm.overcommit_memory 0), as the kernel's __vm_enough_memory
    refuses it; under 1 it is made, but its pages past them can never be written (the OOM
    killer ends a process first), so the plan cannot work either. Elsewhere, or with
    `meminfo` unreadable, the physical memory (sysconf's page count x page size)."""
    try:
        with open(meminfo) as f:
            kib = dict(line.split()[:2] for line in f if line.startswith(("MemTotal:",
                                                                           "SwapTotal:")))
        return (int(kib["MemTotal:"]) + int(kib.get("SwapTotal:", 0))) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
