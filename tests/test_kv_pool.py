"""The KV pool's own errors, on the CPU: a pool that cannot be allocated names its size
readably and what to change."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from aiollm.byte_size import byte_size
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


@pytest.mark.parametrize("share, said", [
    (None, ""),
    ("kv_memory_fraction", " or kv_memory_fraction (--kv-memory-fraction)"),
    ("gpu_memory_utilization", " or gpu_memory_utilization (--gpu-memory-utilization)"),
    ("mem_fraction_static", " or mem_fraction_static (--mem-fraction-static)"),
    ("mem_fraction", " or mem_fraction (--mem-fraction)"),
])
def test_a_pool_past_the_memory_names_the_share_that_sized_it(share, said):
    """It said "or kv_memory_fraction" whatever sized the pool: the user who gave
    --gpu-memory-utilization (SGLang's --mem-fraction-static, LightLLM's --mem_fraction),
    or the pool's size in tokens, was told to lower an option they never gave, and by a
    name serve cannot rewrite as typed (no flag in brackets)."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu", sized_by=share)
    assert str(e.value).endswith(f"lower kv_tokens (--kv-tokens){said}"), e.value


def test_a_pool_bounded_by_max_total_tokens_names_that_bound():
    """A GPU pool of SGLang's --max-total-tokens (its bound, where it is the smaller of it
    and the memory share's tokens) that failed to allocate said "lower kv_tokens
    (--kv-tokens) or mem_fraction_static (--mem-fraction-static)", neither of which sized
    it: what to lower is the bound the user gave."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu", sized_by="max_total_tokens")
    assert str(e.value) == (f"a KV pool of {2**48} tokens (2.00 PiB) does not fit in the "
                            "memory of cpu: lower max_total_tokens (--max-total-tokens)")


@pytest.mark.parametrize("device, options, tokens, sizer", [
    ("cuda", {"max_total_tokens": 1000, "mem_fraction_static": 0.8}, 1000, "max_total_tokens"),
    ("cuda", {"max_total_tokens": 1000, "mem_fraction_static": 0.8}, 900, "mem_fraction_static"),
    ("cuda", {"max_total_tokens": 1000}, 1000, "max_total_tokens"),
    ("cuda", {"max_total_tokens": 1000}, 900, "kv_memory_fraction"),
    ("cuda", {}, 900, "kv_memory_fraction"),
    ("cuda", {"kv_tokens": 900}, 900, None),
    ("cpu", {"max_total_tokens": 1000}, 1000, "max_total_tokens"),
    ("cpu", {"max_total_tokens": 1000}, 900, None),
    ("cpu", {}, 900, None),
])
def test_the_option_that_sized_the_pool(device, options, tokens, sizer):
    """pool_sizer: what KVPool's error names (besides kv_tokens) for a pool of `tokens`,
    as pool_tokens sized it: max_total_tokens where the pool holds its bound (tensor
    parallelism's least rank below it: the memory's), else a GPU's memory share."""
    from aiollm.config import EngineConfig
    from aiollm.engine.kv_plan import pool_sizer

    assert pool_sizer(EngineConfig(**options), torch.device(device), tokens) == sizer


def test_a_pool_past_the_memory_names_the_share_as_typed():
    """serve's log names the share's flag as the user typed it (LightLLM's underscores)."""
    from aiollm.cli import build_parser
    from aiollm.cli.log_config import rewrite_flags
    from aiollm.cli.serve_checks import typed_flags

    args = build_parser().parse_args(["serve", "--mem_fraction", "0.8"])
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, 2**48, torch.float32, "cpu", sized_by="mem_fraction")
    said = rewrite_flags(str(e.value), typed_flags(args))  # as serve's log rewrites it
    assert said.endswith("or mem_fraction (--mem_fraction)")


