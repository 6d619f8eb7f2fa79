"""A JSON flag's key given on its own (`-cc.max_cudagraph_capture_size 1k`) takes a
number with a suffix, as vLLM's parser reads such a value: JSON where it parses, else a
human-readable integer (1k is 1000, 1K 1024), else the text. aiollm read `1k` as the text,
and refused it as no whole number. Parse-level and serve's checks: no model loads."""

from __future__ import annotations

import pytest

from aiollm.cli.flag_spelling import json_keys
from cli_lines import started


@pytest.mark.parametrize("value, number", [
    ("1k", 1000), ("1K", 1024), ("0.5k", 500), ("25.6k", 25600), ("2m", 2_000_000),
    ("1M", 2**20), ("1g", 10**9), ("1G", 2**30), ("1t", 10**12), ("1T", 2**40)])
def test_a_keys_value_with_a_suffix_is_its_integer(value, number):
    assert json_keys(["-cc.max_cudagraph_capture_size", value]) == [
        "-cc", '{"max_cudagraph_capture_size": %d}' % number]
    assert json_keys([f"--eplb-config.window_size={value}"]) == [
        "--eplb-config", '{"window_size": %d}' % number]


@pytest.mark.parametrize("value", ["inductor", "1.5K", "1.0005k", "-1k", "k", "4 k", "1e3x"])
def test_a_value_no_integer_stays_text(value):
    """As in vLLM: what neither parses as JSON nor is a whole human-readable number is the
    key's text, for the config's own check to take or refuse. aiollm refuses 1.0005k
    (1000.5) where vLLM truncates it to 1000."""
    assert json_keys(["-cc.backend", value]) == ["-cc", '{"backend": "%s"}' % value]


def test_json_still_wins():
    """1e3 is JSON (a float), and "[1,2]" a list: read as JSON, as vLLM reads them."""
    assert json_keys(["-cc.x", "1e3", "-cc.y", "[1,2]"]) == ["-cc", '{"x": 1000.0, "y": [1, 2]}']


@pytest.mark.parametrize("line, largest", [
    ("-cc.max_cudagraph_capture_size 1K", 1024),
    ("--compilation-config.max_cudagraph_capture_size=0.1k", 100),
])
def test_a_graph_size_with_a_suffix_starts(line, largest, caplog):
    config, said = started(line, caplog)
    assert config.cuda_graph is True and config.cuda_graph_max_batch == largest
    assert any(f"as --cuda-graph-max-batch {largest}" in s for s in said), said


@pytest.mark.parametrize("value", ["1.5K", "1.0005k", "2x"])
def test_a_malformed_suffixed_size_names_the_flag_and_value(value, capsys):
    with pytest.raises(SystemExit) as e:
        started(f"-cc.max_cudagraph_capture_size {value}", None)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err.startswith("aiollm serve: error: argument -cc/--compilation-config: "
                          "max_cudagraph_capture_size takes a whole number"), err
    assert repr(value) in err, err
