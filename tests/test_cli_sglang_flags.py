"""`aiollm serve` given a launch line written for SGLang's `python -m sglang.launch_server`:
its flags of aiollm's meanings are aliases, those asking for what aiollm always does are
accepted and logged, and those aiollm cannot honour stop the start with one line naming the
flag and what to use instead (before this, each was argparse's "unrecognized arguments").
Parse-level: the parser and serve's checks are called directly, no model loads."""

from __future__ import annotations

import itertools
import logging

import pytest

from aiollm.cli import build_parser, main
from aiollm.cli.serve_checks import checked_config


def parse(line: str, model: tuple[str, ...] = ("M",)):
    return build_parser().parse_args(["serve", *model, *line.split()])


def options(line: str) -> dict:
    """What `aiollm serve M line` sets, but the parser it reports through, the flags typed
    and the flags it logs as having no effect."""
    return {k: v for k, v in vars(parse(line)).items()
            if k not in ("command_parser", "no_effect", "flags_typed", "values_typed",
                         "config_checks")}


def refusal(line: str, capsys, model: tuple[str, ...] = ("M",)) -> str:
    """The one error line `aiollm serve M line` stops with, through cli.main (exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(["serve", *model, *line.split()])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aiollm serve: error: "), err
    return err[-1]


# the launch lines of SGLang's docs (server arguments' common launch commands), with the
# sizing and scheduling flags its hyperparameter-tuning page has users add
DOCS_LINE = ("--tp 2 --mem-fraction-static 0.7 --chunked-prefill-size 4096 "
             "--max-running-requests 64 --context-length 4096 --host 0.0.0.0 --port 30000 "
             "--enable-metrics --random-seed 42 --schedule-policy fcfs "
             "--tool-call-parser qwen25 --reasoning-parser deepseek-r1 --enable-torch-compile")


def test_an_sglang_launch_line_reaches_the_engine_config():
    args = parse(DOCS_LINE, model=("--model-path", "/models/qwen"))
    config, _ = checked_config(args.command_parser, args)
    assert config.model == "/models/qwen"
    assert config.tensor_parallel_size == 2
    assert config.mem_fraction_static == 0.7 and config.kv_memory_fraction is None
    assert config.max_prefill_tokens == 4096  # SGLang's chunk: a step's tokens
    assert config.max_running_requests == 64
    assert config.max_model_len == 4096
    assert config.seed == 42
    assert config.tool_call_parser == "hermes"  # Qwen 2.5's <tool_call> JSON
    assert config.reasoning_parser == "deepseek_r1"
    assert (args.host, args.port) == ("0.0.0.0", 30000)


@pytest.mark.parametrize("line, dest, value", [
    ("--tp-size 4", "tensor_parallel_size", 4),
    ("--tp 4", "tensor_parallel_size", 4),
    ("--tokenizer-path /t", "tokenizer", "/t"),
    ("--context-length 8192", "max_model_len", 8192),
    # SGLang reads both as human-readable counts (human_readable_int): k 1000, K 1024
    ("--context-length 32k", "max_model_len", 32000),
    ("--max-total-tokens 128K", "max_total_tokens", 131072),
    ("--max-total-tokens 100000", "max_total_tokens", 100000),  # a bound, not kv_tokens
    ("--random-seed 7", "seed", 7),
    ("--grammar-backend none", "grammar_backend", "none"),  # structured output off
    ("--chunked-prefill-size 8192", "max_prefill_tokens", 8192),
    ("--chunked_prefill_size 8k", "max_prefill_tokens", 8000),
    ("--disable-radix-cache", "prefix_cache", False),
    ("--disable-cuda-graph", "cuda_graph", False),
    ("--mem-fraction-static 0.8", "mem_fraction_static", 0.8),
    ("--kv-cache-dtype bf16", "kv_cache_dtype", "bfloat16"),
    ("--tool-call-parser qwen", "tool_call_parser", "hermes"),
    # Qwen3's thinking-only models: SGLang's Qwen3Detector forced into the reasoning, as
    # its DeepSeekR1Detector is (the same <think> tags)
    ("--reasoning-parser qwen3-thinking", "reasoning_parser", "deepseek_r1"),
    # SGLang's own spellings that were aiollm's already
    ("--cuda-graph-max-bs 32", "cuda_graph_max_batch", 32),
    ("--max-running-requests 8", "max_running_requests", 8),
    ("--max-prefill-tokens 16384", "max_prefill_tokens", 16384),
    # SGLang's capture list: its largest is SGLang's cuda_graph_max_bs, and aiollm's bound
    ("--cuda-graph-bs 1 2 4 8", "cuda_graph_max_batch", 8),
    ("--cuda-graph-bs 16 4", "cuda_graph_max_batch", 16),
    ("--max-queued-requests 100", "max_waiting_requests", 100),
    ("--skip-server-warmup", "warm_up", False),
    ("--log-level critical", "log_level", "critical"),
])
def test_sglang_names_set_the_aiollm_option_of_the_same_meaning(line, dest, value):
    assert getattr(parse(line), dest) == value


def test_model_path_names_the_model():
    assert parse("--model-path /m", model=()).model == "/m"
    assert parse("--model-path /m", model=("/m",)).model == "/m"  # the same, twice


def test_model_path_and_another_model_is_a_usage_error(capsys):
    err = refusal("--model-path /b", capsys, model=("/a",))
    assert "MODEL and --model-path name two models ('/a', '/b')" in err, err


@pytest.mark.parametrize("line, flag", [
    # SGLang's flags aiollm does not take, after (or before) the model's flag: argparse
    # read their values as MODEL, and the error was "MODEL and --model-path name two models
    # ('/m', '600')", naming neither the flag nor what was wrong with it
    # (--dist-timeout and --decode-log-interval were the examples, taken now)
    ("--model-path /m --tokenizer-worker-num 2", "--tokenizer-worker-num"),
    ("--hicache-ratio 2.0 --model-path /m", "--hicache-ratio"),
    ("--model-path /m --bucket-time-to-first-token 0.1 0.5 1", "--bucket-time-to-first-token"),
    ("--model_dir /m --dp_prefill_wait_step 4", "--dp_prefill_wait_step"),  # as typed
])
def test_a_flag_aiollm_does_not_take_is_named_not_read_as_a_second_model(line, flag,
                                                                         capsys):
    err = refusal(line, capsys, model=())
    assert "unrecognized arguments: " in err and flag in err, err
    assert "two models" not in err, err


def test_two_models_one_of_them_positional_is_still_a_usage_error(capsys):
    err = refusal("/a --model_dir /b", capsys, model=())
    assert "MODEL and --model_dir name two models ('/a', '/b')" in err, err
    err = refusal("--model-path /b /a", capsys, model=())
    assert "--model-path and MODEL name two models ('/b', '/a')" in err, err


@pytest.mark.parametrize("line, names", [
    ("--tp-size 2 -tp 4", ("argument -tp: 4 and --tp-size 2",)),
    ("--tensor-parallel-size 4 --tp 2", ("argument --tp: 2 and --tensor-parallel-size 4",)),
    ("--context-length 1024 --max-model-len 2048",
     ("--max-model-len: 2048 and --context-length 1024",)),
    ("--random-seed 1 --seed 2", ("--seed: 2 and --random-seed 1",)),
    # aiollm's and vLLM's spellings of one option (each served with the last, silently)
    ("--max-num-seqs 8 --max-running-requests 16",
     ("argument --max-running-requests: 16 and --max-num-seqs 8",)),
    ("--max-num-batched-tokens 4096 --max-prefill-tokens 8192",
     ("argument --max-prefill-tokens: 8192 and --max-num-batched-tokens 4096",)),
])
def test_two_spellings_given_two_values_is_a_usage_error_naming_both(line, names, capsys):
    err = refusal(line, capsys)
    for name in (*names, "two values of one option: give one"):
        assert name in err, (name, err)


def test_max_total_tokens_with_kv_tokens_is_a_usage_error_naming_both(capsys):
    """--max-total-tokens bounds the pool the memory gives, --kv-tokens sizes it: one."""
    err = refusal("--max-total-tokens 100 --kv-tokens 200", capsys)
    assert "give one of --kv-tokens" in err and "and --max-total-tokens" in err, err


def test_checks_after_parsing_name_the_flag_as_typed(capsys):
    """serve's checks of a value (serve_checks.py) name SGLang's and LightLLM's spellings,
    not aiollm's flag of the option."""
    err = refusal("--tokenizer-path /nonexistent/tokenizer", capsys)
    assert "argument --tokenizer-path: '/nonexistent/tokenizer' does not exist" in err, err
    err = refusal("--context-length 4096 --max-total-tokens 1000", capsys)
    assert err.startswith("aiollm serve: error: argument --max-total-tokens: "), err
    assert "or max_model_len (--context-length) at most 1000" in err, err
    err = refusal("--max_req_total_len 4096 --max_total_token_num 1000", capsys)
    assert "give kv_tokens (--max_total_token_num) at least 4096" in err, err
    assert "max_model_len (--max_req_total_len) at most 1000" in err, err
    with pytest.raises(SystemExit):
        main(["serve", "M", "--model_name", " "])
    err = capsys.readouterr().err
    assert "argument --model_name: served_model_name" in err, err


