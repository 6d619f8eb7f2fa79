"""What sized the KV pool, and what its plan, errors and log lines say of it. A CPU pool sized
by cpu_kv_tokens (EngineConfig's, LLM(...)'s keyword; no serve flag): the KV plan holds it to
the machine's memory before the weights load, as it holds kv_tokens, and the errors name
cpu_kv_tokens, the option that sized it, not kv_tokens, which was not given. A pool sized
from a GPU's memory past MAX_KV_TOKENS under SGLang's max_total_tokens: the bound sizes it."""

from __future__ import annotations

import pytest
import torch

from aiollm.config import MAX_KV_TOKENS, EngineConfig
from aiollm.model.kv_pool import KVPool

PER_TOKEN = 128  # `tiny`'s K and V in float32: one layer, 2 KV heads of 8
HOST = KVPool.HOST_BYTES_PER_TOKEN  # its free list's


def test_a_cpu_kv_tokens_past_the_memory_is_refused_naming_it(cpu_plan):
    """cpu_kv_tokens passed the plan whatever its size (kv_tokens' memory check skipped
    it): KVPool's allocation failed after the weights loaded, or calloc's lazy pages
    passed it and the free list's arange filled the machine's memory."""
    cpu_plan((PER_TOKEN + HOST) * 1000, cpu_kv_tokens=1000)  # exactly fits
    with pytest.raises(ValueError) as e:
        cpu_plan((PER_TOKEN + HOST) * 1000 - 1, cpu_kv_tokens=1000)
    assert str(e.value) == ("a KV pool of 1000 tokens (125.00 KiB) does not fit in the memory "
                            "of cpu: lower cpu_kv_tokens; the machine has 133.79 KiB of memory "
                            "and swap, and the pool's free list takes 8.79 KiB of it"), e.value


def test_max_total_tokens_below_cpu_kv_tokens_is_the_pool_the_plan_holds(cpu_plan):
    """SGLang's max_total_tokens bounds the pool (kv_pool_size.pool_tokens): a cpu_kv_tokens
    past the memory under a bound that fits still starts; a bound past it is what to lower."""
    cpu_plan((PER_TOKEN + HOST) * 1000, cpu_kv_tokens=MAX_KV_TOKENS, max_total_tokens=1000)
    with pytest.raises(ValueError) as e:
        cpu_plan((PER_TOKEN + HOST) * 1000, cpu_kv_tokens=MAX_KV_TOKENS, max_total_tokens=1001)
    assert "lower max_total_tokens (--max-total-tokens); the machine" in str(e.value), e.value
    # the default's size (pages filled as it is used) is not held: a start that ran, runs
    cpu_plan(1)
    cpu_plan(1, max_total_tokens=1000)
    # kv_tokens, given, sizes the pool whatever cpu_kv_tokens says (as before)
    cpu_plan((PER_TOKEN + HOST) * 1000, cpu_kv_tokens=MAX_KV_TOKENS, kv_tokens=1000)


@pytest.mark.parametrize("options, tokens, sizer", [
    ({"cpu_kv_tokens": 1000}, 1000, "cpu_kv_tokens"),
    ({"cpu_kv_tokens": 1000, "max_total_tokens": 900}, 900, "max_total_tokens"),
    ({"cpu_kv_tokens": 1000, "kv_tokens": 800}, 800, None),
])
def test_the_cpu_pool_names_cpu_kv_tokens_where_it_sized_it(options, tokens, sizer):
    """pool_sizer, what KVPool's error names: a CPU pool of cpu_kv_tokens that failed to
    allocate said "lower kv_tokens (--kv-tokens)", an option not given; the keyword has no
    flag, so none is named in brackets."""
    from aiollm.engine.kv_plan import pool_sizer

    assert pool_sizer(EngineConfig(**options), torch.device("cpu"), tokens) == sizer


