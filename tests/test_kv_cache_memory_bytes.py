"""vLLM's kv_cache_memory_bytes (`--kv-cache-memory-bytes BYTES`, LLM(kv_cache_memory_bytes=)):
the KV pool sized in bytes per GPU, as many tokens as one token's K and V (this rank's) go
into them; it overrides the memory shares, is refused beside kv_tokens, and sizes the CPU's
pool too. The flag takes vLLM's human sizes (4G, 1.5g).

The GPU sizing tests are unit tests of the arithmetic with torch.cuda's memory queries
patched (conftest's gpu_memory); the gpu-marked ones start a real engine."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from aiollm import LLM, SamplingParams
from aiollm.cli import build_parser
from aiollm.cli.serve_checks import checked_config
from aiollm.config import EngineConfig
from aiollm.model.kv_pool_size import bytes_misfit, bytes_pool_tokens, pool_tokens

GiB = 2**30
MiB = 2**20  # bytes per token slot in the patched-GPU tests: tokens are MiB of pool
PER_TOKEN = 128  # `tiny`'s K and V in float32: one layer, 2 KV heads of 8
FLAG = "kv_cache_memory_bytes (--kv-cache-memory-bytes)"


def serve_config(line: str) -> EngineConfig:
    args = build_parser().parse_args(["serve", "M", *line.split()])
    return checked_config(args.command_parser, args)[0]


@pytest.mark.parametrize("value, bytes_", [
    ("4000000000", 4_000_000_000), ("4G", 4 * GiB), ("4g", 4 * 10**9), ("1.5g", 1_500_000_000),
    ("512M", 512 * MiB), ("64K", 65536), ("2T", 2 * 2**40), ("8k", 8000),
])
def test_the_flag_takes_vllms_human_sizes(value, bytes_):
    """As vLLM's EngineArgs reads it (human_readable_int): lower case powers of 1000, upper
    case of 1024."""
    assert serve_config(f"--kv-cache-memory-bytes={value}").kv_cache_memory_bytes == bytes_
    assert serve_config("").kv_cache_memory_bytes is None


@pytest.mark.parametrize("line, says", [
    ("--kv-cache-memory-bytes 1.5G", "argument --kv-cache-memory-bytes: '1.5G': G counts in "
     "powers of 1024 and takes a whole number (give 1.5g for powers of 1000)"),
    ("--kv-cache-memory-bytes 4GB", "argument --kv-cache-memory-bytes: '4GB' is not a number "
     "of bytes: give an integer"),
    ("--kv-cache-memory-bytes 0.5", "'0.5' is not a number of bytes"),
    ("--kv-cache-memory-bytes 0", "argument --kv-cache-memory-bytes: kv_cache_memory_bytes "
     "must be an integer >= 1 (bytes of KV cache per GPU), got 0; leave it out to size the "
     "cache from the memory (what vLLM does with 0)"),
    ("--kv-cache-memory-bytes 4G --kv-tokens 100",
     "error: give one of --kv-tokens (the KV pool's size in tokens) and "
     "--kv-cache-memory-bytes (vLLM's: its size in bytes), got 100 and 4294967296"),
    # LightLLM's name for --kv-tokens, as typed
    ("--max_total_token_num 100 --kv-cache-memory-bytes 4G", "give one of "
     "--max_total_token_num (the KV pool's size in tokens) and --kv-cache-memory-bytes"),
])
def test_a_bad_or_conflicting_value_is_a_usage_error(line, says, capsys):
    with pytest.raises(SystemExit) as e:
        serve_config(line)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_help_lists_it_among_the_engines_kv_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help=engine"])
    out = capsys.readouterr().out
    assert "--kv-cache-memory-bytes BYTES" in out, out
    assert out.index("--kv-tokens") < out.index("--kv-cache-memory-bytes"), out


@pytest.mark.parametrize("value, says", [
    (0, "kv_cache_memory_bytes must be an integer >= 1 (bytes of KV cache per GPU), got 0"),
    (-1, "kv_cache_memory_bytes must be an integer >= 1 (bytes of KV cache per GPU), got -1"),
    (1.5, "kv_cache_memory_bytes must be an integer or None, got 1.5"),
    ("4G", "kv_cache_memory_bytes must be an integer or None, got '4G'"),
    (True, "kv_cache_memory_bytes must be an integer or None, got True"),
])
def test_the_option_is_a_whole_number_of_bytes(value, says):
    with pytest.raises(ValueError) as e:
        EngineConfig(kv_cache_memory_bytes=value)
    assert str(e.value).startswith(says), str(e.value)
    assert EngineConfig(kv_cache_memory_bytes=np.int64(7)).kv_cache_memory_bytes == 7


def test_kv_tokens_and_the_bytes_are_refused_together():
    """Two sizes of the one pool: which would size it?"""
    with pytest.raises(ValueError, match=r"^give one of kv_tokens \(the KV pool's size in "
                       r"tokens\) and kv_cache_memory_bytes \(vLLM's: its size in bytes\), got "
                       r"100 and 1000$"):
        EngineConfig(kv_tokens=100, kv_cache_memory_bytes=1000)
    # a bound of what the bytes give is not a second size
    assert EngineConfig(max_total_tokens=10, kv_cache_memory_bytes=1000).max_total_tokens == 10


def test_the_tokens_are_the_bytes_over_one_tokens_k_and_v():
    assert bytes_pool_tokens(1000 * PER_TOKEN, PER_TOKEN) == 1000
    assert bytes_pool_tokens(1001 * PER_TOKEN - 1, PER_TOKEN) == 1000  # whole tokens
    assert bytes_pool_tokens(100 * PER_TOKEN, PER_TOKEN, max_model_len=100) == 100


def test_bytes_past_the_int32_slot_ids_name_the_bytes_in_the_caps_line(caplog):
    cfg = EngineConfig(kv_cache_memory_bytes=2**40, device="cpu")
    with caplog.at_level(logging.INFO, logger="aiollm.model.kv_pool_size"):
        assert pool_tokens(cfg, torch.device("cpu"), 2, 8192) == 2**31 - 2
    assert ("the most its int32 slot ids address (kv_cache_memory_bytes "
            "(--kv-cache-memory-bytes) 1099511627776 gives 549755813888)") in caplog.text


def test_too_few_bytes_for_max_model_len_name_the_bytes_needed():
    """As EngineConfig refuses a kv_tokens below max_model_len."""
    with pytest.raises(ValueError) as e:
        bytes_pool_tokens(100 * PER_TOKEN - 1, PER_TOKEN, max_model_len=100)
    assert str(e.value) == (
        "kv_cache_memory_bytes 12799 (12.50 KiB) holds 99 tokens of 128 bytes (K and V), less "
        "than max_model_len 100: the KV cache must hold one request of max_model_len tokens; "
        f"give {FLAG} at least 12800 (12.50 KiB), or max_model_len (--max-model-len) at most "
        "99 (left out: the longest that fits)")
    with pytest.raises(ValueError) as e:
        bytes_pool_tokens(PER_TOKEN - 1, PER_TOKEN)
    assert str(e.value) == ("kv_cache_memory_bytes 127 holds no token: one token's K and V "
                            f"take 128 bytes; give {FLAG} at least 128")
    # with no max_model_len, one token is the least, but a pool of one serves nothing: the
    # bytes of one request of the model's context too
    with pytest.raises(ValueError) as e:
        bytes_pool_tokens(PER_TOKEN - 1, PER_TOKEN, context=256)
    assert str(e.value) == ("kv_cache_memory_bytes 127 holds no token: one token's K and V "
                            f"take 128 bytes; give {FLAG} at least 128, 32768 (32.00 KiB) for "
                            "one request of the model's context of 256 tokens")
    # not "max_model_len at most 0", which no request fits
    with pytest.raises(ValueError) as e:
        bytes_pool_tokens(100, PER_TOKEN, max_model_len=100)
    assert str(e.value) == ("kv_cache_memory_bytes 100 holds no token: one token's K and V "
                            f"take 128 bytes; give {FLAG} at least 12800 (12.50 KiB)")


def test_bytes_past_the_free_memory_name_the_flag_and_both_sizes():
    assert bytes_misfit(80 * GiB, 70 * GiB, torch.device("cuda", 0)) == (
        "kv_cache_memory_bytes 85899345920 (80.00 GiB) is more than the 75161927680 "
        f"(70.00 GiB) of cuda:0 free after loading: lower {FLAG}, or free memory on cuda:0")


def gpu_tokens(**options) -> int:
    return pool_tokens(EngineConfig(**options), torch.device("cuda"), MiB, 8192)


def test_on_a_gpu_the_bytes_size_the_pool_and_the_share_is_not_used(gpu_memory, caplog):
    """vLLM's kv_cache_memory_bytes "ignores gpu_memory_utilization"; lm-eval-harness
    passes the share on every call."""
    gpu_memory(free=80, total=100, reserved=16)
    assert gpu_tokens(kv_cache_memory_bytes=10 * GiB + MiB - 1) == 10 * 1024
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert gpu_tokens(kv_cache_memory_bytes=GiB, gpu_memory_utilization=0.2) == 1024
    assert (f"the KV pool holds the 1024 tokens of {FLAG} 1073741824: gpu_memory_utilization "
            "(--gpu-memory-utilization) 0.2 is not used") in caplog.text, caplog.text
    # aiollm's own share, of the memory free after loading, is a share left unused too
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aiollm"):
        assert gpu_tokens(kv_cache_memory_bytes=GiB, kv_memory_fraction=0.5) == 1024
        assert gpu_tokens(kv_tokens=1000, kv_memory_fraction=0.5) == 1000
    assert (f"the KV pool holds the 1024 tokens of {FLAG} 1073741824: kv_memory_fraction "
            "(--kv-memory-fraction) 0.5 is not used") in caplog.text, caplog.text
    assert ("the KV pool holds the 1000 tokens of kv_tokens (--kv-tokens): kv_memory_fraction "
            "(--kv-memory-fraction) 0.5 is not used") in caplog.text, caplog.text
    # more than the share would give, and than the default's 0.85 of the free memory
    assert gpu_tokens(kv_cache_memory_bytes=79 * GiB, mem_fraction=0.5) == 79 * 1024


def test_on_a_gpu_bytes_past_the_free_memory_are_refused_before_allocating(gpu_memory):
    gpu_memory(free=80, total=100, reserved=16)
    with pytest.raises(ValueError, match=r"at least 1048576 \(1\.00 MiB\), 8589934592 "
                       r"\(8\.00 GiB\) for one request of the model's context of 8192 tokens$"):
        gpu_tokens(kv_cache_memory_bytes=MiB - 1)  # too few first
    assert gpu_tokens(kv_cache_memory_bytes=80 * GiB) == 80 * 1024
    with pytest.raises(ValueError) as e:
        gpu_tokens(kv_cache_memory_bytes=80 * GiB + 1)
    assert str(e.value) == (
        "kv_cache_memory_bytes 85899345921 (80.00 GiB) is more than the 85899345920 "
        f"(80.00 GiB) of cuda free after loading: lower {FLAG}, or free memory on cuda")


def test_max_total_tokens_bounds_the_bytes_pool(gpu_memory, caplog):
    gpu_memory(free=80, total=100, reserved=16)
    assert gpu_tokens(kv_cache_memory_bytes=GiB, max_total_tokens=1000) == 1000
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        assert gpu_tokens(kv_cache_memory_bytes=GiB, max_total_tokens=2000) == 1024
    # kv_tokens, refused beside the bytes, is not what to give instead
    assert (f"more than the 1024 tokens {FLAG} 1073741824 leaves: the KV pool holds 1024 "
            f"(raise {FLAG} for more)") in caplog.text, caplog.text


@pytest.fixture
def gpu_plan(tiny):
    """check_kv_plan of `tiny` (weights 6.02 MiB in bfloat16, K and V 64 bytes a token) on
    a GPU under EngineConfig(**options)."""
    from aiollm.engine.kv_plan import check_kv_plan
    from aiollm.model.hf_config import load_hf_config

    config = load_hf_config(tiny)

    def check(tp=None, **options) -> None:
        check_kv_plan(EngineConfig(model=tiny, **options), config, torch.device("cuda"),
                      torch.bfloat16, tp)
    check.weights = config.num_params() * 2
    return check


def test_the_plan_refuses_bytes_past_the_gpus_free_memory_before_the_weights_load(
        gpu_plan, gpu_memory):
    gpu_memory(gpu_plan.weights + 64 * 1000, 80 * GiB, unit=1)
    gpu_plan(kv_cache_memory_bytes=64 * 1000)  # exactly fits
    with pytest.raises(ValueError) as e:
        gpu_plan(kv_cache_memory_bytes=64 * 1000 + 1)
    assert str(e.value) == (
        "kv_cache_memory_bytes 64001 (62.50 KiB) is more than the 64000 (62.50 KiB) of cuda "
        "free once the weights load (6.08 MiB free before loading, less at least 6.02 MiB of "
        f"weights): lower {FLAG}, or free memory on cuda")


def test_the_plan_refuses_bytes_short_of_max_model_len_before_the_weights_load(
        gpu_plan, gpu_memory, cpu_plan):
    gpu_memory(80, 80)
    gpu_plan(kv_cache_memory_bytes=64 * 100, max_model_len=100)
    with pytest.raises(ValueError, match=r"^kv_cache_memory_bytes 6399 \(6\.25 KiB\) holds 99 "
                       r"tokens of 64 bytes"):
        gpu_plan(kv_cache_memory_bytes=64 * 100 - 1, max_model_len=100)
    with pytest.raises(ValueError, match=r"holds 99 tokens of 128 bytes \(K and V\), less than "
                       "max_model_len 100"):
        cpu_plan(GiB, kv_cache_memory_bytes=128 * 100 - 1, max_model_len=100)
    # `tiny`'s context is 256 tokens
    with pytest.raises(ValueError, match=r"^kv_cache_memory_bytes 100 holds no token: .* at "
                       r"least 128, 32768 \(32\.00 KiB\) for one request of the model's "
                       r"context of 256 tokens$"):
        cpu_plan(GiB, kv_cache_memory_bytes=100)


def test_under_tensor_parallelism_the_bytes_hold_a_ranks_share_of_the_kv_heads(gpu_plan,
                                                                               gpu_memory):
    """vLLM's bytes are per GPU: over two ranks each holds one of `tiny`'s two KV heads, 32
    bytes a token, so 3,200 bytes hold the 100 tokens of max_model_len there, 50 on one."""
    from types import SimpleNamespace

    gpu_memory(80, 80)
    gpu_plan(SimpleNamespace(rank=1, size=2), kv_cache_memory_bytes=3200, max_model_len=100)
    with pytest.raises(ValueError, match=r"holds 50 tokens of 64 bytes \(K and V\)"):
        gpu_plan(kv_cache_memory_bytes=3200, max_model_len=100)


def test_a_cpu_pool_of_the_bytes_past_the_machines_memory_names_them(cpu_plan):
    """The CPU pool's K, V and free list (9 bytes a token) against its memory and swap, as
    kv_tokens' are held, naming the option that sized it."""
    cpu_plan((PER_TOKEN + 9) * 1000, kv_cache_memory_bytes=PER_TOKEN * 1000)
    with pytest.raises(ValueError) as e:
        cpu_plan((PER_TOKEN + 9) * 1000 - 1, kv_cache_memory_bytes=PER_TOKEN * 1000)
    assert str(e.value).startswith("a KV pool of 1000 tokens (125.00 KiB) does not fit in the "
                                   f"memory of cpu: lower {FLAG}; the machine has "), e.value