@pytest.mark.parametrize("tokens, size, cause", [
    (2**48, "2.25 PiB", MemoryError),  # past any address space: malloc fails
    (2**60, "9216.00 PiB", ValueError),  # past numpy's largest array: "array is too big"
])
def test_a_free_list_past_the_host_memory_names_its_size_and_the_option(tokens, size, cause):
    """The free stack (8 bytes a slot) and in-use flags (1 byte) live in host memory
    whatever the device: their allocation failed with numpy's own MemoryError or
    ValueError, naming no option. K and V on the meta device take no memory, so only the
    host's part can fail here."""
    with pytest.raises(ValueError) as e:
        KVPool(1, 1, 1, tokens, torch.float32, "meta")
    message = str(e.value)
    assert message.startswith(f"a KV pool of {tokens} tokens (its free list: {size}) does "
                              "not fit in the memory of cpu: lower kv_tokens (--kv-tokens)"), \
        message
    assert isinstance(e.value.__cause__, cause)


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
                                   "in the memory of cpu: lower kv_tokens (--kv-tokens); the "
                                   "machine has "), str(e.value)
    assert str(e.value).endswith(" of memory and swap, and the pool's free list takes "
                                 "18.00 GiB of it"), str(e.value)


HOST = 9  # the free stack's int64 slot id and the in-use flag's byte, per token


def test_the_cpus_plan_counts_the_pools_free_list(cpu_plan):
    """On the CPU K, V and the free list (free stack and in-use flags, 9 bytes a token)
    share the machine's memory: a plan of K and V alone passed pools whose free list then
    failed KVPool's allocation."""
    cpu_plan((128 + HOST) * 1000, kv_tokens=1000)  # exactly fits
    with pytest.raises(ValueError) as e:
        cpu_plan((128 + HOST) * 1000 - 1, kv_tokens=1000)
    assert str(e.value) == ("a KV pool of 1000 tokens (125.00 KiB) does not fit in the memory "
                            "of cpu: lower kv_tokens (--kv-tokens); the machine has 133.79 KiB "
                            "of memory and swap, and the pool's free list takes 8.79 KiB of "
                            "it"), str(e.value)