def test_a_cpu_kv_tokens_pool_that_fails_to_allocate_names_it():
    """2**48 slots, past any address space: KVPool's own error, sized by cpu_kv_tokens."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu", sized_by="cpu_kv_tokens")
    assert str(e.value).endswith("memory of cpu: lower cpu_kv_tokens"), e.value


def test_an_engine_start_refuses_it_before_the_weights_load(tiny, monkeypatch):
    """The Engine's start (LLM's too) on the CPU: the most cpu_kv_tokens EngineConfig
    takes (256 GiB of `tiny`'s K and V) stops before any weight is read."""
    import asyncio

    import aiollm.model
    from aiollm import Engine

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were read before the KV plan was checked")

    monkeypatch.setattr(aiollm.model, "load_model", no_load)

    async def start():
        async with Engine(tiny, load_format="dummy", device="cpu", cpu_kv_tokens=MAX_KV_TOKENS):
            pass

    with pytest.raises(ValueError) as e:
        asyncio.run(start())
    assert str(e.value).startswith(f"a KV pool of {MAX_KV_TOKENS} tokens (256.00 GiB) does "
                                   "not fit in the memory of cpu: lower cpu_kv_tokens; the "
                                   "machine has "), e.value


def test_the_int32_cap_is_not_logged_where_max_total_tokens_sizes_the_pool(gpu_memory,
                                                                           caplog):
    """pool_tokens capped the memory's tokens at MAX_KV_TOKENS, logging "the KV pool holds
    2147483646 tokens", before max_total_tokens bounded the pool to 1000: the line said a
    size the pool never had. A bound under the memory's tokens is the pool, said by no line
    (the cap's line, where no bound is given: test_gpu_memory_utilization.py)."""
    import logging

    from aiollm.model.kv_pool_size import pool_tokens

    gpu_memory(free=80, total=100, reserved=1)  # 16 bytes a token: billions of them
    cuda = torch.device("cuda")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert pool_tokens(EngineConfig(max_total_tokens=1000), cuda, 16, 8192) == 1000
    assert "the KV pool holds" not in caplog.text, caplog.text


@pytest.mark.parametrize("sized_by, said", [
    ("max_total_tokens", "lower max_total_tokens (--max-total-tokens)"),
    ("cpu_kv_tokens", "lower cpu_kv_tokens"),
    ("mem_fraction_static",
     "lower kv_tokens (--kv-tokens) or mem_fraction_static (--mem-fraction-static)"),
])
def test_a_free_list_past_the_host_memory_names_what_sized_the_pool(sized_by, said):
    """The free list's error said "lower kv_tokens (--kv-tokens)" whatever sized the pool:
    for a pool of --max-total-tokens, advice that is itself a usage error (EngineConfig
    takes one of the two). K and V on the meta device take no memory: only the free list
    (2.25 PiB of host memory) fails."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "meta", sized_by=sized_by)
    assert str(e.value).endswith(f"does not fit in the memory of cpu: {said}"), e.value


def test_a_cpu_kv_tokens_pool_below_the_context_says_to_raise_cpu_kv_tokens(tiny, caplog):
    """The start-up warning of a pool shorter than the model's context (`tiny`'s 256) told
    LLM(cpu_kv_tokens=64)'s user to "raise kv_tokens (--kv-tokens) or, on a GPU,
    kv_memory_fraction": neither was given; cpu_kv_tokens, which sized the pool, is what to
    raise (as pool_short and KVPool's errors name it)."""
    import asyncio
    import logging

    from aiollm import Engine

    async def start() -> None:
        async with Engine(tiny, device="cpu", load_format="dummy", warm_up=False,
                          cpu_kv_tokens=64):
            pass

    with caplog.at_level(logging.WARNING, logger="aiollm"):
        asyncio.run(start())
    said = [r.getMessage() for r in caplog.records
            if "less than the model's context" in r.getMessage()]
    assert len(said) == 1 and "; raise cpu_kv_tokens, or give max_model_len" in said[0], said


def test_a_bound_past_cpu_kv_tokens_names_cpu_kv_tokens(caplog):
    """max_total_tokens past a CPU pool of cpu_kv_tokens: the warning said the tokens "the
    CPU's default leaves", a default the keyword had replaced."""
    import logging

    from aiollm.model.kv_pool_size import pool_tokens

    with caplog.at_level(logging.WARNING, logger="aiollm"):
        cfg = EngineConfig(cpu_kv_tokens=1000, max_total_tokens=5000)
        assert pool_tokens(cfg, torch.device("cpu"), PER_TOKEN, 256) == 1000
    assert "is more than the 1000 tokens cpu_kv_tokens 1000 leaves" in caplog.text, caplog.text
