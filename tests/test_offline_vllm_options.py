"""LLM(...) given vLLM's keywords (its LLM's and EngineArgs'): those of an aiollm option's
meaning set that option, those asking for what aiollm always does are taken, and those it
cannot honour are refused with the `aiollm serve` flag's message, the keyword spelled as
Python spells it. The checks run before any model loads: a missing model path shows that
the options got past them (FileNotFoundError from the load)."""

from __future__ import annotations

import re

import pytest

from aiollm import LLM, SamplingParams
from aiollm.cli import build_parser
from aiollm.config import EngineConfig
from aiollm.vllm_flags import NO_EFFECT, REFUSED

MISSING = "/nonexistent/aiollm-test-model"  # loading it fails at once, after every check


def past_the_checks(**options) -> None:
    """LLM(MISSING, **options) got past every option check: it failed only to load."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(MISSING, **options)


def refused(**options) -> str:
    """The message of LLM(MISSING, **options)'s ValueError."""
    with pytest.raises(ValueError) as e:
        LLM(MISSING, **options)
    return str(e.value)


def test_a_vllm_constructor_call_sets_aiollm_options():
    """The call of a vLLM script: LLM's raised TypeError: EngineConfig.__init__() got an
    unexpected keyword argument 'max_num_seqs'."""
    with LLM(None, kv_tokens=512, max_model_len=512, max_num_seqs=5, max_num_batched_tokens=384,
             enforce_eager=True, enable_prefix_caching=False, tensor_parallel_size=1,
             dtype="float", enable_chunked_prefill=True, trust_remote_code=False,
             disable_log_stats=True, seed=3) as llm:
        c = llm.engine.config
        assert (c.max_running_requests, c.max_prefill_tokens) == (5, 384)
        assert (c.cuda_graph, c.prefix_cache) == (False, False)
        assert (c.dtype, c.tensor_parallel_size, c.seed) == ("float32", 1, 3)
        out, = llm.generate("Hi", SamplingParams(max_tokens=1), use_tqdm=False)
        assert out.outputs[0].token_ids


@pytest.mark.parametrize("vllm, ours", [
    ({"max_num_seqs": 0}, "max_running_requests"),
    ({"max_num_batched_tokens": -1}, "max_prefill_tokens"),
])
def test_a_bad_value_is_named_by_the_keyword_given(vllm, ours):
    """EngineConfig names its own field: the caller wrote vLLM's name."""
    (keyword, value), = vllm.items()
    assert refused(**vllm) == (f"{keyword} (aiollm's {ours}) must be an integer >= 1, "
                               f"got {value}")


@pytest.mark.parametrize("keyword, value, line", [
    ("max_num_seqs", 7, "--max-num-seqs 7"),
    ("max_num_batched_tokens", 300, "--max-num-batched-tokens 300"),
    ("enforce_eager", True, "--enforce-eager"),
    ("enable_prefix_caching", False, "--no-enable-prefix-caching"),
])
def test_an_alias_sets_what_the_cli_flag_sets(keyword, value, line):
    """The keyword sets the option the `aiollm serve` flag sets, to the same value: LLM()
    takes that option beside it at that value, and refuses it at another."""
    parse = lambda *flags: vars(build_parser().parse_args(["serve", "M", *flags]))
    default, given = parse(), parse(*line.split())
    option, = (k for k in given if k not in ("flags_typed", "values_typed", "command_parser")
               and given[k] != default[k])
    ours = given[option]
    past_the_checks(**{keyword: value, option: ours})
    with pytest.raises(TypeError, match=f"{option}.*{keyword}"):
        LLM(MISSING, **{keyword: value, option: not ours if ours in (True, False) else ours + 1})


@pytest.mark.parametrize("keyword", ["enforce_eager", "enable_prefix_caching",
                                     "trust_remote_code", "enable_chunked_prefill"])
def test_a_switch_takes_true_or_false(keyword):
    """not "no" is False: a string would have been read as the opposite of what it says."""
    assert refused(**{keyword: "no"}) == f"{keyword} must be True or False, got 'no'"