def test_on_a_gpu_the_pools_free_list_must_fit_the_hosts_memory(plan, gpu_memory,
                                                                 monkeypatch):
    """On a GPU the free list is still in host memory: kv_tokens whose K and V fit the GPU
    but whose free list is past the machine's memory and swap failed only at KVPool's
    allocation, after the weights loaded; now the plan refuses it, with that text."""
    from aiollm.engine import kv_plan

    gpu_memory(80, 80)
    monkeypatch.setattr(kv_plan, "memory_limit", lambda: HOST * 1000)
    plan(kv_tokens=1000)  # exactly fits
    monkeypatch.setattr(kv_plan, "memory_limit", lambda: HOST * 1000 - 1)
    with pytest.raises(ValueError) as e:
        plan(kv_tokens=1000)
    assert str(e.value) == ("a KV pool of 1000 tokens (its free list: 8.79 KiB) does not fit "
                            "in the memory of cpu: lower kv_tokens (--kv-tokens); the machine "
                            "has 8.79 KiB of memory and swap"), str(e.value)


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory) -> str:
    """tiny_llama's config and a word-level tokenizer (read in a moment, where the default
    model's is parsed from its GGUF file), no weights."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from conftest import tiny_llama

    path = tiny_llama(tmp_path_factory.mktemp("tiny-tokenizer"))
    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>").save_pretrained(path)
    return path


@pytest.mark.parametrize("options, says", [
    ({"load_format": "gguf"}, "load_format gguf asks for a GGUF file"),
    ({"load_format": "auto"}, "no *.safetensors file in "),  # a config alone: no weights
    ({"max_model_len": 100_000}, "max_model_len 100000 exceeds the model's context of 256"),
])
def test_an_argument_error_comes_before_the_kv_plans(tiny_with_tokenizer, monkeypatch,
                                                     options, says):
    """A wrong load_format, a model without weights or a max_model_len past the context,
    beside a KV pool past the machine's memory: the plan's error came first (or none, and
    the weights were read), and once the user lowered the pool, the start failed again for
    the argument."""
    with pytest.raises((ValueError, OSError)) as e:
        start_without_weights(monkeypatch, tiny_with_tokenizer, **{
            "load_format": "dummy", "device": "cpu", "kv_tokens": TOO_MANY, **options})
    assert says in str(e.value), str(e.value)


def test_a_refusal_before_loading_names_the_flag_as_typed(tiny, monkeypatch, caplog):
    """LightLLM's --max_total_token_num (the KV pool's size) past the machine's memory: the
    start's error named aiollm's --kv-tokens, which the user never typed."""
    import aiollm.model
    from aiollm.cli import main

    monkeypatch.setattr(aiollm.model, "load_model", lambda *a, **k: pytest.fail("loaded"))
    with caplog.at_level(logging.ERROR, logger="aiollm"):
        assert main(["serve", tiny, "--load-format", "dummy", "--device", "cpu",
                     "--dtype", "float32", "--port", "0",
                     "--max_total_token_num", str(TOO_MANY)]) == 1
    said = [r.getMessage() for r in caplog.records if "does not fit" in r.getMessage()]
    assert len(said) == 1 and "lower kv_tokens (--max_total_token_num)" in said[0], said


def test_a_start_up_warning_names_the_flags_as_typed(tiny, caplog):
    """LightLLM's --max_total_token_num of fewer tokens than the model's context: the
    warning logged while loading said to raise aiollm's --kv-tokens and a share the user
    never typed. The start is stopped by SIGINT once the warning is logged (the server
    shuts down once loaded, never listening), or, were it not logged, once it serves."""
    import signal

    from aiollm.cli import main

    class StopAtTheWarning(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "less than the model's context" in message or message.startswith("serving "):
                os.kill(os.getpid(), signal.SIGINT)

    stop = StopAtTheWarning()
    logging.getLogger("aiollm").addHandler(stop)
    try:
        with caplog.at_level(logging.INFO, logger="aiollm"):
            main(["serve", tiny, "--load-format", "dummy", "--device", "cpu", "--dtype",
                  "float32", "--port", "0", "--max_total_token_num", "64", "--mem_fraction",
                  "0.8"])
    finally:
        logging.getLogger("aiollm").removeHandler(stop)
    said = [r.getMessage() for r in caplog.records
            if "less than the model's context" in r.getMessage()]
    assert len(said) == 1 and ("raise kv_tokens (--max_total_token_num) or, on a GPU, "
                               "mem_fraction (--mem_fraction)") in said[0], said
    # the pool's size logged with the flags as typed too: it named kv_tokens=64 and
    # mem_fraction, neither of which the user typed
    sized = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
    assert sized == ["the KV pool holds the 64 tokens of kv_tokens (--max_total_token_num): "
                     "mem_fraction (--mem_fraction) 0.8 is not used"], sized
    logging.getLogger("aiollm.test").warning("lower kv_tokens (--kv-tokens)")
    assert caplog.records[-1].getMessage() == "lower kv_tokens (--kv-tokens)"  # served no more


@pytest.fixture
def plan(tiny):
    """check_kv_plan of `tiny` (its weights: 6.02 MiB in bfloat16, K and V 64 bytes a
    token) on a GPU under EngineConfig(**options)."""
    from aiollm.config import EngineConfig
    from aiollm.engine.kv_plan import check_kv_plan
    from aiollm.model.hf_config import load_hf_config

    config = load_hf_config(tiny)

    def check(**options) -> None:
        check_kv_plan(EngineConfig(model=tiny, **options), config, torch.device("cuda"),
                      torch.bfloat16)
    check.weights = config.num_params() * 2
    return check


def test_on_a_gpu_the_pool_and_the_weights_must_fit_the_free_memory(plan, gpu_memory):
    """The GPU's check, on its numbers (the memory queries patched): K and V of kv_tokens
    plus the weights' parameters at the run dtype, against the free memory."""
    gpu_memory(plan.weights + 64 * 1000, 80 * GiB, unit=1)
    plan(kv_tokens=1000)  # exactly fits
    gpu_memory(plan.weights + 64 * 1000 - 1, 80 * GiB, unit=1)
    with pytest.raises(ValueError) as e:
        plan(kv_tokens=1000)
    assert str(e.value) == ("a KV pool of 1000 tokens (62.50 KiB) does not fit in the memory "
                            "of cuda: lower kv_tokens (--kv-tokens); 6.08 MiB of cuda is free "
                            "before loading, and the weights take at least 6.02 MiB of it")


