"""The no-effect flags that take a value (vLLM's, SGLang's and LightLLM's NO_EFFECT_VALUES):
a value of the wrong type, or not one of the engine's choices, is a usage error naming the
flag as typed, as in the flag's own engine; a good value is taken. Parse-only."""

from __future__ import annotations

import logging

import pytest
from cli_lines import refusal

from aiollm import vllm_flags
from aiollm.cli import build_parser, lightllm_flags, sglang_flags

IGNORED = [*vllm_flags.NO_EFFECT_VALUES, *sglang_flags.NO_EFFECT_VALUES,
           *lightllm_flags.NO_EFFECT_VALUES]
# names whose engine takes any text (backends' lists grow with each release; --eplb-config
# is its own JSON check, LightLLM's --mode and attention backends their own checks of names):
# every other flag must say its type
ANY_TEXT = {"--attention-backend", "--sampling-backend", "--all2all-backend", "--eplb-config",
            "--moe-runner-backend", "--mode", "--limit-mm-per-prompt", "--llm-prefill-att-backend",
            "--llm-decode-att-backend",
            # MoE kernels' and all-to-all backends' names (vLLM's, and SGLang's for a draft
            # model), SGLang's DeepEP config (JSON text or a file), expert locations (a file
            # or "trivial") and EPLB algorithm (a name): any text, as their engine's str;
            # SGLang's MXFP4 MoE precisions, a list that grew (default, bf16, then fp8)
            "--moe-backend", "--speculative-moe-runner-backend", "--speculative-moe-a2a-backend",
            "--deepep-config", "--init-expert-location", "--eplb-algorithm",
            "--flashinfer-mxfp4-moe-precision"}
# a good value of a flag with a check of its own
OWN_CHECK = {"--eplb-config": "{}", "--mode": "triton_gqa_flashdecoding",
             "--limit-mm-per-prompt": '{"image": 0}', "--llm-prefill-att-backend": "fa3",
             "--llm-decode-att-backend": "triton"}
GOOD = {int: "6", float: "0.5", vllm_flags.optional_int: "None"}


def test_every_flag_of_a_value_says_its_type_unless_its_engine_takes_any_text():
    untyped = {i.names[0] for i in IGNORED if i.kind is str and i.choices is None}
    assert untyped == ANY_TEXT


@pytest.mark.parametrize("ignored", [i for i in IGNORED if i.names[0] not in ANY_TEXT],
                         ids=lambda i: i.names[0])
def test_a_bad_value_is_a_usage_error_naming_the_flag_as_typed(ignored, capsys):
    flag = ignored.names[0]
    said = refusal(f"{flag} abc", capsys)
    kind = "choice" if ignored.choices else f"{ignored.kind.__name__.split('_')[-1]} value"
    assert f"argument {flag}: invalid {kind}: 'abc'" in said, said
    typed = "--" + flag[2:].replace("-", "_")  # LightLLM's spelling, as vLLM's parser reads
    assert f"argument {typed}: invalid" in refusal(f"{typed} abc", capsys)


@pytest.mark.parametrize("ignored", IGNORED, ids=lambda i: i.names[0])
def test_a_good_value_is_taken_and_noted_as_typed(ignored):
    value = (ignored.choices[0] if ignored.choices
             else OWN_CHECK.get(ignored.names[0]) or GOOD.get(ignored.kind, "x"))
    args = build_parser().parse_args(["serve", "M", ignored.names[0], value])
    assert args.no_effect == [(f"{ignored.names[0]} {value}", ignored.why)]



@pytest.mark.parametrize("args", [["--max-log-len", ""], ["--max_log_len="],
                                  ["--attention-backend", ""]])
def test_an_empty_value_is_shown_in_the_log_as_empty(args, caplog):
    """vLLM's --max-log-len takes "" (None, its 'not set'), SGLang's backends any text: the
    log line read "--max-log-len has no effect", a flag with no value, as a switch's."""
    from aiollm.cli.serve_checks import checked_config

    parsed = build_parser().parse_args(["serve", "M", "--device", "cpu", *args])
    with caplog.at_level(logging.INFO):
        checked_config(parsed.command_parser, parsed)
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert said and said[0].startswith(f"{args[0].rstrip('=')} '' has no effect: "), said


def test_help_lists_the_choices_of_a_flag_that_has_them(capsys):
    """--help showed `--expert-placement-strategy STRATEGY`, hiding the two values the flag
    takes (any other is a usage error): argparse's {linear,round_robin}, as vLLM's --help
    shows them."""
    from aiollm.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help=expert-placement"])
    assert "--expert-placement-strategy {linear,round_robin}" in capsys.readouterr().out