@pytest.mark.parametrize("options", [
    {"max_num_seqs": 8, "max_running_requests": 16},
    {"max_num_batched_tokens": 512, "max_prefill_tokens": 1024},
    {"enforce_eager": True, "cuda_graph": True},
    {"enable_prefix_caching": True, "prefix_cache": False},
])
def test_an_option_given_both_ways_must_agree(options):
    with pytest.raises(TypeError) as e:
        LLM(MISSING, **options)
    for name in options:
        assert name in str(e.value)


def test_an_option_given_both_ways_alike_is_taken():
    past_the_checks(max_num_seqs=8, max_running_requests=8, enforce_eager=False,
                    cuda_graph=True, enable_prefix_caching=None)


def test_what_aiollm_always_does_is_taken():
    """Every NO_EFFECT flag that is an LLM keyword, and refused flags given the value that
    asks for aiollm's own behaviour (or None, vLLM's 'not set')."""
    past_the_checks(enable_chunked_prefill=True, disable_custom_all_reduce=True,
                    trust_remote_code=False, pipeline_parallel_size=1, data_parallel_size=1,
                    kv_cache_dtype="auto", swap_space=0, cpu_offload_gb=0.0, block_size=1,
                    max_logprobs=20, tokenizer_mode="auto", quantization=None,
                    revision=None, download_dir=None, speculative_config=None,
                    enable_lora=False, enable_expert_parallel=False, enable_eplb=False,
                    async_scheduling=True, scheduling_policy="fcfs",
                    enable_sleep_mode=False, config_format="hf", kv_cache_memory_bytes=None)
    # vLLM too serves an architecture it implements with its own code, flag or not
    past_the_checks(trust_remote_code=True)


def test_moe_options_of_expert_parallelism_are_taken_with_no_effect(caplog):
    """vLLM's all2all_backend, expert_placement_strategy and eplb_config, which vLLM uses
    only with expert parallelism (and its load balancing), are taken as the CLI takes them,
    each logged as having no effect; redundant experts are refused as vLLM refuses them
    without enable_eplb."""
    with caplog.at_level("INFO", logger="aiollm.vllm_names"):
        past_the_checks(all2all_backend="deepep_low_latency",
                        expert_placement_strategy="round_robin",
                        eplb_config={"window_size": 100, "num_redundant_experts": 0})
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert [m.split(" has")[0] for m in said] == [
        "all2all_backend='deepep_low_latency'", "expert_placement_strategy='round_robin'",
        "eplb_config={'window_size': 100, 'num_redundant_experts': 0}"], said
    past_the_checks(eplb_config='{"window_size": 100}', all2all_backend=None)
    message = refused(eplb_config={"num_redundant_experts": 2})
    lead = "eplb_config={'num_redundant_experts': 2}: "
    assert message.startswith(lead) and "--" not in message, message
    assert "num_redundant_experts 2" in message[len(lead):] and "enable_eplb" in message
    # a value not of vLLM's choices is refused as vLLM's ParallelConfig refuses it, and as
    # `aiollm serve --expert-placement-strategy abc` is
    assert refused(expert_placement_strategy="abc") == (
        "expert_placement_strategy='abc': must be one of linear, round_robin")
    # a backend's name is any text (newer releases add some), but a name: all2all_backend=3
    # was logged as of no effect, where vLLM's ParallelConfig refuses it as the CLI's str
    assert refused(all2all_backend=3) == "all2all_backend=3: must be a string"