def test_a_gpu_share_smaller_than_the_weights_fails_before_they_load(plan, gpu_memory):
    """gpu_memory_utilization x the total below the weights (a 0.1 share of a GPU under
    a model of 0.2 of it) was refused only after loading them."""
    gpu_memory(80 * GiB, plan.weights * 10, unit=1)
    plan(gpu_memory_utilization=0.2)
    with pytest.raises(ValueError) as e:
        plan(gpu_memory_utilization=0.1)
    assert str(e.value) == (
        "gpu_memory_utilization 0.1 leaves no room for the KV cache: 0.1 x 60.18 MiB = "
        "6.02 MiB, and the weights take at least 6.02 MiB of it; raise "
        "gpu_memory_utilization, or size the pool with kv_tokens (--kv-tokens)")


@pytest.mark.parametrize("share", ["mem_fraction_static", "mem_fraction"])
def test_sglangs_and_lightllms_shares_leaving_no_room_fail_before_the_weights_load(
        plan, gpu_memory, share):
    """SGLang's mem_fraction_static (of the memory free at start) and LightLLM's
    mem_fraction (of the total) keep (1 - share) of a whole for activations: a share that
    keeps more than loading can leave free was refused only after the weights loaded."""
    gpu_memory(plan.weights * 10, plan.weights * 10, unit=1)
    plan(**{share: 0.2})  # 10 x weights: 8 kept, the weights 1, one left for the pool
    with pytest.raises(ValueError) as e:
        plan(**{share: 0.1})  # 9 kept, the weights 1: nothing left
    assert str(e.value).startswith(f"{share} 0.1 leaves no room for the KV cache: (1 - 0.1) x "
                                   "60.18 MiB"), str(e.value)


@pytest.mark.parametrize("options, raise_", [
    ({}, "raise kv_memory_fraction (--kv-memory-fraction)"),
    ({"gpu_memory_utilization": 0.5}, "raise gpu_memory_utilization (--gpu-memory-utilization)"),
    ({"mem_fraction_static": 0.5}, "raise mem_fraction_static (--mem-fraction-static)"),
    ({"mem_fraction": 0.5}, "raise mem_fraction (--mem-fraction)"),
])
def test_a_gpu_that_cannot_hold_max_model_len_fails_before_the_weights_load(plan, gpu_memory,
                                                                             options, raise_):
    """What loading can leave free is at most the free memory now less the weights: a pool
    of at most 100 tokens (85% of 7,530 bytes, or all of 6,400; vLLM's share is half of the
    total, SGLang's keeps half of the memory free now, LightLLM's half of the total; each
    the bound, which a larger share raises) cannot hold one request of
    max_model_len 101, and was refused only after the weights loaded."""
    room = 7530 if not options else 6400
    free, total = plan.weights + room, 80 * GiB
    if "gpu_memory_utilization" in options:  # half the total: the weights, 6,400
        free = total = 2 * (plan.weights + room)
    elif "mem_fraction_static" in options:  # half the free memory kept, the weights, 6,400
        free = 2 * (plan.weights + room)
    elif "mem_fraction" in options:  # half the total (the weights' bytes) kept, the weights
        free, total = 2 * plan.weights + room, 2 * plan.weights
    gpu_memory(free, total, unit=1)
    plan(max_model_len=100, **options)
    with pytest.raises(ValueError) as e:
        plan(max_model_len=101, **options)
    assert str(e.value) == (
        "the KV cache can hold at most 100 tokens (6.25 KiB), less than one request of "
        "max_model_len 101 tokens needs (6.31 KiB): lower max_model_len (--max-model-len) to "
        f"at most 100 (or leave it out: the longest that fits), or {raise_}")


