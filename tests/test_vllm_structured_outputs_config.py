"""vLLM's structured outputs config on `aiollm serve` (--structured-outputs-config JSON, or
its keys one by one) and as LLM(structured_outputs_config=...) (aiollm/vllm_structured_config.py):
vLLM's current name for its grammar library was "unrecognized arguments" and a TypeError.
Each launch line and keyword set below is checked for what it starts with (EngineConfig's
grammar_backend and reasoning_parser, and the log line of each key) or the error it stops
with. Parse-level and serve's checks: no model loads."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from aiollm.cli import build_parser
from aiollm.cli.serve_checks import checked_config
from aiollm.vllm_names import engine_options
from cli_lines import refusal, started

SOC = "--structured-outputs-config"


@dataclass
class StructuredOutputsConfig:
    """vLLM's config object's fields and defaults (vllm/config/structured_outputs.py), as a
    vLLM script passes it to LLM(structured_outputs_config=...)."""

    backend: str = "auto"
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    reasoning_parser: str = ""
    reasoning_parser_plugin: str = ""
    enable_in_reasoning: bool = False


@pytest.mark.parametrize("line, backend, parser, said", [
    (SOC + ' {"backend":"xgrammar"}', "xgrammar", None, '.backend="xgrammar": grammars run'),
    (SOC + ".backend xgrammar", "xgrammar", None, "--grammar-backend xgrammar"),
    (SOC + ".backend auto", "xgrammar", None, '.backend="auto": grammars run on xgrammar'),
    ("--structured_outputs_config.backend=auto", "xgrammar", None, "xgrammar"),
    # beside aiollm's, SGLang's or LightLLM's flag of the same value: one option, agreeing
    (SOC + ".backend auto --grammar-backend xgrammar", "xgrammar", None, "xgrammar"),
    ("--output_constraint_mode xgrammar " + SOC + ".backend xgrammar", "xgrammar", None,
     "xgrammar"),
    # no backend given: --grammar-backend none stands, the other keys are logged
    (SOC + ".disable_fallback true --grammar-backend none", "none", None,
     ".disable_fallback=true has no effect: xgrammar is the one grammar library"),
    (SOC + ".reasoning_parser qwen3", "xgrammar", "qwen3", '.reasoning_parser="qwen3": as'),
    # vLLM's enable_in_reasoning false, left out, is --reasoning-parser's way: said so
    (SOC + ".reasoning_parser qwen3", "xgrammar", "qwen3",
     "reasoning included, as vLLM's enable_in_reasoning true; vLLM's default starts it after"),
    (SOC + ".reasoning_parser deepseek_r1 --reasoning-parser deepseek_r1", "xgrammar",
     "deepseek_r1", "as --reasoning-parser deepseek_r1"),
    (SOC + '.reasoning_parser "" --reasoning-parser qwen3', "xgrammar", "qwen3",
     '.reasoning_parser="" has no effect'),
    (SOC + ".backend xgrammar " + SOC + ".disable_any_whitespace true", "xgrammar", None,
     ".disable_any_whitespace=true has no effect: a response format's JSON has fixed "
     "whitespace"),
    (SOC + ".disable_any_whitespace false", "xgrammar", None,
     ".disable_any_whitespace=false has no effect"),
    (SOC + ".disable_additional_properties false", "xgrammar", None,
     "guidance backend's option, false as it is here"),
    (SOC + '.reasoning_parser_plugin ""', "xgrammar", None,
     '.reasoning_parser_plugin="" has no effect'),
    (SOC + ".enable_in_reasoning true --reasoning-parser qwen3", "xgrammar", "qwen3",
     ".enable_in_reasoning=true has no effect: a grammar shapes the output from its first"),
    (SOC + ".enable_in_reasoning false", "xgrammar", None,
     "no reasoning parser is set, so a grammar shapes the output from its first token"),
    # the JSON form and a dotted key are one object, the later's keys over the earlier's
    (SOC + ' {"backend":"auto","disable_fallback":false} ' + SOC + ".backend xgrammar",
     "xgrammar", None, '.backend="xgrammar"'),
    # dotted keys go over the JSON's wherever typed, as vLLM's parser puts them last
    (SOC + ".reasoning_parser qwen3 " + SOC + ' {"reasoning_parser":"deepseek_r1"}', "xgrammar",
     "qwen3", '.reasoning_parser="qwen3"'),
])
def test_a_launch_line_starts_with_what_its_config_asks(line, backend, parser, said, caplog):
    config, lines = started(line, caplog)
    assert (config.grammar_backend, config.reasoning_parser) == (backend, parser)
    assert any(said in s for s in lines), lines


@pytest.mark.parametrize("line, says", [
    (SOC + ".backend guidance", ('backend "guidance" is a library aiollm does not have',
                                 '"xgrammar" or "auto"', "--grammar-backend none")),
    (SOC + ".backend outlines", ('backend "outlines"', "xgrammar")),
    (SOC + ' {"backend":"lm-format-enforcer"}', ('"lm-format-enforcer"', "xgrammar")),
    (SOC + ".backend none", ('backend "none" is none of vLLM', "--grammar-backend none")),
    (SOC + ".backend llguidance", ("backend takes one of vLLM's auto, xgrammar, guidance",
                                   'aiollm runs "xgrammar" and "auto"', "'llguidance'")),
    (SOC + ".backend XGrammar", ('aiollm runs "xgrammar" and "auto"', "got 'XGrammar'")),
    (SOC + ".backend 3", ("backend takes one of", "got 3")),
    (SOC + ".bakend xgrammar", ("'bakend' is not a key of vLLM's StructuredOutputsConfig",
                                "backend, disable_fallback")),
    (SOC + ".disable_fallback yes", ("disable_fallback takes true or false", "'yes'")),
    (SOC + ".enable_in_reasoning 1", ("enable_in_reasoning takes true or false", "got 1")),
    (SOC + ".reasoning_parser 7", ("reasoning_parser takes a string", "got 7")),
    (SOC + ".reasoning_parser granite", ("reasoning_parser 'granite' is none of aiollm's",
                                         "deepseek_r1, qwen3")),
    (SOC + " xgrammar", ("takes a JSON object", "does not parse")),
    (SOC + " [1]", ("takes a JSON object", "got [1]")),
    # what would change outputs
    (SOC + ".reasoning_parser_plugin /p.py", ("reasoning_parser_plugin '/p.py'",
                                              "no code is loaded")),
    (SOC + ".disable_additional_properties true", ("disable_additional_properties true",
                                                   "guidance backend alone")),
    (SOC + ".enable_in_reasoning false --reasoning-parser qwen3",
     ("enable_in_reasoning false", "no such mode", "leave it out, or give true")),
    (SOC + ".enable_in_reasoning false " + SOC + ".reasoning_parser deepseek_r1",
     ("enable_in_reasoning false",)),
    # as vLLM refuses it: "auto" may pick a library without the option
    (SOC + ".disable_any_whitespace true", ('disable_any_whitespace true needs backend '
                                            '"xgrammar"',)),
    # beside another spelling of the option, with another value: both named
    (SOC + ".backend auto --grammar-backend none",
     ('backend "auto" (xgrammar here) and --grammar-backend none disagree',)),
    ("--grammar-backend none " + SOC + ".backend xgrammar",
     ('backend "xgrammar"', "--grammar-backend none disagree")),
    (SOC + ".backend xgrammar --output_constraint_mode none",
     ("--output_constraint_mode none disagree",)),
    (SOC + ".reasoning_parser qwen3 --reasoning-parser deepseek_r1",
     ('reasoning_parser "qwen3" and --reasoning-parser deepseek_r1 disagree',)),
])
def test_a_config_aiollm_cannot_serve_stops_the_start_naming_it(line, says, capsys):
    err = refusal(line, capsys)
    assert f"argument {SOC}:" in err, err
    for part in says:
        assert part in err, (part, err)


def test_the_flag_is_named_as_typed(capsys):
    err = refusal("--structured_outputs_config.backend guidance", capsys)
    assert err.startswith("aiollm serve: error: argument --structured_outputs_config: "), err


@pytest.mark.parametrize("line, says", [
    ("--guided-decoding-backend outlines", ("xgrammar", "--structured-outputs-config.backend "
                                            "xgrammar", "--grammar-backend none")),
    ("--reasoning-parser-plugin /p.py", ("no code is loaded", "--reasoning-parser")),
])
def test_vllms_older_and_plugin_flags_say_what_to_give(line, says, capsys):
    err = refusal(line, capsys)
    assert f"argument {line.split()[0]}:" in err
    for part in says:
        assert part in err, (part, err)


@pytest.mark.parametrize("argv", [["--guided-decoding-backend", "auto"],
                                  ["--guided-decoding-backend", "xgrammar"],
                                  ["--reasoning-parser-plugin", ""]])  # vLLM's default
def test_their_values_asking_for_aiollms_own_are_taken(argv):
    args = build_parser().parse_args(["serve", "M", "--device", "cpu", *argv])
    config, _ = checked_config(args.command_parser, args)
    assert (config.grammar_backend, config.reasoning_parser) == ("xgrammar", None)


@pytest.mark.parametrize("options, ours, said", [
    ({"structured_outputs_config": {"backend": "auto"}}, {"grammar_backend": "xgrammar"},
     'structured_outputs_config.backend="auto": grammars run on xgrammar'),
    ({"structured_outputs_config": '{"backend": "xgrammar"}'},
     {"grammar_backend": "xgrammar"}, "xgrammar"),
    ({"structured_outputs_config": {"backend": "xgrammar"}, "grammar_backend": "xgrammar"},
     {"grammar_backend": "xgrammar"}, "xgrammar"),
    ({"structured_outputs_config": {"reasoning_parser": "qwen3"}}, {"reasoning_parser": "qwen3"},
     'reasoning_parser="qwen3": as reasoning_parser qwen3'),
    ({"structured_outputs_config": {"disable_fallback": True}, "grammar_backend": "none"},
     {"grammar_backend": "none"}, "disable_fallback=true has no effect"),
    ({"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}},
     {"grammar_backend": "xgrammar"}, "disable_any_whitespace=true has no effect"),
    ({"structured_outputs_config": {}}, {}, None),
    # vLLM's object: the fields set are the keys given (the rest are what leaving them out is)
    ({"structured_outputs_config": StructuredOutputsConfig(backend="xgrammar",
                                                           reasoning_parser="qwen3")},
     {"grammar_backend": "xgrammar", "reasoning_parser": "qwen3"},
     "structured_outputs_config.reasoning_parser=\"qwen3\": as reasoning_parser qwen3"),
    ({"structured_outputs_config": StructuredOutputsConfig(disable_fallback=True),
      "grammar_backend": "none"}, {"grammar_backend": "none"},
     "disable_fallback=true has no effect"),
    ({"structured_outputs_config": StructuredOutputsConfig()}, {}, None),
    ({"structured_outputs_config": None}, {}, None),  # vLLM's default: not given
])
def test_the_keyword_is_read_as_the_flag(options, ours, said, caplog):
    with caplog.at_level(logging.INFO, logger="aiollm.vllm_names"):
        assert engine_options(options)[0] == ours
    lines = [r.getMessage() for r in caplog.records]
    assert said is None and not lines or any(said in s for s in lines), lines


@pytest.mark.parametrize("options, lead", [
    ({"structured_outputs_config": {"backend": "outlines"}},
     "structured_outputs_config={'backend': 'outlines'}: backend \"outlines\" is a library "
     "aiollm does not have"),
    ({"structured_outputs_config": {"backend": "auto"}, "grammar_backend": "none"},
     "structured_outputs_config={'backend': 'auto'}: backend \"auto\" (xgrammar here) and "
     "grammar_backend='none' disagree"),
    ({"grammar_backend": "none", "structured_outputs_config": {"backend": "xgrammar"}},
     "structured_outputs_config={'backend': 'xgrammar'}: backend \"xgrammar\" (xgrammar "
     "here) and grammar_backend='none' disagree"),
    ({"structured_outputs_config": {"reasoning_parser": "qwen3"},
      "reasoning_parser": "deepseek_r1"},
     "structured_outputs_config={'reasoning_parser': 'qwen3'}: reasoning_parser \"qwen3\" "
     "and reasoning_parser='deepseek_r1' disagree"),
    ({"structured_outputs_config": {"enable_in_reasoning": False},
      "reasoning_parser": "qwen3"},
     "structured_outputs_config={'enable_in_reasoning': False}: enable_in_reasoning false"),
    ({"structured_outputs_config": {"jsn": 1}},
     "structured_outputs_config={'jsn': 1}: 'jsn' is not a key of vLLM's"),
    ({"structured_outputs_config": {"disable_fallback": "true"}},
     "structured_outputs_config={'disable_fallback': 'true'}: disable_fallback takes true or "
     "false"),
    ({"structured_outputs_config": 3}, "structured_outputs_config=3: takes a dict of vLLM's "
     "StructuredOutputsConfig keys (or its JSON text), such as {\"backend\": \"xgrammar\"}, or "
     "a StructuredOutputsConfig; got int"),
    ({"structured_outputs_config": StructuredOutputsConfig}, "structured_outputs_config=<class"),
    ({"structured_outputs_config": "{"}, "structured_outputs_config='{': takes a JSON object"),
    ({"guided_decoding_backend": "outlines"},
     "guided_decoding_backend='outlines': grammars run on xgrammar"),
    ({"reasoning_parser_plugin": "/p.py"},
     "reasoning_parser_plugin='/p.py': no code is loaded"),
])
def test_a_keyword_value_aiollm_cannot_serve_names_it(options, lead):
    with pytest.raises(ValueError) as e:
        engine_options(options)
    assert str(e.value).startswith(lead), e.value


@pytest.mark.parametrize("config, options, says", [
    (StructuredOutputsConfig(backend="guidance"), {},
     'backend "guidance" is a library aiollm does not have'),
    (StructuredOutputsConfig(reasoning_parser="qwen3"), {"reasoning_parser": "deepseek_r1"},
     'reasoning_parser "qwen3" and reasoning_parser=\'deepseek_r1\' disagree'),
    (StructuredOutputsConfig(disable_additional_properties=True), {},
     "disable_additional_properties true is an option of vLLM's guidance backend alone"),
])
def test_a_config_object_aiollm_cannot_serve_names_it(config, options, says):
    with pytest.raises(ValueError) as e:
        engine_options({"structured_outputs_config": config, **options})
    assert str(e.value).startswith(f"structured_outputs_config={config!r}: "), e.value
    assert says in str(e.value), e.value


def test_a_misspelt_keyword_is_told_the_name():
    with pytest.raises(TypeError, match="did you mean structured_outputs_config"):
        engine_options({"structured_output_config": {}})


def test_llm_takes_the_keyword_and_refuses_before_loading():
    """LLM(...) itself: a config it takes reaches the model's load (here: a missing path),
    one it refuses stops before it, naming the keyword."""
    from aiollm import LLM

    missing = "/nonexistent/aiollm-test-model"
    with pytest.raises(FileNotFoundError):
        LLM(missing, structured_outputs_config={"backend": "auto"})
    with pytest.raises(ValueError, match="structured_outputs_config=.*'guidance'.*xgrammar"):
        LLM(missing, structured_outputs_config={"backend": "guidance"})
