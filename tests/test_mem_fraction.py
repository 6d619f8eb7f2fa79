"""SGLang's mem_fraction_static (`--mem-fraction-static F`) and LightLLM's mem_fraction
(`--mem_fraction F`) size the KV pool as those engines do: SGLang keeps the process's weights
and pool within F x the memory free when it started, LightLLM the GPU's memory in use within
F x its total; each is one of the shares of GPU memory EngineConfig takes one of. SGLang's
max_total_tokens (`--max-total-tokens N`) bounds the pool those shares size, as SGLang's does.

The sizing tests are unit tests of the arithmetic, as tests/test_gpu_memory_utilization.py's:
torch.cuda's memory queries are patched to given numbers (conftest's gpu_memory; no GPU
here)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

import pytest
import torch

from aiollm.config import KV_MEMORY_FRACTION, EngineConfig
from aiollm.model.kv_pool_size import pool_tokens

GiB = 2**30
MiB = 2**20  # bytes per token slot in these tests: tokens are MiB of pool


def tokens(**options) -> int:
    return pool_tokens(EngineConfig(**options), torch.device("cuda"), MiB, 8192)


def test_sglang_keeps_weights_and_pool_within_the_share_of_what_was_free(gpu_memory):
    # 100 GiB GPU, 4 GiB of CUDA context and the like, then 16 GiB of weights: 80 GiB free
    # after loading, 96 free at start. SGLang keeps (1 - 0.9) x 96 = 9.6 GiB back: the
    # pool is 80 - 9.6 = 70.4 GiB, so weights and pool are 86.4 = 0.9 x 96
    gpu_memory(free=80, total=100, reserved=16)
    assert tokens(mem_fraction_static=0.9) == int(70.4 * 1024)
    assert tokens(mem_fraction_static=0.5) == 32 * 1024  # 80 - 48


def test_lightllm_keeps_the_memory_in_use_within_the_share_of_the_total(gpu_memory):
    # LightLLM keeps (1 - 0.9) x 100 = 10 GiB back: the pool is 80 - 10 = 70 GiB, and the
    # memory in use (20 before, every process's) 90 = 0.9 x 100
    gpu_memory(free=80, total=100, reserved=16)
    assert tokens(mem_fraction=0.9) == 70 * 1024
    assert tokens(mem_fraction=0.5) == 30 * 1024


def test_another_process_memory_counts_for_lightllm_not_for_sglang(gpu_memory):
    # another server holds 50 GiB: 30 free after loading, 46 when this one started
    gpu_memory(free=30, total=100, reserved=16)
    assert tokens(mem_fraction_static=0.9) == int((30 - 4.6) * 1024)
    assert tokens(mem_fraction=0.9) == 20 * 1024


@pytest.mark.parametrize("options, says", [
    ({"mem_fraction_static": 0.5},
     "mem_fraction_static 0.5 leaves no room for the KV cache: (1 - 0.5) x 36.00 GiB (the "
     "memory free at start) = 18.00 GiB is kept for activations, more than the 16.00 GiB"),
    ({"mem_fraction": 0.8},
     "mem_fraction 0.8 leaves no room for the KV cache: (1 - 0.8) x 100.00 GiB (the GPU's "
     "memory) = 20.00 GiB is kept for activations, more than the 16.00 GiB free"),
])
def test_a_share_that_leaves_no_room_names_the_option_and_the_sizes(gpu_memory, options, says):
    gpu_memory(free=16, total=100, reserved=20)
    with pytest.raises(ValueError) as e:
        tokens(**options)
    assert str(e.value).startswith(says), str(e.value)
    assert "raise" in str(e.value) and "kv_tokens (--kv-tokens)" in str(e.value)


def test_kv_tokens_wins_over_the_share(gpu_memory, caplog):
    """As SGLang's max_total_tokens and LightLLM's max_total_token_num override theirs."""
    gpu_memory(free=80, total=100, reserved=16)
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert tokens(mem_fraction=0.9, kv_tokens=4096) == 4096
    assert "mem_fraction (--mem-fraction) 0.9 is not used" in caplog.text


def test_sglangs_max_total_tokens_caps_the_pool_the_memory_gives(gpu_memory, caplog):
    """SGLang's --max-total-tokens is an upper bound: its pool is the smaller of it and what
    mem_fraction_static leaves (ModelRunner.init_memory_pool's min, with a warning where
    the bound is the larger), where LightLLM's max_total_token_num (kv_tokens) is the
    pool's size; it was taken as kv_tokens, a pool of that size whatever the memory."""
    gpu_memory(free=80, total=100, reserved=16)
    assert tokens(mem_fraction_static=0.9, max_total_tokens=4096) == 4096
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        assert tokens(mem_fraction_static=0.9, max_total_tokens=100 * 1024) == 72089
    assert ("max_total_tokens (--max-total-tokens) 102400 is more than the 72089 tokens "
            "mem_fraction_static (--mem-fraction-static) 0.9 leaves: the KV pool holds 72089"
            ) in caplog.text
    # aiollm's default share, and the CPU's pool, are bounded alike
    assert tokens(max_total_tokens=10**6) == int(80 * GiB * KV_MEMORY_FRACTION) // MiB
    cpu = pool_tokens(EngineConfig(max_total_tokens=300, max_model_len=256),
                      torch.device("cpu"), MiB, 8192)
    assert cpu == 300 < EngineConfig().cpu_pool_tokens(256)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        cpu = pool_tokens(EngineConfig(max_total_tokens=10**5, mem_fraction_static=0.9),
                          torch.device("cpu"), MiB, 256)
    assert cpu == EngineConfig().cpu_pool_tokens(256)
    assert f"the {cpu} tokens the CPU's default leaves" in caplog.text  # the share: no effect