def test_moe_keywords_of_vllms_recipes_are_taken_or_refused_as_the_cli_flags(caplog):
    """vLLM's EngineArgs of MoE that LLM(...) refused as unknown keywords: its experts'
    kernel (moe_backend), what it does only with expert parallelism (enable_ep_weight_filter,
    dual batch overlap's thresholds) and the values asking for none of it are taken, each
    logged; those asking for it are refused naming the keyword, as the CLI's flags are."""
    with caplog.at_level("INFO", logger="aiollm.vllm_names"):
        past_the_checks(moe_backend="triton", enable_ep_weight_filter=True,
                        dbo_decode_token_threshold=32, dbo_prefill_token_threshold=512,
                        enable_dbo=False, ubatch_size=1, enable_elastic_ep=False,
                        enable_return_routed_experts=False, num_redundant_experts=0)
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert [m.split(" has")[0] for m in said] == [
        "moe_backend='triton'", "dbo_decode_token_threshold=32",
        "dbo_prefill_token_threshold=512"], said
    for options, says in [({"enable_dbo": True}, "dual batch overlap"),
                          ({"ubatch_size": 2}, "microbatches"),
                          ({"enable_elastic_ep": True}, "elastic expert parallelism"),
                          ({"enable_return_routed_experts": True}, "routed experts"),
                          ({"num_redundant_experts": 4}, "no redundant experts")]:
        message = refused(**options)
        (keyword, value), = options.items()
        assert message.startswith(f"{keyword}={value!r}: "), message
        assert says in message and "--" not in message, message  # in Python's terms
    assert refused(dbo_decode_token_threshold="x") == (
        "dbo_decode_token_threshold='x': must be a whole number")
    assert refused(dbo_prefill_token_threshold=-1) == (  # as vLLM's ParallelConfig (ge=0)
        "dbo_prefill_token_threshold=-1: must be 0 or more, got -1")
    assert refused(moe_backend=3) == "moe_backend=3: must be a string"


def test_a_text_only_models_limits_and_the_graphs_context_bound_are_taken(caplog):
    """limit_mm_per_prompt with every count 0 (a text-only model's limits: as a dict, its
    JSON, a modality's {"count": 0}) and max_seq_len_to_capture are taken with a line saying
    they change nothing, as `aiollm serve` takes the flags; a count above 0 is refused
    naming the keyword, the modality and its count, as the CLI refuses it."""
    with caplog.at_level("INFO", logger="aiollm.vllm_names"):
        past_the_checks(limit_mm_per_prompt={"image": 0, "video": {"count": 0}},
                        max_seq_len_to_capture=8192)
    said = [r.getMessage().split(" has")[0] for r in caplog.records
            if "has no effect" in r.getMessage()]
    assert said == ["limit_mm_per_prompt={'image': 0, 'video': {'count': 0}}",
                    "max_seq_len_to_capture=8192"], said
    past_the_checks(limit_mm_per_prompt='{"audio": 0}')
    message = refused(limit_mm_per_prompt={"image": 0, "audio": 2})
    assert message.startswith("limit_mm_per_prompt={'image': 0, 'audio': 2}: audio 2: ")
    assert "text alone" in message and "leave the keyword out" in message, message
    assert refused(limit_mm_per_prompt=[0]).startswith("limit_mm_per_prompt=[0]: takes a JSON")
    # typed as vLLM's config types it, as the CLI's --max-seq-len-to-capture abc is a usage
    # error (it was logged as of no effect)
    assert refused(max_seq_len_to_capture="x") == ("max_seq_len_to_capture='x': must be a "
                                                   "whole number")
    assert refused(max_seq_len_to_capture=1.5).startswith("max_seq_len_to_capture=1.5: must")


def test_vllm_llm_parameters_at_their_defaults_are_taken():
    """Parameters of vLLM's LLM(...) given at its defaults, as scripts spell them out: each
    was a TypeError, "unexpected keyword argument", for a keyword vLLM's LLM names."""
    past_the_checks(skip_tokenizer_init=False, hf_token=None, hf_overrides=None,
                    compilation_config=None, mm_processor_kwargs=None,
                    allowed_local_media_path="", override_generation_config=None,
                    distributed_executor_backend="mp", quantization="gguf")


def _cli_error(flag: str, capsys) -> str:
    """`aiollm serve M FLAG [VALUE]`'s error, after "argument FLAG: "."""
    args = [flag] if flag.startswith("--no-") or flag in (
        "--enable-lora", "--enable-expert-parallel", "--enable-eplb",
        "--skip-tokenizer-init", "--enable-sleep-mode") else [flag, "2"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "M", *args])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    return line.split(": ", 3)[-1]