def test_two_spellings_of_the_same_value_are_taken():
    assert parse("--tp-size 2 -tp 2 --tp 2").tensor_parallel_size == 2
    assert parse("--context-length 512 --max-model-len 512").max_model_len == 512
    assert parse("--tp 2 --tp 4").tensor_parallel_size == 4  # one spelling: the last counts


@pytest.mark.parametrize("line", [
    "--chunked-prefill-size 4096 --max-prefill-tokens 16384",
    "--max-prefill-tokens 16384 --chunked-prefill-size 4096",
    "--max-num-batched-tokens 4096 --chunked-prefill-size 8192",
])
def test_the_step_budget_is_the_smallest_of_the_bounds_given(line):
    """SGLang keeps a step's prompt tokens within --chunked-prefill-size and
    --max-prefill-tokens both: the smaller counts, in either order."""
    assert parse(line).max_prefill_tokens == 4096


def test_chunked_prefill_off_is_refused_naming_the_flag(capsys):
    err = refusal("--chunked-prefill-size -1", capsys)
    assert "argument --chunked-prefill-size: -1 turns chunked prefill off" in err, err
    assert "--max-model-len" in err


@pytest.mark.parametrize("line", [
    "--enable-metrics", "--enable-mixed-chunk", "--enable-cache-report",
    "--enable-torch-compile", "--torch-compile-max-bs 32", "--attention-backend fa3",
    "--attention-backend triton", "--sampling-backend flashinfer", "--nccl-port 28765",
    "--enable-p2p-check", "--page-size 1", "--base-gpu-id 0",
    # values asking for what aiollm does
    "--dp-size 1", "--dp 1", "--pp-size 1", "--ep-size 1", "--schedule-policy fcfs",
    "--schedule-conservativeness 1.0", "--grammar-backend xgrammar", "--stream-interval 1",
    "--json-model-override-args {}", "--trust-remote-code", "--watchdog-timeout 600",
    # SGLang's docs' launch flags that stopped at "unrecognized arguments"
    "--dist-timeout 600", "--decode-log-interval 40", "--show-time-cost",
    "--enable-metrics-for-all-schedulers", "--disable-cuda-graph-padding",
    # set by SGLang's --config example (log-requests: true) and vLLM's recipes'
    # (stream-interval: 20): no output changes
    "--log-requests", "--stream-interval 20",
    # its MoE kernels' choice; its all-to-all backend's default (no expert parallelism):
    # they stopped a MoE launch line at "unrecognized arguments"
    "--moe-runner-backend triton", "--moe-runner-backend flashinfer_trtllm",
    "--moe-a2a-backend none",
    # SGLang's older spellings of --moe-runner-backend's values (its docs' deprecated flags)
    "--enable-flashinfer-cutlass-moe", "--enable-flashinfer-cutedsl-moe",
    "--enable-flashinfer-trtllm-moe", "--enable-flashinfer-mxfp4-moe",
    "--enable-triton-kernel-moe",
    # SGLang's MoE flags of its recipes (Qwen3-MoE, DeepSeek) that stopped at "unrecognized
    # arguments": values asking for no expert parallelism; what it uses only with expert
    # parallelism or its load balancing; recorders and reports of the experts chosen; a
    # draft model's and quantized experts' kernels; shared-expert fusion, a kernel's choice
    "--expert-parallel-size 1", "--ep-num-redundant-experts 0", "--elastic-ep-backend none",
    "--deepep-mode low_latency", "--deepep-config {}", "--ep-dispatch-algorithm static",
    "--init-expert-location trivial", "--eplb-algorithm deepseek",
    "--eplb-rebalance-num-iterations 1000", "--eplb-rebalance-layers-per-chunk 4",
    "--eplb-min-rebalancing-utilization-threshold 0.5", "--tbo-token-distribution-threshold 0.48",
    "--expert-distribution-recorder-mode stat", "--expert-distribution-recorder-buffer-size -1",
    "--expert-balancedness-report-mode server_log", "--enable-expert-distribution-metrics",
    "--speculative-moe-runner-backend triton", "--speculative-moe-a2a-backend deepep",
    "--flashinfer-mxfp4-moe-precision bf16", "--flashinfer-mxfp4-moe-precision fp8",
    "--disable-flashinfer-cutlass-moe-fp4-allgather",
    "--disable-shared-experts-fusion", "--enforce-shared-experts-fusion",
    "--enable-fused-moe-sum-all-reduce", "--moe-dense-tp-size 1",
    # older SGLang's: FlashInfer's CUTLASS MoE kernels, the shared experts' fusion (0: none)
    "--enable-flashinfer-moe", "--n-share-experts-fusion 8", "--n-share-experts-fusion 0",
])
def test_flags_asking_for_what_aiollm_does_are_accepted_and_change_nothing(line):
    assert options(line) == options("")