def test_a_pool_bounded_below_the_context_says_to_raise_the_bound(tmp_path, caplog):
    """The start-up warning of a pool shorter than the model's context names what bounds
    it: max_total_tokens, not kv_tokens or a memory share, which would change nothing."""
    import asyncio

    from aiollm import Engine
    from conftest import tiny_llama

    async def start() -> int:
        async with Engine(tiny_llama(tmp_path / "tiny"), device="cpu", load_format="dummy",
                          warm_up=False, max_total_tokens=64) as engine:
            return engine.config.max_model_len or 0

    with caplog.at_level(logging.WARNING, logger="aiollm"):
        asyncio.run(start())
    said = [r.getMessage() for r in caplog.records if "less than the model's context" in
            r.getMessage()]
    assert len(said) == 1 and "raise max_total_tokens (--max-total-tokens)" in said[0], said


@pytest.mark.parametrize("options, says", [
    ({"max_total_tokens": 0}, "max_total_tokens must be in [1, "),
    ({"max_total_tokens": 100, "kv_tokens": 200}, "give one of kv_tokens"),
    ({"max_total_tokens": 100, "max_model_len": 200},
     "max_total_tokens 100 is less than max_model_len 200"),
])
def test_a_bad_max_total_tokens_is_refused_naming_it(options, says):
    with pytest.raises(ValueError) as e:
        EngineConfig(**options)
    assert str(e.value).startswith(says), str(e.value)


def test_the_share_has_no_effect_on_the_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="aiollm"):
        n = pool_tokens(EngineConfig(mem_fraction_static=0.8, max_model_len=512),
                        torch.device("cpu"), MiB, 8192)
    assert n == EngineConfig().cpu_pool_tokens(512)
    assert "mem_fraction_static (--mem-fraction-static) 0.8 has no effect on the CPU" in caplog.text