def test_a_cpu_pool_short_of_max_model_len_fails_before_the_weights_load(tiny, monkeypatch):
    """The CPU pool's size is known before loading (cpu_kv_tokens here): one that cannot
    hold a request of max_model_len is refused then, with the text it got after loading."""
    with pytest.raises(ValueError) as e:
        start_without_weights(monkeypatch, tiny, load_format="dummy", device="cpu",
                              cpu_kv_tokens=100, max_model_len=200)
    assert str(e.value) == (
        "the KV cache holds 100 tokens (12.50 KiB), less than one request of max_model_len "
        "200 tokens needs (25.00 KiB): lower max_model_len (--max-model-len) to at most 100 "
        "(or leave it out: the longest that fits), or raise cpu_kv_tokens")


@pytest.mark.parametrize("tokens", [0, 2**31 - 1, 10**12])
def test_cpu_kv_tokens_is_held_to_the_slot_ids_int32_addresses(tokens):
    """cpu_kv_tokens had no upper bound where kv_tokens has MAX_KV_TOKENS: a CPU pool past
    2**31 slots passed every check, its slot ids past the int32 request-to-token map."""
    from aiollm.config import MAX_KV_TOKENS, EngineConfig

    with pytest.raises(ValueError) as e:
        EngineConfig(cpu_kv_tokens=tokens)
    assert str(e.value) == f"cpu_kv_tokens must be in [1, {MAX_KV_TOKENS}], got {tokens}"
    assert EngineConfig(cpu_kv_tokens=MAX_KV_TOKENS).cpu_kv_tokens == MAX_KV_TOKENS


@pytest.mark.gpu
def test_a_kv_tokens_past_the_gpus_memory_fails_before_the_weights_load(tiny, monkeypatch):
    """On a GPU (80 or 141 GB), the most kv_tokens of float32 `tiny` (256 GiB) is refused
    before any weight is read, with the text the pool's own allocation fails with."""
    with pytest.raises(ValueError, match=rf"^a KV pool of {TOO_MANY} tokens \(256\.00 GiB\) "
                       r"does not fit in the memory of cuda(:0)?: lower kv_tokens \(--kv-tokens"
                       r"\); .* of cuda(:0)? is free before loading"):
        start_without_weights(monkeypatch, tiny, load_format="dummy", device="cuda",
                              dtype="float32", kv_tokens=TOO_MANY)


@pytest.mark.parametrize("options", [
    {}, {"max_model_len": 100}, {"kv_tokens": 100}, {"gpu_memory_utilization": 0.9},
    {"mem_fraction_static": 0.9, "max_model_len": 100}, {"mem_fraction": 0.9},
])
# short 1: room for the weights, not for one token's K and V (64 bytes); 65: not for them
@pytest.mark.parametrize("short", [1, 64 + 1])
def test_weights_past_the_gpus_free_memory_are_named_not_the_kv_pools_option(
        plan, gpu_memory, options, short):
    """Free memory that cannot hold the weights and one token's K and V was refused as a
    pool too small (raise kv_memory_fraction, lower kv_tokens: neither helps), SGLang's
    share with the weights' bytes called the memory free at start, or not at all (the load
    then fails out of memory after reading them)."""
    free = plan.weights + 64 - short
    gpu_memory(free, 80 * GiB, unit=1)
    with pytest.raises(ValueError) as e:
        plan(**options)
    assert str(e.value) == (
        f"the weights take at least 6.02 MiB in bfloat16, and {byte_size(free)} of cuda is "
        "free now: no room is left for the KV cache; free memory on cuda, or split the model "
        "over more GPUs (--tensor-parallel-size)")
    gpu_memory(80 * GiB, 80 * GiB)  # room for all: the same plan passes
    plan(**options)


