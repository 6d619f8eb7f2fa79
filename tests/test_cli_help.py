"""`aiollm serve --help=VALUE`, as vLLM's `vllm serve --help=all` / `--help=max-model-len` /
`--help=<group>` (its documented ways to read one part of a long help): argparse alone
answered every one with "ignored explicit argument"."""

from __future__ import annotations

import re

import pytest

SERVE_USAGE = "usage: aiollm serve [-h] [MODEL] [options]"


def _serve(args: list[str], capsys) -> tuple[int, str, str]:
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_help_all_is_the_whole_help(capsys):
    code, whole, _ = _serve(["--help"], capsys)
    assert code == 0
    code, out, err = _serve(["--help=all"], capsys)
    assert (code, err) == (0, "")
    assert out == whole


@pytest.mark.parametrize("value", ["max-model-len", "max_model_len", "--max-model-len",
                                   "MAX-MODEL"])
def test_help_keyword_shows_the_flags_it_names(value, capsys):
    code, out, err = _serve([f"--help={value}"], capsys)
    assert (code, err) == (0, "")
    assert "--max-model-len" in out
    assert "--port" not in out and "--eplb-config" not in out
    assert len(out.splitlines()) < 20, out


def test_help_keyword_matching_several_flags_shows_each(capsys):
    code, out, _ = _serve(["--help=eplb"], capsys)
    assert code == 0
    assert "--eplb-config" in out and "--enable-eplb" in out
    assert "--port" not in out


def test_help_group_shows_that_group(capsys):
    code, out, _ = _serve(["--help=Server"], capsys)
    assert code == 0
    assert "--port" in out and "--host" in out
    assert "--max-model-len" not in out


def test_help_matching_nothing_prints_a_tip_as_vllm_does(capsys):
    """vLLM's --help=WORD matching no group or option prints a tip (where to look instead)
    as its help, exit 0; this was a usage error, exit 2, which fails a script that only
    asked for help."""
    code, out, err = _serve(["--help=no-such-thing"], capsys)
    assert (code, err) == (0, "")
    assert "no option or group matching 'no-such-thing'" in out.lower(), out
    assert "--help=all" in out and "--help " in out, out
    assert len(out.splitlines()) <= 3, out


def test_help_value_after_a_bare_double_dash_is_not_help(capsys):
    """Words after "--" are positionals, not flags: serve's MODEL then, whatever they spell."""
    code, _, err = _serve(["--", "x", "--help=all"], capsys)
    assert code == 2 and "unrecognized arguments" in err


@pytest.mark.parametrize("args", [["--help="], ["-h="], ["--help=-"], ["--help=--"],
                                  ["--help=", "--port", "1"]])
def test_help_with_an_empty_word_is_the_whole_help(args, capsys):
    """An empty word (`--help=`, a script's `--help=$TOPIC` with TOPIC unset) matches every
    option, as vLLM's search for '' does: the whole help. It printed "No option or group
    matching ''", which helps nobody."""
    code, whole, _ = _serve(["--help"], capsys)
    code, out, err = _serve(args, capsys)
    assert (code, err) == (0, "")
    assert out == whole