@pytest.mark.parametrize("keyword, value, flag", [
    ("quantization", "awq", "--quantization"),
    ("pipeline_parallel_size", 2, "--pipeline-parallel-size"),
    ("data_parallel_size", 2, "--data-parallel-size"),
    ("block_size", 16, "--block-size"),
    ("cpu_offload_gb", 2, "--cpu-offload-gb"),
    ("enable_lora", True, "--enable-lora"),
    ("enable_expert_parallel", True, "--enable-expert-parallel"),
    ("enable_eplb", True, "--enable-eplb"),
    ("speculative_config", {"method": "ngram"}, "--speculative-config"),
    ("max_logprobs", 5, "--max-logprobs"),
    ("scheduling_policy", "priority", "--scheduling-policy"),
    ("enable_chunked_prefill", False, "--no-enable-chunked-prefill"),
    ("download_dir", "/d", "--download-dir"),
    ("revision", "main", "--revision"),
    ("tokenizer_mode", "slow", "--tokenizer-mode"),
    ("skip_tokenizer_init", True, "--skip-tokenizer-init"),
    ("hf_token", "t", "--hf-token"),
    ("hf_overrides", {"rope_theta": 1.0}, "--hf-overrides"),
    ("hf_config_path", "/cfg", "--hf-config-path"),
    ("mm_processor_kwargs", {"a": 1}, "--mm-processor-kwargs"),
    ("allowed_local_media_path", "/m", "--allowed-local-media-path"),
    ("override_generation_config", {"temperature": 0.5}, "--override-generation-config"),
    ("distributed_executor_backend", "ray", "--distributed-executor-backend"),
    ("async_scheduling", False, "--no-async-scheduling"),
    ("enable_sleep_mode", True, "--enable-sleep-mode"),
    ("config_format", "mistral", "--config-format"),
])
def test_what_aiollm_cannot_honour_is_refused_as_the_cli_refuses_it(keyword, value, flag,
                                                                    capsys):
    """The CLI's message, its flags written as keywords (outside `commands`), led by the
    keyword and its value."""
    message = refused(**{keyword: value})
    cli = _cli_error(flag, capsys)
    lead = f"{keyword}={value!r}: "
    assert message.startswith(lead)
    text = message[len(lead):]
    outside_commands = re.sub(r"`[^`]*`", "", text)
    assert "--" not in outside_commands and "MODEL" not in outside_commands
    # the same words, but for the flags' spelling
    words = lambda s: re.findall(r"[a-z0-9.]+", re.sub(r"\bthe (flag|keyword)\b", "",
                                                      s.lower()))
    assert words(text) == words(cli)
    # every flag the CLI offers instead is a keyword LLM() takes
    for flag in re.findall(r"--([a-z-]+)", re.sub(r"`[^`]*`", "", cli)):
        name = flag.replace("-", "_")
        assert name in outside_commands
        assert name in set(EngineConfig.__dataclass_fields__) | {
            "max_num_batched_tokens", "max_num_seqs", "enforce_eager",
            "enable_prefix_caching"}, name


def test_every_refused_or_no_effect_flag_is_a_keyword_or_server_only():
    """The tables are the CLI's: a flag added there is an LLM keyword too, refused or
    taken alike, unless vLLM's LLM does not take it either (then it stays unknown)."""
    server_only = {"enable_auto_tool_choice", "disable_log_requests",
                   "enable_log_requests", "lora_modules", "enable_request_id_headers",
                   "enable_prompt_tokens_details", "enable_server_load_tracking",
                   "disable_frontend_multiprocessing", "disable_fastapi_docs",
                   "disable_uvicorn_access_log", "ssl_keyfile", "ssl_certfile",
                   "ssl_ca_certs", "ssl_cert_reqs", "root_path", "middleware",
                   "uvicorn_log_level",
                   "config", "chat_template_content_format"}
    ignored = {"swap_space"}  # vLLM's LLM takes it and ignores it (the test below)
    flags = [r.names[-1] for r in REFUSED] + list(NO_EFFECT)
    for flag in flags:
        keyword = flag.removeprefix("--").removeprefix("no-").replace("-", "_")
        if keyword in ignored:
            past_the_checks(**{keyword: 4})
        elif keyword in server_only:
            with pytest.raises(TypeError, match=keyword):
                LLM(MISSING, **{keyword: True})
        else:
            with pytest.raises(ValueError, match=f"^{keyword}"):  # not unknown: TypeError
                LLM(MISSING, **{keyword: "x"})