def test_float32_weights_past_the_gpus_free_memory_suggest_bfloat16(tiny, gpu_memory):
    """Only in float32 is a smaller dtype there to suggest."""
    from aiollm.config import EngineConfig
    from aiollm.engine.kv_plan import check_kv_plan
    from aiollm.model.hf_config import load_hf_config

    config = load_hf_config(tiny)
    gpu_memory(config.num_params() * 4, 80 * GiB, unit=1)
    with pytest.raises(ValueError, match=r"^the weights take at least 12\.04 MiB in float32, "
                       r"and 12\.04 MiB of cuda is free now: no room is left for the KV cache; "
                       r"free memory on cuda, run in bfloat16 \(--dtype bfloat16\), or split "):
        check_kv_plan(EngineConfig(model=tiny), config, torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("meminfo, limit", [
    ("MemTotal:  1000 kB\nMemFree:  500 kB\nSwapTotal:  3000 kB\n", 4000 * 1024),
    ("MemTotal:  1000 kB\nSwapTotal:  0 kB\n", 1000 * 1024),
])
def test_the_cpus_kv_tokens_bound_counts_swap(tmp_path, meminfo, limit):
    """A CPU pool's pages come lazily from calloc: one past the physical memory but within
    it and swap allocates (Linux's default heuristic overcommit refuses only past both), and
    was refused before loading."""
    from aiollm.engine.kv_plan import memory_limit

    (tmp_path / "meminfo").write_text(meminfo)
    assert memory_limit(str(tmp_path / "meminfo")) == limit
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory_limit(str(tmp_path / "absent")) == physical


@pytest.mark.parametrize("options", [
    {}, {"gpu_memory_utilization": 0.9}, {"mem_fraction_static": 0.99}, {"mem_fraction": 0.99},
])
def test_a_gpu_whose_free_memory_cannot_hold_max_model_len_names_no_share(plan, gpu_memory,
                                                                         options):
    """Free memory less the weights of 100 tokens (6,400 bytes) bounds every share's pool
    (vLLM's to 85 of them: it keeps 15% of what is free after loading): against
    max_model_len 101 the message said to raise the share, which cannot help."""
    gpu_memory(plan.weights + 6400, 80 * GiB, unit=1)
    with pytest.raises(ValueError) as e:
        plan(max_model_len=101, **options)
    most = 85 if "gpu_memory_utilization" in options else 100
    assert str(e.value).startswith(f"the KV cache can hold at most {most} tokens"), str(e.value)
    assert str(e.value).endswith(
        f"lower max_model_len (--max-model-len) to at most {most} (or leave it out: the longest "
        "that fits), or free memory on cuda (what the weights leave is too little for any "
        "share)"), (
        str(e.value))


@pytest.mark.parametrize("options", [{}, {"gpu_memory_utilization": 0.9}])
def test_after_loading_a_gpu_whose_free_memory_cannot_hold_max_model_len_names_no_share(
        tiny, gpu_memory, options):
    """The same advice after loading: with 100 tokens' K and V (128 bytes each in float32)
    free, no share raises the pool to max_model_len 101."""
    from aiollm.config import EngineConfig
    from aiollm.engine.loading import build_rank_model
    from aiollm.model.loader import load_model

    loaded = load_model(tiny, dtype=torch.float32, device="cpu", load_format="dummy")
    gpu_memory(128 * 100, 80 * GiB, reserved=2**20, unit=1)
    with pytest.raises(ValueError) as e:
        build_rank_model(EngineConfig(model=tiny, max_model_len=101, **options), loaded,
                         torch.device("cuda"), torch.float32)
    assert str(e.value).endswith("or free memory on cuda (what the weights leave is too "
                                 "little for any share)"), str(e.value)
    # 110 tokens free: all of them hold 101, so the default share is the one to raise; the
    # 15% vLLM's share always keeps of the free memory leaves 93 tokens under it
    gpu_memory(128 * 110, 80 * GiB, reserved=2**20, unit=1)
    with pytest.raises(ValueError) as e:
        build_rank_model(EngineConfig(model=tiny, max_model_len=101, **options), loaded,
                         torch.device("cuda"), torch.float32)
    assert str(e.value).endswith(
        "or free memory on cuda (what the weights leave is too little for any share)" if options
        else "or raise kv_memory_fraction (--kv-memory-fraction)"), str(e.value)