def test_flags_of_no_effect_are_logged_once_each(caplog):
    args = parse("--enable-metrics --attention-backend fa3 --enable-metrics")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert said == ["--enable-metrics has no effect: /metrics is always served (Prometheus "
                    "text)",
                    "--attention-backend fa3 has no effect: attention runs on aiollm's "
                    "Triton kernels (their PyTorch references on the CPU); outputs are the "
                    "same"], said


def test_what_sglangs_launch_flags_do_here_is_logged(caplog):
    """--cuda-graph-bs's list is read as its largest size, --watchdog-timeout has no
    effect: each start says so in a line naming the flag."""
    args = parse("--cuda-graph-bs 1 2 4 8 --watchdog-timeout 600")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("--cuda-graph-bs 1 2 4 8: decode batches of up to 8 requests "
                            "replay CUDA graphs") for m in said), said
    assert any(m.startswith("--watchdog-timeout 600 has no effect: ") for m in said), said
    caplog.clear()
    args = parse("--cuda-graph-bs 1 2 4 8 --disable-cuda-graph")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    assert "--cuda-graph-bs 1 2 4 8 has no effect: CUDA graphs are off" in caplog.text


def test_log_requests_and_stream_interval_are_logged_as_changing_nothing(caplog, capsys):
    """SGLang's --config example sets log-requests: true and vLLM's GPT-OSS recipes
    stream-interval: 20; both stopped the start, though neither changes an output."""
    args = parse("--log-requests --stream-interval 20")
    with caplog.at_level(logging.INFO, logger="aiollm"):
        checked_config(args.command_parser, args)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("--log-requests has no effect: request contents are never "
                            "logged; --log-level debug") for m in said), said
    assert any(m.startswith("--stream-interval 20 has no effect: streams send each step's "
                            "tokens") for m in said), said
    assert "argument --stream-interval: invalid int value: 'x'" in refusal(
        "--stream-interval x", capsys)