def test_the_cpu_pool_holds_the_bytes_tokens_through_llms_keyword(tiny, caplog):
    """vLLM's CPU backend sizes its KV cache in bytes too: on the CPU the bytes size the
    pool, over cpu_kv_tokens (a size only where neither size is given, as kv_tokens),
    which the log says is not used, as it says of a share beside a size."""
    with caplog.at_level(logging.INFO, logger="aiollm"):
        with LLM(tiny, device="cpu", load_format="dummy", warm_up=False,
                 kv_cache_memory_bytes=PER_TOKEN * 300 + PER_TOKEN - 1,
                 cpu_kv_tokens=50) as llm:
            assert llm.engine.config.kv_cache_memory_bytes == PER_TOKEN * 301 - 1
            assert llm.engine.kv_pool.capacity == 300
    assert (f"{FLAG} sizes the KV pool on the CPU: cpu_kv_tokens 50 is not used"
            in caplog.text), caplog.text


def test_a_bytes_pool_below_the_context_says_to_raise_the_bytes(tiny, caplog):
    """`tiny`'s context is 256 tokens: a pool of 64 limits each request, and the warning
    names the option that sized it, not kv_tokens or a share, which were not given."""
    with caplog.at_level(logging.WARNING, logger="aiollm"):
        with LLM(tiny, device="cpu", load_format="dummy", warm_up=False,
                 kv_cache_memory_bytes=PER_TOKEN * 64) as llm:
            assert llm.engine.kv_pool.capacity == 64
    said = [r.getMessage() for r in caplog.records
            if "less than the model's context" in r.getMessage()]
    assert len(said) == 1 and f"; raise {FLAG}, or give max_model_len" in said[0], said


