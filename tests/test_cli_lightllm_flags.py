"""`aiollm serve` given a launch line written for LightLLM's `python -m
lightllm.server.api_server` (its flags spelt with underscores): its flags of aiollm's meanings
are aliases, those asking for what aiollm always does are accepted and logged, and those
aiollm cannot honour stop the start with one line naming the flag and what to use instead.
Parse-level through the parser and cli.main's usage errors; one start of the server on a
tiny model, with a LightLLM benchmark's launch line."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from serve_log import wait_for_base

from aiollm.cli import build_parser, main
from aiollm.cli.serve_checks import checked_config
from conftest import tiny_llama


def parse(line: str, model: tuple[str, ...] = ("M",)):
    return build_parser().parse_args(["serve", *model, *line.split()])


def options(line: str) -> dict:
    return {k: v for k, v in vars(parse(line)).items()
            if k not in ("command_parser", "no_effect", "flags_typed", "values_typed")}


def refusal(line: str, capsys) -> str:
    """The one error line `aiollm serve M line` stops with, through cli.main (exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(["serve", "M", *line.split()])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aiollm serve: error: "), err
    return err[-1]


# LightLLM's benchmark.md launch line, with its README's host and port
BENCHMARK_LINE = ("--host 0.0.0.0 --port 8080 --tp 1 --max_total_token_num 121060 "
                  "--tokenizer_mode auto")


def test_lightllm_benchmark_line_reaches_the_engine_config():
    args = parse(BENCHMARK_LINE, model=("--model_dir", "/path/llama-7b"))
    config, _ = checked_config(args.command_parser, args)
    assert config.model == "/path/llama-7b"
    assert config.kv_tokens == 121060  # LightLLM's KV cache tokens
    assert config.tensor_parallel_size == 1
    assert (args.host, args.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize("line, dest, value", [
    ("--model_name llama", "served_model_name", ["llama"]),
    ("--max_total_token_num 400000", "kv_tokens", 400000),
    ("--running_max_req_size 128", "max_running_requests", 128),
    ("--max_req_total_len 16000", "max_model_len", 16000),
    ("--batch_max_tokens 8192", "max_prefill_tokens", 8192),
    ("--chunked_prefill_size 4096", "max_prefill_tokens", 4096),
    ("--splitfuse_mode --splitfuse_block_size 256", "max_prefill_tokens", 256),
    ("--data_type bf16", "dtype", "bfloat16"),
    ("--data_type fp16", "dtype", "float16"),
    ("--data_type float32", "dtype", "float32"),
    ("--graph_max_batch_size 16", "cuda_graph_max_batch", 16),
    ("--disable_cudagraph", "cuda_graph", False),
    ("--disable_dynamic_prompt_cache", "prefix_cache", False),
    ("--mem_fraction 0.8", "mem_fraction", 0.8),
    ("--tp 2", "tensor_parallel_size", 2),
    ("--tool_call_parser qwen25", "tool_call_parser", "hermes"),
    ("--node_rank 1 --nnodes 2", "node_rank", 1),
    ("--disable_log_stats", "log_stats", False),
    ("--output_constraint_mode none", "grammar_backend", "none"),  # LightLLM's default
    ("--output_constraint_mode xgrammar", "grammar_backend", "xgrammar"),
])
def test_lightllm_names_set_the_aiollm_option_of_the_same_meaning(line, dest, value):
    assert getattr(parse(line), dest) == value


@pytest.mark.parametrize("line", ["--output_constraint_mode none", "--grammar-backend none"])
def test_structured_output_off_reaches_the_engine_config(line, caplog):
    """LightLLM's default (and SGLang's --grammar-backend none) was refused: a launch line
    copied with it could not start."""
    args = parse(line)
    with caplog.at_level(logging.INFO, logger="aiollm"):
        config, _ = checked_config(args.command_parser, args)
    assert config.grammar_backend == "none"
    said = [r.getMessage() for r in caplog.records if "structured output is off" in
            r.getMessage()]
    assert said == [f"{line}: structured output is off; a request that asks for a "
                    "grammar (a response format, tool_choice \"required\"...) gets 400 "
                    "naming its field"], said  # the flag as typed


def test_the_step_budget_is_the_smallest_of_lightllms_bounds():
    """LightLLM keeps a prefill batch within --batch_max_tokens and each chunk within
    --chunked_prefill_size."""
    assert parse("--batch_max_tokens 8192 --chunked_prefill_size 2048").max_prefill_tokens \
        == 2048
    assert parse("--chunked_prefill_size 2048 --batch_max_tokens 8192").max_prefill_tokens \
        == 2048


@pytest.mark.parametrize("line, says", [
    ("--running_max_req_size 8 --max-num-seqs 16",
     "argument --max-num-seqs: 16 and --running_max_req_size 8 are two values of one option"),
    ("--max_total_token_num 1000 --kv-tokens 2000",
     "argument --kv-tokens: 2000 and --max_total_token_num 1000"),
    ("--model_name a --served-model-name b", "b and --model_name a are two values"),
    ("--data_type bf16 --dtype float16", "float16 and --data_type bfloat16"),
    ("--data_type int8", "argument --data_type: invalid choice: 'int8' (choose from fp16, "),
    ("--output_constraint_mode none --grammar-backend xgrammar",
     "argument --grammar-backend: xgrammar and --output_constraint_mode none are two values"),
    ("--mem_fraction 0.8 --gpu-memory-utilization 0.9",
     "give one of --gpu-memory-utilization (vLLM's: the whole process's share of the GPU's "
     "memory) and --mem_fraction (LightLLM's"),
    ("--mem_fraction 1.5", "argument --mem_fraction: mem_fraction must be in (0, 1], got 1.5"),
    ("--max_req_total_len 4096 --max_total_token_num 1024",
     "argument --max_total_token_num: kv_tokens 1024 is less than max_model_len 4096"),
])
def test_conflicts_and_bad_values_are_usage_errors_naming_the_flags(line, says, capsys):
    """Each names LightLLM's flag as typed (--data_type, not the --data-type argparse
    reads it as)."""
    err = refusal(line, capsys)
    assert says in err, err


@pytest.mark.parametrize("line", [
    "--use_dynamic_prompt_cache", "--splitfuse_mode", "--disable_custom_allreduce",
    "--nccl_port 28765", "--tokenizer_mode fast", "--tokenizer_mode auto",
    "--run_mode normal", "--quant_type none", "--output_constraint_mode xgrammar",
    "--nccl_host 127.0.0.1", "--dp 1", "--enable_fa3", "--graph_max_len_in_batch 8192",
    "--trust_remote_code",
    # the router's admission knobs: aiollm's scheduler has none of the same meaning
    "--router_token_ratio 0.5", "--router_max_new_token_len 1024", "--router_max_wait_tokens 6",
    # LightLLM's api_cli.py flags that stopped at "unrecognized arguments"
    "--log_stats_interval 10", "--enable_prefill_decode_mixed", "--disable_aggressive_schedule",
    "--cache_capacity 200", "--httpserver_workers 2", "--health_monitor",
    "--llm_prefill_att_backend fa3", "--llm_decode_att_backend flashinfer triton",
])
def test_flags_asking_for_what_aiollm_does_are_accepted_and_change_nothing(line):
    assert options(line) == options("")


def test_flags_of_no_effect_are_logged_as_typed(caplog):
    args = parse("--use_dynamic_prompt_cache --nccl_port 28765 --router_max_wait_tokens 6")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    said = [r.getMessage().split(" has no effect")[0] for r in caplog.records
            if "has no effect" in r.getMessage()]
    assert said == ["--use_dynamic_prompt_cache", "--nccl_port 28765",
                    "--router_max_wait_tokens 6"], said


def test_the_router_knobs_line_names_the_default_admission_policy(caplog):
    """The router's admission knobs have no effect, and their line says what admits
    instead: it said past_future (output lengths predicted from finished requests), while
    the default policy, the one a LightLLM launch line runs, is aggressive (prompts fit)."""
    from aiollm.config import EngineConfig
    from aiollm.scheduler import SCHEDULERS

    args = parse("--router_max_new_token_len 1024")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    [said] = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("--router_max_new_token_len 1024 has no effect")]
    assert f"--scheduler's policy ({EngineConfig().scheduler}, the default: " in said, said
    assert all(f"{name}" in said for name in SCHEDULERS), said


@pytest.mark.parametrize("line, names", [
    ("--disable_chunked_prefill", ("--max-prefill-tokens",)),
    ("--run_mode prefill", ("disaggregation",)),
    # older LightLLM's README line: LightLLM refused a longer input, aiollm would serve it
    ("--max_req_input_len 4096", ("no separate limit on input",)),
    ("--eos_id 2", ("stop_token_ids",)),
    ("--mode triton_int8kv", ("no int8 or fp8 KV cache",)),
    ("--quant_type ao-int8wo", ("GGUF",)),
    ("--output_constraint_mode outlines", ("xgrammar",)),
    ("--use_reward_model", ("generative models only",)),
    ("--nccl_host 10.0.0.1", ("--dist-init-addr HOST:PORT",)),
    ("--long_truncation_mode head", ("never cut short",)),
    ("--dp 8", ("one aiollm server per replica",)),
    ("--enable_multimodal", ("text alone",)),
    ("--tokenizer_mode slow", ("tokenizer.json",)),
])
def test_flags_aiollm_cannot_honour_stop_the_start_saying_what_to_do(line, names, capsys):
    err = refusal(line, capsys)
    assert f"argument {line.split()[0]}" in err, err  # as typed, underscores and all
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("flag", ["--llm_prefill_att_backend", "--llm_decode_att_backend"])
def test_a_model_after_an_attention_backend_is_not_taken_as_a_backend(flag, capsys):
    """nargs "+" takes every word up to the next flag: `aiollm serve --llm_prefill_att_backend
    fa3 /m` took /m as a backend, and with no MODEL left the server started the default
    model (r256 saw it load SmolLM2). A word that is none of LightLLM's backends is refused,
    naming it and saying where MODEL goes; the backends themselves stay taken."""
    with pytest.raises(SystemExit) as e:  # the parser's (main would start a server)
        parse(f"{flag} fa3 /m", model=())
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: /m is not" in err and "give the model first" in err, err
    assert "--model_dir MODEL" in err, err
    assert refusal(f"{flag} fast_attn", capsys).startswith(
        f"aiollm serve: error: argument {flag}: fast_attn is not")
    assert options(f"{flag} auto triton fa3 flashinfer flashqla") == options("")


def test_a_lightllm_launch_line_serves_the_generate_route(tmp_path):
    """A LightLLM benchmark-style launch line, underscores and all, starts the server with
    its sizes (KV tokens, request length, running requests) and /generate answers; its
    --model_name is the name reported, and a request naming another model is answered."""
    model = tiny_llama(tmp_path / "tiny")
    log = tmp_path / "serve.log"
    line = [str(Path(sys.executable).with_name("aiollm")), "serve", "--model_dir", model,
            "--load-format", "dummy", "--host", "127.0.0.1", "--port", "0", "--tp", "1",
            "--max_total_token_num", "640", "--max_req_total_len", "160",
            "--running_max_req_size", "4", "--batch_max_tokens", "96", "--tokenizer_mode",
            "fast", "--data_type", "fp32", "--disable_dynamic_prompt_cache", "--nccl_port",
            "28765", "--device", "cpu", "--model_name", "llama"]
    with open(log, "w") as out:
        proc = subprocess.Popen(line, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        base = wait_for_base(proc, log)
        text = log.read_text()
        assert "KV pool: 640 tokens" in text and "max model len 160" in text, text
        assert "prefix cache off" in text, text
        assert "--nccl_port 28765 has no effect" in text, text  # as typed
        status, body = asyncio.run(_post(base + "/generate", {
            "inputs": "Hello", "parameters": {"max_new_tokens": 3, "ignore_eos": True}}))
        assert status == 200, body
        assert len(body["generated_text"]) == 1 and body["count_output_tokens"] == 3, body
        # --model_name is the name reported; as LightLLM, no request's model is refused
        status, body = asyncio.run(_post(base + "/v1/completions", {
            "model": "gpt-4", "prompt": "Hello", "max_tokens": 1}))
        assert status == 200 and body["model"] == "llama", body
    finally:
        proc.kill()
        proc.wait()


async def _post(url: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            return r.status, await r.json()


def test_a_mode_of_kernels_alone_is_logged_as_having_no_effect(caplog):
    """LightLLM's --mode (nargs "+") picks its attention kernels (triton_gqa_flashdecoding,
    in launch lines for GQA models; triton_flashdecoding; ppl_fp16) or a KV cache of int8 or
    fp8: every value was refused saying "no int8 or fp8 KV cache", a kernel pick too, where
    README says a pick of kernels is logged as having no effect (as --enable_fa3 is)."""
    args = parse("--mode triton_gqa_flashdecoding ppl_fp16 --tp 1")
    assert {k: v for k, v in vars(args).items() if k == "tensor_parallel_size"} == {
        "tensor_parallel_size": 1}
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(
        "--mode triton_gqa_flashdecoding ppl_fp16 has no effect: attention runs on aiollm's "
        "Triton kernels"), said


@pytest.mark.parametrize("line, value", [
    ("--mode triton_int8kv", "triton_int8kv"),
    ("--mode triton_gqa_flashdecoding triton_fp8kv", "triton_fp8kv"),
    ("--mode export_fp8kv_calibration", "export_fp8kv_calibration"),
])
def test_a_mode_of_another_kv_cache_is_refused_naming_the_value(line, value, capsys):
    err = refusal(line, capsys)
    assert f"argument --mode: {value} " in err and "no int8 or fp8 KV cache" in err, err


def test_a_model_after_kernel_modes_is_named_as_such(capsys):
    """--mode takes every word up to the next flag: MODEL written after its modes was
    refused as a mode, with no word on where MODEL goes."""
    with pytest.raises(SystemExit):
        main(["serve", "--mode", "triton_gqa_flashdecoding", "model.gguf"])
    err = capsys.readouterr().err
    assert "argument --mode: model.gguf is not served" in err, err
    assert "give the model first, `aiollm serve MODEL ...`, or as --model_dir MODEL" in err, err