@pytest.mark.parametrize("options, says", [
    ({"mem_fraction_static": 0.0}, "mem_fraction_static must be in (0, 1], got 0.0"),
    ({"mem_fraction": float("nan")}, "mem_fraction must be in (0, 1], got nan"),
    ({"mem_fraction": 0.9, "mem_fraction_static": 0.8},
     "give one of mem_fraction_static (SGLang's: the weights' and KV pool's share of the "
     "memory free at start) and mem_fraction (LightLLM's"),
    ({"kv_memory_fraction": 0.5, "mem_fraction": 0.8}, "give one of kv_memory_fraction"),
])
def test_a_bad_or_second_share_is_refused_naming_the_options(options, says):
    with pytest.raises(ValueError) as e:
        EngineConfig(**options)
    assert str(e.value).startswith(says), str(e.value)


def test_tensor_parallel_followers_get_the_options():
    """Followers rebuild the EngineConfig from its JSON and size their pools with
    pool_tokens, as rank 0 does."""
    for cfg in (EngineConfig(mem_fraction_static=0.7), EngineConfig(mem_fraction=0.6)):
        assert EngineConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg


def _test_tokenizer() -> dict:
    """Engine's tokenizer option on the GPU machine, which has no default model: the
    tokenizer saved from it that AIOLLM_TEST_TOKENIZER names, if given."""
    tok = os.environ.get("AIOLLM_TEST_TOKENIZER")
    return {"tokenizer": tok} if tok else {}


@pytest.mark.gpu
@pytest.mark.parametrize("share", ["mem_fraction", "mem_fraction_static"])
def test_the_gpu_memory_held_is_the_share_given(tmp_path, share):
    """On a real GPU: with LightLLM's mem_fraction 0.5 the GPU's memory in use once the
    pool is allocated is half its total; with SGLang's mem_fraction_static 0.5 this
    process's PyTorch memory (weights and pool) is half what was free before it loaded.
    Within 1 GiB: the request table, req_to_token and libraries' workspaces are outside the
    arithmetic. No warm-up and no CUDA graphs, whose activations the share leaves room for
    but these numbers would then count."""
    import asyncio

    from aiollm import Engine
    from conftest import tiny_llama

    model = tiny_llama(tmp_path / "tiny", hidden_size=256, num_hidden_layers=2)
    torch.cuda.init()
    free_before, total = torch.cuda.mem_get_info()

    async def held() -> tuple[int, int]:
        eng = Engine(model, device="cuda", dtype="bfloat16", load_format="dummy",
                     warm_up=False, cuda_graph=False, **{share: 0.5}, **_test_tokenizer())
        await eng.start()
        try:
            free, _ = torch.cuda.mem_get_info()
            return total - free, torch.cuda.memory_reserved()
        finally:
            await eng.stop()

    in_use, reserved = asyncio.run(held())
    if share == "mem_fraction":
        assert abs(in_use - 0.5 * total) < GiB, (in_use, total)
    else:
        assert abs(reserved - 0.5 * free_before) < GiB, (reserved, free_before)


@pytest.mark.gpu
def test_max_total_tokens_bounds_the_gpu_pool(tmp_path):
    """On a real GPU: SGLang's max_total_tokens bounds the pool mem_fraction_static sizes
    (a 64-token pool, where the share alone gives a GPU's worth), and a bound above what
    the share leaves is the share's pool (no allocation past it)."""
    import asyncio

    from aiollm import Engine
    from conftest import tiny_llama

    model = tiny_llama(tmp_path / "tiny", hidden_size=256, num_hidden_layers=2)

    async def capacity(**options) -> int:
        async with Engine(model, device="cuda", dtype="bfloat16", load_format="dummy",
                          warm_up=False, cuda_graph=False, **options,
                          **_test_tokenizer()) as engine:
            return engine.stats()["kv_total"]

    shared = asyncio.run(capacity(mem_fraction_static=0.5))
    assert asyncio.run(capacity(mem_fraction_static=0.5, max_total_tokens=64)) == 64
    above = asyncio.run(capacity(mem_fraction_static=0.5, max_total_tokens=shared * 2))
    assert abs(above - shared) <= shared // 100, (above, shared)
