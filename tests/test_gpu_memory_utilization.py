"""vLLM's gpu_memory_utilization (`--gpu-memory-utilization U`, LLM(gpu_memory_utilization=U)):
the flag and keyword reach EngineConfig, conflicting sizings are refused, and the KV pool
size follows vLLM's meaning on a GPU and is left alone on the CPU.

The GPU sizing tests are unit tests of the arithmetic: torch.cuda's memory queries are
patched to given numbers (no GPU here); whether a real GPU then stays within U x its memory
is for a GPU run to show."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pytest
import torch

from aiollm import LLM
from aiollm.cli import build_parser
from aiollm.cli.serve_checks import checked_config
from aiollm.config import EngineConfig
from aiollm.model.kv_pool_size import pool_tokens

GiB = 2**30
MiB = 2**20  # bytes per token slot in these tests: tokens are MiB of pool


def serve_config(line: str) -> EngineConfig:
    args = build_parser().parse_args(["serve", "M", *line.split()])
    return checked_config(args.command_parser, args)[0]


def test_the_flag_sets_the_option():
    assert serve_config("--gpu-memory-utilization 0.5").gpu_memory_utilization == 0.5
    assert serve_config("").gpu_memory_utilization is None


@pytest.mark.parametrize("line, says", [
    ("--gpu-memory-utilization 1.5", "argument --gpu-memory-utilization: gpu_memory_utilization must be in (0, 1], got 1.5"),
    ("--gpu-memory-utilization 0", "must be in (0, 1], got 0.0"),
    ("--gpu-memory-utilization nan", "must be in (0, 1], got nan"),
    ("--gpu-memory-utilization 0.9 --kv-memory-fraction 0.5",
     "error: give one of --gpu-memory-utilization (vLLM's: the whole process's share"),
    ("--kv-memory-fraction 0.5 --gpu-memory-utilization 0.9",
     "and --kv-memory-fraction (the KV pool's share of the memory free after loading), got "
     "0.9 and 0.5"),
])
def test_a_bad_or_conflicting_value_is_a_usage_error(line, says, capsys):
    with pytest.raises(SystemExit) as e:
        serve_config(line)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_the_keywords_conflict_named_as_keywords():
    with pytest.raises(ValueError, match=r"^give one of gpu_memory_utilization \(vLLM's"):
        LLM(None, device="cpu", gpu_memory_utilization=0.9, kv_memory_fraction=0.5)


def test_the_keyword_is_taken_and_has_no_effect_on_the_cpu(caplog):
    """lm-eval-harness passes gpu_memory_utilization=0.9 on every call."""
    with caplog.at_level(logging.INFO, logger="aiollm"):
        with LLM(None, device="cpu", gpu_memory_utilization=0.9, max_model_len=512) as llm:
            assert llm.engine.config.gpu_memory_utilization == 0.9
            assert llm.engine.kv_pool.capacity == EngineConfig().cpu_pool_tokens(512)
    said = [r.getMessage() for r in caplog.records]
    assert said.count("gpu_memory_utilization (--gpu-memory-utilization) 0.9 has no effect on the "
                      "CPU") == 1, said


def test_tensor_parallel_followers_get_the_option():
    """Followers rebuild the EngineConfig from its JSON (distributed/launch.py) and size
    their pools with pool_tokens, as rank 0 does."""
    cfg = EngineConfig(gpu_memory_utilization=0.7)
    assert EngineConfig(**json.loads(json.dumps(asdict(cfg)))).gpu_memory_utilization == 0.7


def tokens(**options) -> int:
    return pool_tokens(EngineConfig(**options), torch.device("cuda"), MiB, 8192)


def test_the_pool_is_the_share_less_the_weights_and_the_headroom(gpu_memory):
    # 100 GiB GPU, 16 GiB of weights, 4 GiB of CUDA context and the like: 80 GiB free
    gpu_memory(free=80, total=100, reserved=16)
    # the default: 0.85 x 80 GiB free = 68 GiB; 12 GiB of headroom
    assert tokens() == 68 * 1024
    assert tokens(kv_memory_fraction=0.5) == 40 * 1024
    # 0.9 x 100 = 90 GiB, less 16 of weights, less the same 12 GiB headroom: 62 GiB
    assert tokens(gpu_memory_utilization=0.9) == 62 * 1024
    assert tokens(gpu_memory_utilization=0.5) == 22 * 1024


def test_another_process_memory_is_not_counted_against_the_share(gpu_memory):
    # a second server already holds 50 GiB: 30 GiB free; 0.45 x 100 less 16 of weights
    # less 0.15 x 30 = 4.5 of headroom: 24.5 GiB (two servers at 0.45 share the GPU)
    gpu_memory(free=30, total=100, reserved=16)
    assert tokens(gpu_memory_utilization=0.45) == int(24.5 * 1024)
    # but the pool never takes more than the free memory less the headroom: 25.5 GiB
    assert tokens(gpu_memory_utilization=1.0) == int(25.5 * 1024)


def test_a_share_that_leaves_no_room_names_the_option_and_the_sizes(gpu_memory):
    gpu_memory(free=80, total=100, reserved=16)
    with pytest.raises(ValueError) as e:
        tokens(gpu_memory_utilization=0.2)
    message = str(e.value)
    assert message.startswith("gpu_memory_utilization 0.2 leaves no room for the KV cache")
    for size in ("100.00 GiB", "= 20.00 GiB", "holds 16.00 GiB", "12.00 GiB is kept",
                 "80.00 GiB free"):
        assert size in message, (size, message)


def test_a_small_gpu_share_names_its_sizes_in_units_that_show_them(gpu_memory):
    """A 1 GiB GPU (a MIG slice, a test's budget): the sizes read in MiB, where a fixed GiB
    with two decimals read the 30 MiB of headroom as "0.03 GiB"."""
    gpu_memory(free=200 / 1024, total=1, reserved=100 / 1024)
    with pytest.raises(ValueError) as e:
        tokens(gpu_memory_utilization=0.1)
    message = str(e.value)
    for size in ("0.1 x 1.00 GiB = 102.40 MiB", "holds 100.00 MiB", "30.00 MiB is kept",
                 "(200.00 MiB free)"):
        assert size in message, (size, message)


def test_kv_tokens_wins_over_the_share(gpu_memory, caplog):
    """As vLLM's kv_cache_memory_bytes overrides its gpu_memory_utilization: lm-eval-harness
    passes the share always, and kv_tokens must still size the pool."""
    gpu_memory(free=80, total=100, reserved=16)
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert tokens(gpu_memory_utilization=0.2, kv_tokens=4096) == 4096
    assert "gpu_memory_utilization (--gpu-memory-utilization) 0.2 is not used" in caplog.text


@pytest.mark.parametrize("options, says", [
    ({}, "on a GPU, kv_memory_fraction"),
    ({"gpu_memory_utilization": 0.9}, "on a GPU, gpu_memory_utilization"),
])
def test_a_pool_short_of_the_context_names_the_option_to_raise(options, says, caplog):
    """The advice when the pool holds less than the context: kv_memory_fraction beside
    gpu_memory_utilization is refused, so the share the user gave is the one to raise."""
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        with LLM(None, device="cpu", kv_tokens=100, **options):
            pass
    [said] = [r.getMessage() for r in caplog.records if "less than" in r.getMessage()]
    assert says in said, said


def test_garbage_holding_gpu_memory_is_collected_before_the_pool_is_sized(gpu_memory):
    """Objects in a reference cycle (an earlier engine's, a caller's) hold their CUDA tensors
    until the cyclic collector runs: the pool is sized after gc.collect(), as vLLM measures
    memory after one. Seen on an H100: after earlier tests in the same process, a second
    start() sized a pool 1% (17,294 tokens) larger than the first, the garbage collected
    between them."""
    import gc

    gpu_memory(free=70, total=100, reserved=16)

    class Holder:  # stands for a tensor-holding object in a cycle: its 10 GiB come back
        def __del__(self):  # to the free memory when the collector frees it
            gpu_memory(free=80, total=100, reserved=16)

    cycle = Holder()
    cycle.me = cycle
    del cycle
    gc.disable()  # so that nothing but pool_tokens collects it
    try:
        assert tokens() == 68 * 1024  # 0.85 x 80 GiB
    finally:
        gc.enable()


@pytest.mark.parametrize("options", [{}, {"gpu_memory_utilization": 0.9},
                                     {"mem_fraction_static": 0.9}, {"mem_fraction": 0.9}])
def test_a_pool_sized_from_memory_holds_at_most_what_int32_slot_ids_address(gpu_memory,
                                                                           caplog, options):
    """A model of few KV bytes a token (16 here: one layer, one KV head of 4 in bfloat16)
    on a large GPU was given a pool past 2**31 slots: its slot ids overflowed the int32
    request-to-token map, and its free list took tens of GB of host memory. kv_tokens
    itself is refused past MAX_KV_TOKENS; a pool sized from memory holds at most that."""
    from aiollm.config import MAX_KV_TOKENS

    gpu_memory(free=80, total=100, reserved=1)
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert pool_tokens(EngineConfig(**options), torch.device("cuda"), 16,
                           8192) == MAX_KV_TOKENS
    assert f"the KV pool holds {MAX_KV_TOKENS} tokens, the most" in caplog.text