@pytest.mark.parametrize(("value", "title", "flag", "command"), [
    ("sglang", "SGLang's flags", "--watchdog-timeout", "sglang.launch_server"),
    ("SGLang's-flags", "SGLang's flags", "--watchdog-timeout", "sglang.launch_server"),
    ("lightllm", "LightLLM's flags", "--mem-fraction", "lightllm.server.api_server"),
    ("lightllm_flags", "LightLLM's flags", "--mem-fraction", "lightllm.server.api_server"),
    ("vllm", "vLLM's flags", "-O", "`vllm serve`"),
])
def test_help_names_another_engines_group_by_that_engine(value, title, flag, command,
                                                         capsys):
    """The groups are titled "SGLang's flags", ...: --help=sglang and --help=lightllm
    matched no group (nor any option's name), and printed only the tip. The group's
    description, which lists the aliases, comes with its options."""
    code, out, err = _serve([f"--help={value}"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"{title}:"), out
    assert flag in out and command in out, out


def test_help_matching_nothing_names_the_groups_it_takes(capsys):
    """A group misnamed (`--help=sglang-options`, `--help=tp`) got a tip that there are
    groups, not which: the user read the whole --help to find them. Each one the tip names
    is a --help=GROUP that shows that group."""
    code, out, err = _serve(["--help=sglang-options"], capsys)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) <= 3, out
    named = out.split("groups: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"server", "tensor-parallelism", "vllm", "sglang", "lightllm"} <= set(named), out
    for group in named:
        code, shown, _ = _serve([f"--help={group}"], capsys)
        assert code == 0 and "matching" not in shown.splitlines()[0], (group, shown)


@pytest.mark.parametrize("word, title, option", [
    ("context-length", "--context-length, an alias of:", "--max-model-len MAX_MODEL_LEN"),
    ("cuda_graph_bs", "--cuda-graph-bs, an alias of:", "--cuda-graph-max-batch"),
    ("max-queued-requests", "--max-queued-requests, an alias of:", "--max-waiting-requests"),
    ("max_total_token_num", "--max-total-token-num, an alias of:", "--kv-tokens"),
])
def test_help_word_of_a_hidden_alias_shows_the_option_it_sets(word, title, option, capsys):
    """SGLang's and LightLLM's aliases are hidden from --help (their groups' descriptions
    name them): --help=context-length answered "No option or group matching" though the
    flag is taken; it shows the option the alias sets."""
    code, out, _ = _serve([f"--help={word}"], capsys)
    assert code == 0 and out.startswith(title) and option in out, out


@pytest.mark.parametrize("args", [["--help=foo"], ["-h=server"], ["-v", "--help=all"]])
def test_top_level_help_with_a_value_points_at_the_commands(args, capsys):
    """`aiollm --help=foo` answered argparse's "ignored explicit argument 'foo'" (exit 2);
    it asked for help, and is answered as serve's --help=VALUE that matches nothing is:
    where to ask (serve's --help=VALUE, with the groups it takes), exit 0."""
    from aiollm.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    assert (e.value.code, out.err) == (0, ""), out
    value = args[-1].partition("=")[2]
    assert f"`aiollm serve --help={value}`" in out.out and "ignored" not in out.out, out.out
    named = out.out.split("groups: ", 1)[1].split(")", 1)[0].split(", ")
    code, serve_tip, _ = _serve(["--help=no-such-thing"], capsys)
    assert named == serve_tip.split("groups: ", 1)[1].split(")", 1)[0].split(", ")


REFUSED_TITLE = "other engines' flags refused here, with"


@pytest.mark.parametrize("word, flag, says", [
    ("guided", "--guided-decoding-backend VALUE",
     ("taken: xgrammar, auto; any other value stops the start", "--grammar-backend none")),
    ("pipeline_parallel", "-pp VALUE, --pipeline-parallel-size VALUE",
     ("taken: 1;", "--tensor-parallel-size")),
    ("speculative-config", "--speculative-config VALUE",
     ("stops the start: speculative decoding",)),
    ("enable-sleep", "--enable-sleep-mode", ("stops the start: there is no sleep mode",)),
])
def test_help_word_lists_the_refused_flags_it_names_with_why(word, flag, says, capsys):
    """vLLM's refused flags are hidden from --help (the vLLM group's description names
    them): `--help=guided` answered "No option or group matching 'guided'" though
    --guided-decoding-backend is read and refused with a reason; --help=WORD lists each
    such flag holding WORD, with that reason (a switch without VALUE)."""
    code, out, err = _serve([f"--help={word}"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"{REFUSED_TITLE} {word!r} in their name"), out
    assert f"  {flag}\n" in out or f"  {flag}  " in out, out
    text = " ".join(out.split())
    for part in says:
        assert part in text, (part, out)


def test_help_word_lists_refused_flags_after_the_options_it_names(capsys):
    """--help=eplb: the options taken (--eplb-config, --no-enable-eplb), then the refused
    --enable-eplb with why; the whole --help keeps the refused flags' reasons out."""
    code, out, _ = _serve(["--help=eplb"], capsys)
    options, refused = out.split(REFUSED_TITLE)
    assert "--eplb-config" in options and "--enable-eplb " not in options
    assert "--enable-eplb" in refused and "stops the start" in refused, out
    code, whole, _ = _serve(["--help"], capsys)
    assert "any other value stops the start" not in whole and REFUSED_TITLE not in whole
    assert "speculative decoding is not supported" not in whole


def test_help_word_of_the_structured_outputs_config_shows_what_it_sets(capsys):
    code, out, _ = _serve(["--help=structured-outputs"], capsys)
    assert code == 0 and "--structured-outputs-config JSON" in out, out
    assert "--grammar-backend xgrammar" in " ".join(out.split()), out


def _refused_as_described() -> list[str]:
    """Each engine's refused flags as its group's description names them."""
    from aiollm import vllm_flags
    from aiollm.cli import lightllm_flags, sglang_flags

    return [*(r.names[-1] for r in vllm_flags.REFUSED),
            *(r.names[0] for r in sglang_flags.REFUSED),
            *("--" + r.names[0][2:].replace("-", "_") for r in lightllm_flags.REFUSED)]


def test_every_refused_flag_the_groups_name_has_its_why_under_help_name(capsys):
    """The engines' groups list their refused flags and say `--help=NAME` tells what to use
    instead: it does for each, as typed there (LightLLM's with underscores)."""
    _, whole, _ = _serve(["--help"], capsys)
    assert " ".join(whole.split()).count("Refused, each with what to use instead "
                                         "(--help=NAME says it;") == 3
    for flag in _refused_as_described():
        code, out, _ = _serve([f"--help={flag}"], capsys)
        assert code == 0 and REFUSED_TITLE in out, (flag, out)
        refused = out.split(REFUSED_TITLE, 1)[1]
        dashed = flag.replace("_", "-")
        assert re.search(rf"\s{re.escape(dashed)}[\s,]", refused), (flag, out)
        assert "stops the start" in " ".join(refused.split()), (flag, out)


def test_the_vllm_group_says_a_json_flags_keys_go_one_by_one(capsys):
    _, whole, _ = _serve(["--help"], capsys)
    assert ("a JSON flag's keys may be given one by one, as vLLM reads them (-cc.mode 3, "
            "--structured-outputs-config.backend xgrammar)") in " ".join(whole.split())
