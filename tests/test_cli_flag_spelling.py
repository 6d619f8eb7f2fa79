"""`aiollm serve` reading flags as vLLM's parser spells them: a JSON flag's keys given one
by one after its short single-dash name (`-cc.mode 3`, vLLM's; `-O.level 3`, its older
releases'), the short and long names of vLLM's compilation flags, and a flag of no effect
given more than once. Parse-level: the parser is called directly, no model loads."""

from __future__ import annotations

import logging

import pytest

from aiollm.cli import build_parser
from aiollm.cli.flag_spelling import json_keys

def refusal(argv: list[str], capsys) -> str:
    """The one error line `aiollm serve M argv` stops with (argparse exits 2)."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "M", *argv])
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_single_dash_flags_keys_given_one_by_one_are_its_json():
    """vLLM's parser reads `-cc.mode 3` (and its older `-O.level 3`) as the short flag given
    the JSON object of those keys, as it reads `--compilation-config.mode 3`: here the
    dotted words were left as they were, for argparse to misread."""
    assert json_keys(["-cc.mode", "3", "-cc.backend=eager", "-cc.custom_ops+", "-a,+b",
                      "--port", "1"]) == [
        "--port", "1", "-cc", '{"mode": 3, "backend": "eager", "custom_ops": ["-a", "+b"]}']
    assert json_keys(["-O.level", "3"]) == ["-O", '{"level": 3}']
    # a negative number is a value, not a flag: it stays as given
    assert json_keys(["--temperature", "-0.5", "--x", "-1.5e3"]) == [
        "--temperature", "-0.5", "--x", "-1.5e3"]


@pytest.mark.parametrize("argv, kept", [
    (["-cc.mode", "3"], {"config": ("-cc", {"mode": 3})}),
    (["-cc", '{"mode": 3}'], {"config": ("-cc", {"mode": 3})}),
    (["-cc.mode=3", "--port", "1"], {"config": ("-cc", {"mode": 3})}),
    (["-O.level", "3", "--port", "1"], {"config": ("-O", {"level": 3})}),
    (["-O.cudagraph_mode=FULL"], {"config": ("-O", {"cudagraph_mode": "FULL"})}),
    (["-O3"], {"level": ("-O3", 3)}),
    (["-O=0"], {"level": ("-O0", 0)}),
    (["--optimization-level", "2"], {"level": ("--optimization-level 2", 2)}),
    (["--compilation-config.mode", "3"], {"config": ("--compilation-config", {"mode": 3})}),
    (["--compilation-conf.mode", "3"],  # argparse's abbreviation, its keys gathered too
     {"config": ("--compilation-config", {"mode": 3})}),
])
def test_vllms_compilation_flags_are_read_however_spelt(argv, kept):
    """vLLM's `-cc` (--compilation-config) and `-O` (--optimization-level, and its older
    short name of --compilation-config), dotted keys and all, reach serve's checks as the
    level or the JSON object they give (vllm_compilation.py reads them)."""
    assert build_parser().parse_args(["serve", "M", *argv]).vllm_graphs == kept


def test_a_flag_of_no_effect_given_twice_is_logged_once(caplog):
    """A launch line that repeats a flag of no effect (a wrapper script adding its own) was
    told so once per repetition; it is one flag: one line, with the value argparse keeps
    (the last)."""
    from aiollm.cli.serve_checks import checked_config

    argv = ["serve", "M", "--enable-chunked-prefill", "--all2all-backend", "naive",
            "--enable-chunked-prefill", "--all2all-backend", "deepep_low_latency"]
    args = build_parser().parse_args(argv)
    with caplog.at_level(logging.INFO, logger="aiollm.cli"):
        checked_config(args.command_parser, args)
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("--enable-chunked-prefill has no effect"), said
    assert said[1].startswith("--all2all-backend deepep_low_latency has no effect"), said


@pytest.mark.parametrize("argv, shown", [
    # a model path beginning with "-" (give it after "--"): it swallowed --port as its
    # value, and the error named '-m {"x": "--port"}', which nobody typed
    (["-m.x", "--port", "1"], "-m.x"),
    (["--no-such-flag.key", "v"], "--no-such-flag.key v"),
    (["-Z.a=1"], "-Z.a=1"),
])
def test_a_dotted_word_of_no_flag_is_named_as_typed(argv, shown, capsys):
    """Only a flag the parser knows (or argparse's abbreviation of one) has its keys
    gathered into JSON: another dotted word stays as typed, for argparse to name."""
    err = refusal(argv, capsys)
    assert err.endswith(f"unrecognized arguments: {shown}"), err


def test_a_known_flags_keys_are_still_gathered():
    """A negative number is a key's value (abbreviations: above)."""
    args = build_parser().parse_args(["serve", "M", "--eplb-config.window_size", "-5",
                                      "--eplb_config.step_interval=7"])
    assert args.no_effect[0][0] == '--eplb-config {"window_size": -5, "step_interval": 7}'
