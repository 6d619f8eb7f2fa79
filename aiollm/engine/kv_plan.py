"""The KV pool's plan checked before the weights load: a kv_tokens (--kv-tokens) that the
device's memory cannot hold fails in a moment, not after minutes of reading a large model.

What is known then: the model's config (layers, this rank's KV heads, head dim), the run
dtype, the device's memory (a GPU's free memory now; on the CPU the machine's physical
memory) and a lower bound of the weights' bytes (their parameter count at the run dtype). A
pool sized from memory (kv_memory_fraction, gpu_memory_utilization) needs the free memory
measured after loading, and is checked there (aiollm/engine/loading.py, kv_pool.pool_tokens);
max_model_len against the model's context load_model checks before reading weights.
"""

from __future__ import annotations

import gc
import os

import torch

from aiollm.byte_size import byte_size
from aiollm.config import EngineConfig
from aiollm.model.config import ModelConfig
from aiollm.model.kv_pool import KVPool, pool_misfit
from aiollm.model.parallel import local_config


def check_kv_plan(cfg: EngineConfig, config: ModelConfig, device: torch.device,
                  dtype: torch.dtype, tp=None) -> None:
    """Raise ValueError naming kv_tokens (the text KVPool raises when the allocation fails)
    when cfg.kv_tokens token slots of K and V (KVPool.bytes_per_token of `config`'s layers,
    this rank's KV heads under `tp`, head dim, `dtype`) cannot fit `device`: on a GPU, more
    than its free memory now less the weights' parameters at `dtype` (a lower bound of what
    loading takes); on the CPU, more than the machine's physical memory (the weights are not
    counted: a cached GGUF's are mapped from a file, and the pool's pages come lazily from
    calloc, so only a pool past all of memory is sure not to fit). Nothing to check
    when cfg.kv_tokens is None."""
    if cfg.kv_tokens is None:
        return
    local = local_config(config, tp)
    need = cfg.kv_tokens * KVPool.bytes_per_token(config.num_layers, local.num_kv_heads,
                                                  config.head_dim, dtype)
    if device.type == "cuda":
        gc.collect()  # as pool_tokens: cached blocks and cyclic garbage's count as free
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(device)[0]
        weights = local.num_params() * torch.empty((), dtype=dtype).element_size()
        where = (f"{byte_size(free)} of {device} is free before loading, and the weights "
                 f"take at least {byte_size(weights)} of it")
    else:
        free, weights = physical_memory(), 0
        where = f"the machine has {byte_size(free)} of memory"
    if need + weights > free:
        raise ValueError(f"{pool_misfit(cfg.kv_tokens, need, device, given=True)} ({where})")


def physical_memory() -> int:
    """Bytes of physical memory of this machine (sysconf's page count x page size)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
