"""`aiollm serve` takes token counts as vLLM's flags do: --max-model-len and
--max-prefill-tokens (--max-num-batched-tokens) as `4k` (4000), `4K` (4096), `25.6k`;
--max-model-len also as `auto` or -1 (the model's own limit). Parse-level: the parser is
called directly, no model loads."""

from __future__ import annotations

import pytest

from aiollm.cli import build_parser, main


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("flag", ["--max-model-len", "--max-prefill-tokens",
                                  "--max-num-batched-tokens"])
@pytest.mark.parametrize("value, tokens", [
    ("4096", 4096), ("4k", 4000), ("4K", 4096), ("25.6k", 25600), ("0.5k", 500),
    ("2m", 2_000_000), ("1M", 2**20), ("1g", 10**9), ("2G", 2**31), ("1t", 10**12),
    ("1T", 2**40), (" 8k ", 8000)])
def test_token_counts_take_vllms_suffixes(flag, value, tokens):
    dest = "max_model_len" if flag == "--max-model-len" else "max_prefill_tokens"
    assert getattr(parse(flag, value), dest) == tokens


@pytest.mark.parametrize("value", ["auto", "AUTO", "-1"])
def test_max_model_len_auto_is_the_models_own_limit(value):
    assert parse("--max-model-len", value).max_model_len is None
    assert parse().max_model_len is None  # what leaving the flag out gives


@pytest.mark.parametrize("flag", ["--max-model-len", "--max-num-batched-tokens"])
@pytest.mark.parametrize("value, says", [
    ("4x", "is not a number of tokens: give an integer, or one with a suffix"),
    ("k", "is not a number of tokens"),
    ("1e3", "is not a number of tokens"),
    ("-1k", "is not a number of tokens"),
    ("4 k", "is not a number of tokens"),
    ("1.5K", "K counts in powers of 1024 and takes a whole number (give 1.5k for powers "
             "of 1000)"),
    ("1.0005k", "is 1000.5 tokens, not a whole number")])
def test_a_bad_token_count_is_a_usage_error_naming_flag_and_value(flag, value, says, capsys):
    with pytest.raises(SystemExit) as e:
        parse(f"{flag}={value}")  # "-1k" apart would read as a flag
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err.startswith("aiollm serve: error: argument ") and flag in err, err
    assert f"{value!r}" in err and says in err, err


def test_a_token_count_out_of_range_names_the_flag_typed(capsys):
    """4k parses; 0k is 0 tokens, refused by the engine's checks under the flag typed."""
    for argv, says in ((["--max-model-len", "0k"], "argument --max-model-len: max_model_len "
                        "must be >= 1, got 0"),
                       (["--max-num-batched-tokens", "0K"], "argument --max-num-batched-tokens: "
                        "max_prefill_tokens must be an integer >= 1, got 0")):
        with pytest.raises(SystemExit) as e:
            main(["serve", *argv])
        assert e.value.code == 2 and says in capsys.readouterr().err
