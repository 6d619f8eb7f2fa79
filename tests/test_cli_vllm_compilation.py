"""vLLM's -O/--optimization-level and -cc/--compilation-config on `aiollm serve` and as
LLM(...)'s keywords (aiollm/vllm_compilation.py): each was refused whatever its value, so a
launch line with `-O3` (in many vLLM scripts) stopped at start. Parse-level and serve's
checks: no model loads."""

from __future__ import annotations

import pytest

from aiollm.cli import build_parser
from aiollm.vllm_names import engine_options
from cli_lines import refusal, started


@pytest.mark.parametrize("line, shown", [
    ("-O3", "-O3"), ("-O2", "-O2"), ("-O1", "-O1"), ("-O 3", "-O3"), ("-O=3", "-O3"),
    ("--optimization-level 3", "--optimization-level 3"),
])
def test_an_optimization_level_above_0_starts_with_aiollms_graphs(line, shown, caplog):
    """-O1 to -O3 only choose how vLLM compiles and captures graphs: the server starts as
    without them (CUDA graphs on, the default size), saying once that they change
    nothing."""
    config, said = started(line, caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == 256
    lines = [s for s in said if s.startswith(shown + " has no effect")]
    assert len(lines) == 1 and "torch.compile" in lines[0], said


@pytest.mark.parametrize("line", ["-O0", "-O 0", "--optimization-level 0", "-O.level 0",
                                  "-cc.cudagraph_mode NONE", "-cc.cudagraph_mode none",
                                  "-cc.mode 0", "-cc.mode NONE", "-cc 0",
                                  "-cc.use_cudagraph false",
                                  "-cc.max_cudagraph_capture_size 0",
                                  "-cc.cudagraph_capture_sizes []",
                                  "-O1 -cc.mode 2"])
def test_what_leaves_vllm_with_no_cuda_graphs_runs_eagerly(line, caplog):
    """vLLM runs these with no CUDA graphs (-O0's default graph mode NONE; a piecewise
    graph mode, the default above -O0, needs compilation mode 3, else vLLM sets NONE):
    aiollm runs every step eagerly too, as --enforce-eager, and says so."""
    config, said = started(line, caplog)
    assert config.cuda_graph is False
    assert any("--enforce-eager" in s and "eagerly" in s for s in said), said


@pytest.mark.parametrize("line", [
    "-cc.mode 0 -cc.cudagraph_mode FULL_DECODE_ONLY",  # full graphs need no compilation
    "-cc.mode 3", "-cc.cudagraph_mode FULL", "-cc.cudagraph_mode PIECEWISE",
    "-cc.cudagraph_mode=FULL_AND_PIECEWISE", "-O0 -cc.cudagraph_mode FULL",
    "-cc.backend eager", "-cc.pass_config.fuse_allreduce_rms=True",
    "-cc.custom_ops+ +rms_norm", "-cc.full_cuda_graph true",
])
def test_other_compilation_settings_keep_the_graphs_and_say_so(line, caplog):
    config, said = started(line, caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == 256
    assert any("has no effect" in s for s in said), said


@pytest.mark.parametrize("line, size", [
    ("-cc.max_cudagraph_capture_size 64", 64),
    ("-cc.max_capture_size 32", 32),  # its older name
    ("-cc.cudagraph_capture_sizes [1,2,4,8,16]", 16),
    ("-cc.cudagraph_capture_sizes+ 1,2,48", 48),
    ("-cc.cudagraph_capture_sizes [1,2,4,64] -cc.max_cudagraph_capture_size 64", 64),
    ("-cc.max_cudagraph_capture_size 64 --cuda-graph-max-batch 64", 64),
    ("-O3 -cc.max_cudagraph_capture_size=96", 96),
])
def test_the_largest_cuda_graph_is_cuda_graph_max_batch(line, size, caplog):
    config, said = started(line, caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == size
    assert any(f"--cuda-graph-max-batch {size}" in s for s in said), said


def test_a_graph_size_under_settings_of_no_graphs_is_said_to_change_nothing(caplog):
    """-O0 captures no graph in vLLM, whatever the largest size: eager, and the size is
    not reported as --cuda-graph-max-batch."""
    config, said = started("-O0 -cc.max_cudagraph_capture_size 64", caplog)
    assert config.cuda_graph is False
    assert any(s.startswith("-cc.max_cudagraph_capture_size=64 has no effect") for s in said)
    assert not any("--cuda-graph-max-batch 64" in s for s in said), said


def test_sizes_that_disagree_stop_the_start_as_in_vllm(capsys):
    """vLLM refuses a max_cudagraph_capture_size other than the largest of
    cudagraph_capture_sizes (VllmConfig's "should be consistent with the max value of
    cudagraph_capture_sizes"); the smaller was taken. 0 with sizes given is such a
    disagreement too (vLLM: its largest graph must be >= 1 while graphs are on)."""
    err = refusal("-cc.cudagraph_capture_sizes [1,2,4,128] -cc.max_cudagraph_capture_size 64",
                  capsys)
    assert ("argument -cc/--compilation-config: max_cudagraph_capture_size 64 and the "
            "largest of cudagraph_capture_sizes, 128, disagree") in err, err
    err = refusal("--compilation-config.cudagraph_capture_sizes [1,2] "
                  "--compilation-config.max_cudagraph_capture_size 0", capsys)
    assert "max_cudagraph_capture_size 0 and the largest of cudagraph_capture_sizes, 2" in err


def test_sizes_that_disagree_are_moot_where_no_graph_is_captured(caplog):
    """vLLM checks the sizes only while it captures graphs (-O0, cudagraph_mode NONE and
    --enforce-eager set both to "none")."""
    for line in ("-O0", "-cc.cudagraph_mode NONE", "--enforce-eager"):
        config, said = started(line + " -cc.cudagraph_capture_sizes [1,2,4,128] "
                                      "-cc.max_cudagraph_capture_size 64", caplog)
        assert config.cuda_graph is False, line


@pytest.mark.parametrize("line", ["--enforce-eager -cc.cudagraph_capture_sizes [1,2,4]",
                                  "-cc.max_cudagraph_capture_size 64 --no-cuda-graph",
                                  "--enforce-eager -cc.max_cudagraph_capture_size 64 "
                                  "--cuda-graph-max-batch 32"])
def test_a_graph_size_beside_enforce_eager_is_said_to_change_nothing(line, caplog):
    """--enforce-eager wins over -cc's sizes (vLLM sets them to none under it): the log
    said decode batches replay CUDA graphs while none was captured, and a
    --cuda-graph-max-batch beside them, as moot, was called a disagreement."""
    caplog.clear()
    config, said = started(line, caplog)
    assert config.cuda_graph is False
    assert not any("replay CUDA graphs" in s for s in said), said
    assert any(s.startswith("-cc.") and "has no effect" in s for s in said), said


def test_a_level_key_beside_mode_is_said_to_change_nothing(caplog):
    """vLLM's CompilationConfig takes mode over level, its older name, where both are
    given: -cc.level=3 beside mode 0 was said to run every step eagerly."""
    config, said = started("""-cc {"level":3,"mode":0}""", caplog)
    assert config.cuda_graph is False
    assert [s for s in said if s.startswith("-cc.level=3")] == [
        "-cc.level=3 has no effect: mode, given too, is taken over level (its older name)"]
    assert any(s.startswith("-cc.mode=0: every step runs eagerly") for s in said), said


def test_enforce_eager_wins_over_an_optimization_level(caplog):
    """As in vLLM (enforce_eager sets -O0 there)."""
    config, _ = started("-O3 --enforce-eager", caplog)
    assert config.cuda_graph is False


@pytest.mark.parametrize("line, said", [
    ("-O4", "argument -O/--optimization-level: takes an optimization level 0, 1, 2 or 3"),
    ("-Ofast", "got 'fast'"),
    ("--optimization-level -1", "got '-1'"),
    ("-cc {bad", "'{bad' does not parse"),
    ("-cc 7", "got '7'"),
    ("-cc.no_such_key 1", "argument -cc/--compilation-config: 'no_such_key' is not a key"),
    ("-O.no_such_key 1", "argument -O/--optimization-level: 'no_such_key' is not a key"),
    # null is vLLM's "not set" for a key it has; a key it lacks is refused whatever its value
    ("-cc.no_such_key null", "argument -cc/--compilation-config: 'no_such_key' is not a key"),
    ("-cc.cudagraph_mode FOO", "cudagraph_mode takes one of NONE"),
    ("-cc.mode 5", "mode takes 0, 1, 2, 3"),
    ("-cc.cudagraph_capture_sizes [0,8]", "got [0, 8]"),
    ("-cc.max_cudagraph_capture_size -8", "got -8"),
    ("-cc.pass_config 3", "pass_config takes a JSON object; got 3"),
    ("-cc.custom_ops none", "custom_ops takes a list"),
    ("-cc [1]", "got [1]"),
    ("-cc.max_cudagraph_capture_size 64 --cuda-graph-max-batch 32",
     "argument --cuda-graph-max-batch: 32 and -cc's largest CUDA graph, 64, disagree"),
])
def test_a_value_vllm_refuses_stops_naming_the_flag_and_value(line, said, capsys):
    err = refusal(line, capsys)
    assert said in err, err


def test_serve_help_describes_both_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "-O LEVEL, --optimization-level LEVEL" in out
    assert "-cc JSON, --compilation-config JSON" in out


@pytest.mark.parametrize("options, cuda_graph, max_batch", [
    ({"optimization_level": 3}, None, None),
    ({"optimization_level": 0}, False, None),
    ({"optimization_level": "0"}, False, None),
    ({"compilation_config": 3}, None, None),  # vLLM's LLM: an int is the level
    ({"compilation_config": {"cudagraph_mode": "NONE"}}, False, None),
    ({"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]}}, None, 4),
    ({"compilation_config": '{"max_cudagraph_capture_size": 8}'}, None, 8),
    # enforce_eager wins: no graph, so no largest one
    ({"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]}, "enforce_eager": True},
     False, None),
])
def test_llm_keywords_are_read_as_the_flags(options, cuda_graph, max_batch):
    """LLM(optimization_level=..., compilation_config=...) as `aiollm serve` reads -O and
    -cc: compilation_config=3 was refused."""
    ours, _ = engine_options(options)
    assert ours.get("cuda_graph") == cuda_graph
    assert ours.get("cuda_graph_max_batch") == max_batch


@pytest.mark.parametrize("options, lead", [
    ({"optimization_level": 9}, "optimization_level=9: takes an optimization level"),
    ({"compilation_config": {"nope": 1}}, "compilation_config={'nope': 1}: 'nope' is not"),
    ({"compilation_config": [3]}, "compilation_config=[3]: takes a JSON object"),
    ({"compilation_config": {"max_cudagraph_capture_size": 8},
      "cuda_graph_max_batch": 16}, "cuda_graph_max_batch=16 and compilation_config's"),
    ({"compilation_config": {"max_cudagraph_capture_size": 8,
                             "cudagraph_capture_sizes": [1, 2, 4]}},
     "compilation_config={'max_cudagraph_capture_size': 8, 'cudagraph_capture_sizes': "
     "[1, 2, 4]}: max_cudagraph_capture_size 8 and the largest of cudagraph_capture_sizes,"
     " 4, disagree"),
])
def test_llm_keywords_vllm_refuses_name_the_keyword(options, lead):
    with pytest.raises(ValueError) as e:
        engine_options(options)
    assert str(e.value).startswith(lead), e.value