@pytest.mark.parametrize("line", ["--cuda-graph-max-bs 32 --cuda-graph-bs 1 2 4",
                                  "--cuda-graph-bs 1 2 4 --cuda-graph-max-bs 32"])
def test_sglangs_graph_sizes_beside_its_bound_win_as_in_sglang(line, caplog):
    """An SGLang launch line with both was refused as two values of one option; SGLang's
    ServerArgs takes the list's largest size as its cuda_graph_max_bs, whatever the order.
    The start says which value it uses."""
    args = parse(line)
    assert args.cuda_graph_max_batch == 4
    with caplog.at_level(logging.INFO, logger="aiollm"):
        config, _ = checked_config(args.command_parser, args)
    assert config.cuda_graph_max_batch == 4
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("--cuda-graph-bs 1 2 4: decode batches of up to 4 requests ")
               and m.endswith("; --cuda-graph-max-bs 32 is not used: as in SGLang, the "
                              "list's largest size is the bound") for m in said), said


_THREE = ("--cuda-graph-bs 1 2 8", "--cuda-graph-max-bs 16", "--cuda-graph-max-batch {}")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_three_spellings_of_the_graph_bound_get_one_answer_in_any_order(order, capsys):
    """--cuda-graph-bs wins over SGLang's --cuda-graph-max-bs; aiollm's --cuda-graph-max-batch
    is held to both. The answer hung on the order: --cuda-graph-max-bs 16 beside
    --cuda-graph-max-batch 8 (two values of one option, refused alone) was refused in some
    orders and in others served with 16 dropped unsaid; --cuda-graph-max-batch 16 given
    before --cuda-graph-max-bs 16 and the list was dropped unsaid too."""
    for bound in (8, 16):  # the list's largest, SGLang's bound
        line = " ".join(_THREE[i].format(bound) for i in order)
        err = refusal(line, capsys)
        assert "are two values of one option: give one" in err, (line, err)
    line = " ".join(_THREE[i].format(16).replace("16", "8") for i in order)
    assert parse(line).cuda_graph_max_batch == 8  # all agree: served