# max_seq_len_to_capture is taken now, of no effect, as `aiollm serve` takes the flag; vLLM's
# worker_cls (a class of its own executor) has no meaning here
@pytest.mark.parametrize("keyword", ["not_an_option", "enable_auto_tool_choice",
                                     "worker_cls", "response_role",
                                     "root_path"])
def test_an_unknown_keyword_is_a_type_error_naming_it(keyword):
    """Named as LLM()'s (it said EngineConfig.__init__(), a class the caller never named)."""
    with pytest.raises(TypeError, match=f"^LLM\\(\\) got an unexpected keyword argument "
                                        f"'{keyword}'"):
        LLM(MISSING, **{keyword: 1})


def test_a_misspelt_keyword_is_told_the_near_names():
    with pytest.raises(TypeError, match="did you mean max_num_seqs"):
        LLM(MISSING, max_num_seq=8)
    with pytest.raises(TypeError, match="did you mean kv_tokens"):
        LLM(MISSING, kv_token=8)


def test_seed_none_is_vllms_default_seed():
    """vLLM's LLM(seed=None) is its signature's default (seed 0 in its V1 engine, as
    aiollm's): a script passing its own --seed (None unless given) raised "seed must be
    an integer, got None"."""
    with LLM(None, kv_tokens=256, max_model_len=256, seed=None) as llm:
        assert llm.engine.config.seed == EngineConfig().seed


def test_dtype_takes_a_torch_dtype_as_vllms_llm_does():
    """vLLM's dtype is a name or a torch.dtype: LLM(dtype=torch.float16) raised "dtype must
    be auto, float32, bfloat16 or float16, got torch.float16"."""
    import torch

    for dtype in (torch.float16, torch.half, torch.bfloat16):
        past_the_checks(dtype=dtype)
    with LLM(None, kv_tokens=256, max_model_len=256, dtype=torch.float32) as llm:
        assert llm.engine.config.dtype == "float32"


def test_a_torch_dtype_aiollm_lacks_is_refused_naming_it():
    import torch

    assert "torch.float64" in refused(dtype=torch.float64)


def test_kv_cache_dtype_of_the_models_own_dtype_is_taken():
    """vLLM's kv_cache_dtype="bfloat16" or "float16": taken where the model runs in that
    dtype (with dtype auto, once it is known: float32 on the CPU), refused before the
    weights load where it does not, naming both and what to give; fp8 is refused."""
    with LLM(None, kv_tokens=256, max_model_len=256, kv_cache_dtype="float32") as llm:
        assert llm.engine.kv_pool.k_cache[0].dtype == llm.engine.dtype
    past_the_checks(dtype="bfloat16", kv_cache_dtype="bfloat16")
    message = refused(dtype="float16", kv_cache_dtype="bfloat16")
    assert "kv_cache_dtype bfloat16 differs from dtype float16" in message, message
    assert "no fp8" in refused(kv_cache_dtype="fp8")
    with pytest.raises(ValueError) as e:
        LLM(None, device="cpu", kv_tokens=256, kv_cache_dtype="bfloat16")
    for text in ("kv_cache_dtype bfloat16", "float32", "dtype auto", "--kv-cache-dtype"):
        assert text in str(e.value), (text, str(e.value))


