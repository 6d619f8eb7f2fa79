"""The KV pool's own errors, on the CPU: a pool that cannot be allocated names its size
readably and what to change."""

from __future__ import annotations

import pytest
import torch

from aiollm.model.kv_pool import KVPool


def test_a_pool_past_the_memory_names_its_size_and_the_option():
    """2**48 token slots of 8 bytes (K and V of one float32 each): 2 PiB, past any address
    space, so numpy's calloc fails on every machine; the size read "2097152.0 GiB"."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu")
    message = str(e.value)
    assert message.startswith(f"a KV pool of {2**48} tokens (2.00 PiB) does not fit in the "
                              "memory of cpu: lower kv_tokens (--kv-tokens)"), message
    assert isinstance(e.value.__cause__, MemoryError)


GiB = 2**30
TOO_MANY = 2**31 - 2  # the most kv_tokens takes: 256 GiB of K and V of `tiny` in float32


def start_without_weights(monkeypatch, path: str, **options) -> None:
    """Start (and stop) an Engine on `path`; any load of weights fails the test: what the
    start raises before the weights are read."""
    import asyncio

    import aiollm.model
    from aiollm import Engine

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were read before the KV plan was checked")

    monkeypatch.setattr(aiollm.model, "load_model", no_load)

    async def start():
        async with Engine(path, **options):
            pass

    asyncio.run(start())


def test_a_kv_tokens_past_the_machines_memory_fails_before_the_weights_load(tiny,
                                                                            monkeypatch):
    """A --kv-tokens whose K and V (128 bytes a token: one layer, 2 KV heads of 8 float32)
    outgrow the machine's memory failed only after the weights loaded: minutes of a large
    model for a start that could never succeed."""
    with pytest.raises(ValueError) as e:
        start_without_weights(monkeypatch, tiny, load_format="dummy", device="cpu",
                              kv_tokens=TOO_MANY)
    assert str(e.value).startswith(f"a KV pool of {TOO_MANY} tokens (256.00 GiB) does not fit "
                                   "in the memory of cpu: lower kv_tokens (--kv-tokens) (the "
                                   "machine has "), str(e.value)


@pytest.fixture
def gpu_free(monkeypatch):
    """Patch torch.cuda's memory queries to report `set(free)` bytes free of 80 GiB."""
    state = {}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (state["free"], 80 * GiB))
    return lambda free: state.update(free=free)


def test_on_a_gpu_the_pool_and_the_weights_must_fit_the_free_memory(tiny, gpu_free):
    """The GPU's check, on its numbers (the memory queries patched): K and V of kv_tokens
    plus the weights' parameters at the run dtype, against the free memory."""
    from aiollm.config import EngineConfig
    from aiollm.engine.kv_plan import check_kv_plan
    from aiollm.model.hf_config import load_hf_config

    config = load_hf_config(tiny)
    weights = config.num_params() * 2  # bfloat16
    cfg = EngineConfig(model=tiny, kv_tokens=1000)  # 64 bytes a token in bfloat16
    gpu_free(weights + 64 * 1000)
    check_kv_plan(cfg, config, torch.device("cuda"), torch.bfloat16)  # exactly fits
    gpu_free(weights + 64 * 1000 - 1)
    with pytest.raises(ValueError) as e:
        check_kv_plan(cfg, config, torch.device("cuda"), torch.bfloat16)
    assert str(e.value) == ("a KV pool of 1000 tokens (62.50 KiB) does not fit in the memory "
                            "of cuda: lower kv_tokens (--kv-tokens) (6.08 MiB of cuda is free "
                            "before loading, and the weights take at least 6.02 MiB of it)")


@pytest.mark.gpu
def test_a_kv_tokens_past_the_gpus_memory_fails_before_the_weights_load(tiny, monkeypatch):
    """On a GPU (80 or 141 GB), the most kv_tokens of float32 `tiny` (256 GiB) is refused
    before any weight is read, with the text the pool's own allocation fails with."""
    with pytest.raises(ValueError, match=rf"^a KV pool of {TOO_MANY} tokens \(256\.00 GiB\) "
                       r"does not fit in the memory of cuda(:0)?: lower kv_tokens \(--kv-tokens"
                       r"\) \(.* of cuda(:0)? is free before loading"):
        start_without_weights(monkeypatch, tiny, load_format="dummy", device="cuda",
                              dtype="float32", kv_tokens=TOO_MANY)