@pytest.mark.parametrize("line, says", [
    ("--max-num-seqs 8 --max-running-requests 8 --max-running-requests 4",
     "argument --max-running-requests: 4 and --max-num-seqs 8 are two values"),
    ("--cuda-graph-max-batch 8 --cuda-graph-bs 1 2 8 --cuda-graph-bs 1 4",
     "argument --cuda-graph-bs: 4 and --cuda-graph-max-batch 8 are two values"),
])
def test_a_spelling_given_again_is_held_to_the_other_spellings(line, says, capsys):
    """A spelling given twice keeps its last value (argparse's rule), but was checked
    against nothing then: vLLM's --max-num-seqs 8 was served as 4, unsaid, where the same
    4 given once beside it was refused."""
    err = refusal(line, capsys)
    assert says in err, err
    assert parse("--max-running-requests 8 --max-running-requests 4").max_running_requests == 4


@pytest.mark.parametrize("line, says", [
    # aiollm's own bound beside the list: two values, as for every other option
    ("--cuda-graph-max-batch 32 --cuda-graph-bs 1 2 4",
     "argument --cuda-graph-bs: 4 and --cuda-graph-max-batch 32 are two values of one option"),
    ("--cuda-graph-bs 1 2 4 --cuda-graph-max-batch 32",
     "argument --cuda-graph-max-batch: 32 and --cuda-graph-bs 4 are two values of one option"),
    ("--cuda-graph-bs 0 4", "argument --cuda-graph-bs: batch sizes must be whole numbers >= 1"),
    ("--cuda-graph-bs 4 x", "argument --cuda-graph-bs: batch sizes must be whole numbers >= 1"),
    ("--max-queued-requests 0",
     "argument --max-queued-requests: max_waiting_requests must be an integer >= 1, got 0"),
    ("--log-level trace", "argument --log-level: invalid choice: 'trace'"),
    # two values of the waiting limit: the last was served silently (aiollm's own flag
    # stored without the alias's check), either way round
    ("--max-queued-requests 5 --max-waiting-requests 6", "argument --max-waiting-requests: "
     "6 and --max-queued-requests 5 are two values of one option: give one"),
    ("--max-waiting-requests 6 --max-queued-requests 5", "argument --max-queued-requests: "
     "5 and --max-waiting-requests 6 are two values of one option: give one"),
])
def test_bad_values_of_sglangs_launch_flags_name_the_flag(line, says, capsys):
    err = refusal(line, capsys)
    assert says in err, err