@pytest.mark.gpu
def test_on_a_gpu_the_engines_pool_holds_the_bytes_tokens(tmp_path):
    """Heads of 64 features (tiny's 8 are below the GPU attention kernels' dot sizes): one
    layer's K and V of 2 KV heads, 512 bytes a token in bfloat16."""
    from conftest import tiny_llama

    model = tiny_llama(tmp_path / "wide", hidden_size=256)
    # the GPU machine has no default model: the tokenizer saved from it, where one is named
    tok = os.environ.get("AIOLLM_TEST_TOKENIZER")
    with LLM(model, device="cuda", dtype="bfloat16", load_format="dummy", warm_up=False,
             kv_cache_memory_bytes=512 * 1000 + 511, gpu_memory_utilization=0.5,
             **({"tokenizer": tok} if tok else {})) as llm:
        assert llm.engine.kv_pool.capacity == 1000
        params = SamplingParams(max_tokens=4)
        assert len(llm.generate(["hi"], params, progress=False)[0].outputs[0].token_ids) == 4


@pytest.mark.gpu
def test_on_a_gpu_bytes_past_its_memory_fail_before_the_weights_load(tiny):
    with pytest.raises(ValueError, match=r"^kv_cache_memory_bytes 1099511627776 \(1\.00 TiB\) "
                       r"is more than the \d+ \(.*\) of cuda(:0)? free once the weights load"):
        LLM(tiny, device="cuda", dtype="bfloat16", load_format="dummy",
            kv_cache_memory_bytes=2**40)


def test_llms_keyword_takes_a_whole_float_as_vllms_config_does():
    """vLLM's CacheConfig (pydantic, lax) reads kv_cache_memory_bytes=4e9 as 4000000000;
    a fraction of a byte stays refused, naming the keyword."""
    from aiollm.vllm_names import engine_options

    assert engine_options({"kv_cache_memory_bytes": 4e9})[0] == {
        "kv_cache_memory_bytes": 4_000_000_000}
    assert isinstance(engine_options({"kv_cache_memory_bytes": 4e9})[0][
        "kv_cache_memory_bytes"], int)
    with pytest.raises(ValueError, match=r"^kv_cache_memory_bytes must be an integer or None, "
                       r"got 1\.5$"):
        LLM("/nonexistent/aiollm-test-model", kv_cache_memory_bytes=1.5)