def test_served_model_name_takes_vllms_list_of_names():
    """vLLM's EngineArgs takes served_model_name as one name or a list, whose first names
    the model (an empty list: the model's own name): LLM(served_model_name=["a", "b"])
    raised "served_model_name must be a string or None". Each name is still checked."""
    with LLM(None, kv_tokens=256, max_model_len=256, served_model_name=["a", "b"]) as llm:
        assert llm.engine.model_name == "a"
    past_the_checks(served_model_name=("a",))
    past_the_checks(served_model_name=[])
    for names in (["a", " "], [3], ["a", None]):
        assert "served_model_name" in refused(served_model_name=names), names


def test_max_model_len_minus_one_is_vllms_auto_fit():
    """vLLM's engine takes max_model_len=-1 as "the longest that fits" (its --max-model-len
    auto), which is aiollm's default, as `aiollm serve --max-model-len -1` takes it:
    LLM(max_model_len=-1) raised "max_model_len must be >= 1, got -1". Other values below 1,
    and vLLM's CLI forms ("4k", "auto"), which its LLM does not take, are still refused."""
    with LLM(None, kv_tokens=256, max_model_len=-1) as llm:
        assert llm.engine.config.max_model_len is None
    assert refused(max_model_len=-2) == "max_model_len must be >= 1, got -2"
    for text in ("4k", "auto"):
        assert refused(max_model_len=text) == (f"max_model_len must be an integer or None, "
                                               f"got {text!r}")


def test_lm_eval_harness_vllm_backend_keywords_are_taken():
    """The keywords lm-eval-harness's vLLM backend passes LLM(...) on every call, at its
    defaults: tokenizer_revision=None and max_lora_rank=16 were TypeErrors (unknown)."""
    past_the_checks(gpu_memory_utilization=0.9, revision=None, dtype="auto", tokenizer=None,
                    tokenizer_mode="auto", tokenizer_revision=None, trust_remote_code=False,
                    tensor_parallel_size=1, max_model_len=None, max_num_seqs=256,
                    swap_space=4, quantization=None, seed=1234, enable_lora=False,
                    max_lora_rank=16)
    assert "revision" in refused(tokenizer_revision="main")
    assert "LoRA" in refused(max_lora_rank=64)


def test_swap_space_is_taken_and_ignored_as_vllms_llm_takes_it(caplog):
    """vLLM's LLM(...) drops swap_space with a warning (its engine swaps nothing to the CPU)
    and lm-eval-harness passes swap_space=4 on every call: taken, with a warning naming it
    (it was a ValueError); `aiollm serve --swap-space 4` stays refused, as vLLM's CLI no
    longer has the flag (tests/test_cli_vllm_flags.py)."""
    with caplog.at_level("WARNING", logger="aiollm.vllm_names"):
        past_the_checks(swap_space=4)
    assert any("swap_space=4 has no effect" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="aiollm.vllm_names"):
        past_the_checks(swap_space=0)
    assert not caplog.records


def test_an_eplb_config_of_no_object_is_refused_offline_as_by_the_cli():
    """`--eplb-config 5` is a usage error; LLM(eplb_config=5) (or a list, a bool) was taken
    and logged as having no effect. vLLM's EPLBConfig is an object of fields: refused alike,
    naming the keyword."""
    for value in (5, 1.5, True, ["window_size", 10]):
        message = refused(eplb_config=value)
        assert message.startswith(f"eplb_config={value!r}: "), message
        assert "EPLBConfig" in message, message


def test_quantization_gguf_with_a_hugging_face_directory_is_refused(tmp_path):
    """LLM(hf_dir, quantization='gguf') names what a GGUF file is, not what an HF directory
    is: vLLM would fail to load it as GGUF; it was taken silently (and loaded)."""
    from conftest import tiny_llama

    model = tiny_llama(tmp_path)
    with pytest.raises(ValueError) as e:
        LLM(model, quantization="gguf", load_format="dummy")
    message = str(e.value)
    assert message.startswith("quantization='gguf': "), message
    assert model in message and "Hugging Face model directory" in message, message
    assert "leave the keyword out" in message and "--" not in message, message