def test_a_model_after_the_graph_sizes_is_named_as_read_as_a_size(capsys):
    """`aiollm serve --cuda-graph-bs 1 2 4 8 /m`: argparse's nargs="+" reads every word up
    to the next flag as a size, MODEL too; the error said the sizes were not numbers,
    not where MODEL goes (vLLM's --cudagraph-capture-sizes says it)."""
    err = refusal("--cuda-graph-bs 1 2 4 8 /m", capsys, model=())
    assert err.endswith("got 1 2 4 8 /m (the sizes take every word up to the next flag: "
                        "give the model first, `aiollm serve MODEL ...`, or as "
                        "--model-path MODEL)"), err
    err = refusal("--cuda-graph-bs 4 x", capsys)  # after MODEL: a bad size, no more
    assert err.endswith("got 4 x"), err


@pytest.mark.parametrize("line, names", [
    ("--dp-size 2", ("one aiollm server per replica",)),
    ("--dp 2", ("one aiollm server per replica",)),
    ("--enable-dp-attention", ("--tensor-parallel-size",)),
    ("--pp-size 2", ("--tensor-parallel-size",)),
    ("--ep-size 8", ("no expert parallelism",)),
    ("--enable-ep-moe", ("no expert parallelism",)),
    ("--moe-a2a-backend deepep", ("no expert parallelism",)),  # SGLang's ep_size = tp_size
    ("--enable-deepep-moe", ("no expert parallelism",)),  # its --moe-a2a-backend deepep
    # SGLang's MoE flags asking for expert parallelism or what needs it, which stopped at
    # "unrecognized arguments"
    ("--expert-parallel-size 8", ("no expert parallelism", "leave the flag out")),
    ("--ep-num-redundant-experts 32", ("no redundant experts", "give 0")),
    ("--enable-eplb", ("no expert load balancing", "leave the flag out")),
    # SGLang itself refuses them with --moe-a2a-backend none
    ("--enable-two-batch-overlap", ("all-to-all", "--moe-a2a-backend none")),
    ("--enable-single-batch-overlap", ("all-to-all", "--moe-a2a-backend none")),
    ("--enable-waterfill", ("no expert parallelism",)),
    ("--enable-elastic-expert-backup", ("no elastic expert backup",)),
    ("--elastic-ep-backend mooncake", ("no elastic expert parallelism",)),
    # values SGLang's parser refuses too: none of its choices, no whole number, no rank count
    ("--deepep-mode fast", ("invalid choice: 'fast'",)),
    ("--expert-distribution-recorder-mode all", ("invalid choice: 'all'",)),
    ("--ep-dispatch-algorithm best", ("invalid choice: 'best'",)),
    ("--moe-dense-tp-size one", ("invalid int value: 'one'",)),
    # SGLang's load test of dispatch: random router logits, so other experts, other tokens
    ("--ep-dispatch-algorithm fake", ("at random", "changes the outputs", "give static")),
    ("--speculative-algorithm EAGLE", ("speculative decoding",)),
    ("--speculative-draft-model-path /d", ("speculative decoding",)),
    ("--speculative-num-steps 3", ("speculative decoding",)),
    ("--schedule-policy lpm", ("first come, first served",)),
    ("--schedule-conservativeness 0.3", ("--scheduler",)),
    ("--is-embedding", ("generative models only",)),
    ("--enable-multimodal", ("text alone",)),
    ("--lora-paths a=/x", ("merged",)),
    ("--grammar-backend outlines", ("xgrammar",)),
    ("--disable-overlap-schedule", ("step N+1",)),
    ("--allow-auto-truncate", ("never cut short",)),
    ("--page-size 16", ("token-level",)),
    ("--enable-hierarchical-cache", ("host memory",)),
    ("--base-gpu-id 2", ("CUDA_VISIBLE_DEVICES",)),
    # vLLM's refusals answer SGLang's flags of the same spelling
    ("--quantization fp8", ("GGUF",)),
    ("--kv-cache-dtype fp8_e5m2", ("no fp8",)),
])
def test_flags_aiollm_cannot_honour_stop_the_start_saying_what_to_do(line, names, capsys):
    err = refusal(line, capsys)
    flag = line.split()[0]
    # argparse names the flag with its other spellings (--ep-size/--ep/--expert-parallel-size)
    assert (f"argument {flag}" in err or f"/{flag}:" in err
            or flag.lstrip("-").replace("-", "_") in err), err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("line, tp", [
    ("--moe-dense-tp-size 1", 1), ("--tp 2 --moe-dense-tp-size 1", 2),
    ("--moe-dense-tp-size 2 --tp 2", 2), ("--tp-size 4 --moe-dense-tp-size 4", 4)])
