"""vLLM's top-level --cudagraph-capture-sizes, --max-cudagraph-capture-size (its older
--cuda-graph-sizes) and --performance-mode on `aiollm serve` (aiollm/vllm_graph_flags.py):
each stopped a vLLM launch line as an unrecognized argument. The sizes are read as -cc's
keys of the same names are; the mode as what it changes in vLLM. Parse-level and serve's
checks: no model loads."""

from __future__ import annotations

import pytest

from aiollm.cli import build_parser
from cli_lines import refusal, started


@pytest.mark.parametrize("line, largest, shown", [
    ("--max-cudagraph-capture-size 64", 64, "--max-cudagraph-capture-size 64"),
    ("--max_cudagraph_capture_size=96", 96, "--max-cudagraph-capture-size 96"),
    ("--cudagraph-capture-sizes 1 2 4 48", 48, "--cudagraph-capture-sizes 1 2 4 48"),
    ("--cuda-graph-sizes 1 2 128", 128, "--cuda-graph-sizes 1 2 128"),
    ("--cudagraph-capture-sizes 1 2 64 --max-cudagraph-capture-size 64", 64,
     "--max-cudagraph-capture-size 64"),
    ("-O3 --max-cudagraph-capture-size 32", 32, "--max-cudagraph-capture-size 32"),
    ("-cc.mode 3 --cudagraph-capture-sizes 8 16", 16, "--cudagraph-capture-sizes 8 16"),
])
def test_a_graph_size_flag_is_the_largest_decode_graph(line, largest, shown, caplog):
    """As -cc.max_cudagraph_capture_size (or the largest of -cc.cudagraph_capture_sizes):
    --cuda-graph-max-batch, aiollm picking the sizes below it; the log names the flag."""
    config, said = started(line, caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == largest
    assert any(s.startswith(f"{shown}: decode batches of up to {largest} requests")
               for s in said), said


@pytest.mark.parametrize("line", ["--max-cudagraph-capture-size 0",
                                  "-O0 --max-cudagraph-capture-size 64",
                                  "--enforce-eager --cudagraph-capture-sizes 1 2 4"])
def test_no_graph_is_captured_where_vllm_captures_none(line, caplog):
    config, said = started(line, caplog)
    assert config.cuda_graph is False
    assert not any("replay CUDA graphs" in s for s in said), said


def test_max_cudagraph_capture_size_none_is_not_given(caplog):
    """vLLM's flag takes None (its optional int): left to the default."""
    config, _ = started("--max-cudagraph-capture-size None", caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == 256


@pytest.mark.parametrize("line, said", [
    ("--max-cudagraph-capture-size 64 -cc.max_cudagraph_capture_size 64",
     "argument --max-cudagraph-capture-size: -cc's max_cudagraph_capture_size is given too"),
    ("--cudagraph-capture-sizes 1 2 -cc.cudagraph_capture_sizes [1,2]",
     "argument --cudagraph-capture-sizes: -cc's cudagraph_capture_sizes is given too"),
    ("--cuda-graph-sizes 1 2 --cudagraph-capture-sizes 1 2",
     "argument --cudagraph-capture-sizes/--cuda-graph-sizes: --cuda-graph-sizes is given "
     "too"),
    ("--cudagraph-capture-sizes 1 2 128 --max-cudagraph-capture-size 64",
     "argument --max-cudagraph-capture-size: --max-cudagraph-capture-size 64 and the largest "
     "of --cudagraph-capture-sizes, 128, disagree"),
    ("-cc.cudagraph_capture_sizes [1,2,128] --max-cudagraph-capture-size 64",
     "argument --max-cudagraph-capture-size: --max-cudagraph-capture-size 64 and the largest "
     "of cudagraph_capture_sizes, 128, disagree"),
    ("--max-cudagraph-capture-size 64 --cuda-graph-max-batch 32",
     "argument --cuda-graph-max-batch: 32 and --max-cudagraph-capture-size's largest CUDA "
     "graph, 64, disagree"),
    ("--max-cudagraph-capture-size 1k", "argument --max-cudagraph-capture-size: takes a "
                                        "whole number >= 0; got '1k'"),
    ("--max-cudagraph-capture-size -8", "takes a whole number >= 0; got -8"),
    ("--cudagraph-capture-sizes 1 0", "argument --cudagraph-capture-sizes/--cuda-graph-sizes: "
                                      "takes batch sizes, whole numbers >= 1; got 0"),
])
def test_what_vllm_refuses_stops_naming_the_flag(line, said, capsys):
    """Both a flag and -cc's key of the same name: vLLM's EngineArgs refuses them as
    mutually exclusive. The flags take plain integers, as vLLM's (no 1k)."""
    err = refusal(line, capsys)
    assert said in err, err


@pytest.mark.parametrize("mode, says", [
    ("balanced", "--performance-mode balanced has no effect: it is vLLM's default"),
    ("interactivity", "--performance-mode interactivity has no effect: aiollm picks its "
                      "decode graph sizes itself"),
])
def test_a_performance_mode_that_changes_nothing_says_so(mode, says, caplog):
    config, said = started(f"--performance-mode {mode}", caplog)
    assert config.max_running_requests == 256 and config.max_prefill_tokens == 2048
    assert config.cuda_graph_max_batch == 256
    assert any(s.startswith(says) for s in said), said


def test_throughput_doubles_the_running_requests_not_given(caplog):
    """vLLM's throughput mode doubles its default max_num_seqs (and max_num_batched_tokens)
    where they are not given: aiollm doubles its --max-num-seqs; its step budget stays, as
    4096 measured no more output tokens/s than 2048 and a worse inter-token p99."""
    config, said = started("--performance-mode throughput", caplog)
    assert config.max_running_requests == 512 and config.max_prefill_tokens == 2048
    line = [s for s in said if s.startswith("--performance-mode throughput")]
    assert len(line) == 1 and "--max-num-seqs 512" in line[0], said
    config, said = started("--performance-mode=throughput --max-num-seqs 64", caplog)
    assert config.max_running_requests == 64
    assert any(s.startswith("--performance-mode throughput has no effect: --max-num-seqs "
                            "is given") for s in said), said


def test_an_unknown_performance_mode_names_the_choices(capsys):
    err = refusal("--performance-mode fast", capsys)
    assert "argument --performance-mode: invalid choice: 'fast'" in err, err
    assert "balanced" in err and "throughput" in err, err


def test_serve_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--cudagraph-capture-sizes", "--max-cudagraph-capture-size",
                 "--performance-mode"):
        assert flag in out, flag


@pytest.mark.parametrize("line, word", [
    ("--cudagraph-capture-sizes 1 2 4 Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"),
    ("--port 8001 --cuda-graph-sizes 8 ./models/7b", "./models/7b")])
def test_a_model_after_the_sizes_is_told_to_go_first(line, word, capsys):
    """The sizes take every word up to the next flag, as vLLM's do, so a model written
    after them is read as a size: the error says so and where the model goes, not only that
    the model's name is no batch size."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *line.split()])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"got {word!r}" in err, err
    assert "give the model first" in err, err


def test_a_bad_size_before_the_last_is_not_taken_for_a_model(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "M", "--cudagraph-capture-sizes", "1", "x", "4"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "got 'x'" in err and "model" not in err, err