def test_dense_tp_size_of_one_or_the_tp_size_is_taken(line, tp, caplog):
    """SGLang's --moe-dense-tp-size takes 1 or its --tp-size, given before or after it."""
    args = parse(line)
    with caplog.at_level(logging.INFO, logger="aiollm.cli.serve_checks"):
        config, _ = checked_config(args.command_parser, args)
    assert config.tensor_parallel_size == tp
    assert any(m.startswith("--moe-dense-tp-size ") and "has no effect" in m
               for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("line, says", [
    # any other size SGLang's check refuses; it was taken, with no effect
    ("--moe-dense-tp-size 8", "(--tensor-parallel-size), 1: the layer split over the "
                              "ranks, as aiollm splits it; got 8"),
    ("--moe-dense-tp-size 2 --tp 4", "(--tp), 4: the layer split over the ranks, as aiollm "
                                     "splits it; got 2"),  # named as typed
    ("--moe-dense-tp-size 0", "; got 0"),
    ("--moe-dense-tp-size 4 --tp 4 --moe-dense-tp-size 3", "(--tp), 4: the layer split over "
                                                           "the ranks, as aiollm splits "
                                                           "it; got 3"),  # the last value
])
def test_dense_tp_size_sglang_refuses_stops_the_start(line, says, capsys):
    err = refusal(line, capsys)
    assert err.startswith("aiollm serve: error: argument --moe-dense-tp-size: SGLang takes 1 "
                          "(each dense MLP layer whole on every rank) or the tensor-parallel "
                          "size "), err
    assert err.endswith(says), err


def test_help_names_the_aliases_and_the_refused_flags_once():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["serve"]
                    .format_help().split())
    group = text[text.index("SGLang's flags:"):text.index("LightLLM's flags:")]
    for said in ("--model-path is MODEL", "--context-length is --max-model-len",
                 "--disable-radix-cache is --no-prefix-cache", "--speculative-algorithm",
                 "--enable-ep-moe", "--dp-size"):
        assert said in group, said
    assert "--mem-fraction-static F" in group  # sizes the pool: shown with its help
    # hidden: an alias or a refusal has no help line of its own
    assert "--context-length CONTEXT_LENGTH" not in text and "--dp-size DP_SIZE" not in text
