"""bench/results_file.py: a result file's name by the project's rule, in each form the bench
scripts use (the names of earlier files in bench/results must not change), and the report
written to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from conftest import load_bench

results_file = load_bench("results_file")
result_path = results_file.result_path
write_report = results_file.write_report
REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 12, 2)


@pytest.mark.parametrize("parts, name", [
    # KIND-DATE: CPU benches without device or commit (offline, sim, table, host-overhead,
    # precision-floor, prefix_cache_host)
    (dict(kind="table"), "table-2026-12-02.json"),
    (dict(kind="prefix_cache_host"), "prefix_cache_host-2026-12-02.json"),
    # KIND-DATE-DEVICE (accuracy), spaces as dashes
    (dict(kind="accuracy", device="NVIDIA H200"), "accuracy-2026-12-02-NVIDIA-H200.json"),
    # KIND-DATE-COMMIT (grammar-host, tokenize-loop, startup on the CPU)
    (dict(kind="tokenize-loop", commit="4f59457"), "tokenize-loop-2026-12-02-4f59457.json"),
    # KIND-DATE-DEVICE-COMMIT, the rule (gemv, moe, moe-pdl, moe-peer, moe-tails, moe-profile)
    (dict(kind="moe-pdl", device="NVIDIA H200", commit="6a68dfa"),
     "moe-pdl-2026-12-02-NVIDIA-H200-6a68dfa.json"),
    (dict(kind="gemv", device="cpu-dry-run", commit="abc1234-dirty"),
     "gemv-2026-12-02-cpu-dry-run-abc1234-dirty.json"),
    (dict(kind="moe", device="NVIDIA H100 80GB HBM3", commit="d079290"),
     "moe-2026-12-02-NVIDIA-H100-80GB-HBM3-d079290.json"),
    # startup_gpu: the commits of the checkouts it compares, joined, in the commit's place
    (dict(kind="startup", device="NVIDIA H200", commit="1b15769-c004c76"),
     "startup-2026-12-02-NVIDIA-H200-1b15769-c004c76.json"),
    # KIND-DATE-DEVICE-TAG-COMMIT: decode.py's model names between device and commit
    (dict(kind="decode", device="NVIDIA H200", tags=["llama-3.1-8b"], commit="6a68dfa"),
     "decode-2026-12-02-NVIDIA-H200-llama-3.1-8b-6a68dfa.json"),
    (dict(kind="decode", device="NVIDIA H200", tags=["llama-3.2-1b-llama-3.1-8b"],
          commit="1719e29"),
     "decode-2026-12-02-NVIDIA-H200-llama-3.2-1b-llama-3.1-8b-1719e29.json"),
    # KIND-DATE-TAG: serve.py's label, which holds its own device and commit
    (dict(kind="serve", tags=["lightllm-peer-H200-60b60d1"]),
     "serve-2026-12-02-lightllm-peer-H200-60b60d1.json"),
])
def test_each_form_the_scripts_use(parts, name):
    assert result_path(**parts, day=DAY, out_dir=REPO / "bench/results") == \
        REPO / "bench" / "results" / name


def test_names_of_committed_results_are_rebuilt_exactly():
    """Files the scripts wrote before the helper, rebuilt from their parts."""
    results = REPO / "bench" / "results"
    rebuilt = [
        result_path("decode", device="NVIDIA H200", tags=["llama-3.1-8b"], commit="6a68dfa",
                    day=DAY, out_dir=results),
        result_path("kernels", device="NVIDIA-H200", day=date(2026, 11, 23), out_dir=results),
        result_path("table", day=date(2026, 11, 23), out_dir=results),
        result_path("serve", tags=["lightllm-peer-H200-60b60d1"], day=DAY, out_dir=results),
    ]
    missing = [p.name for p in rebuilt if not p.exists()]
    assert not missing, f"not in bench/results: {missing}"


def test_default_is_bench_results_of_the_working_directory_and_today():
    assert result_path("sim") == Path("bench/results") / f"sim-{date.today()}.json"
    assert str(result_path("offline")) == f"bench/results/offline-{date.today()}.json"


def test_the_date_as_the_report_spells_it():
    # moe_profile names the file by its report's ISO date; grammar_libs by YYYYMMDD (UTC)
    assert result_path("moe-profile", device="NVIDIA H200", commit="c1", day="2026-12-02",
                       out_dir="x").name == "moe-profile-2026-12-02-NVIDIA-H200-c1.json"
    assert result_path("grammar_libs", commit="c1", day="20261202", out_dir="x").name == \
        "grammar_libs-20261202-c1.json"


def test_an_empty_label_keeps_its_dash():
    # serve.py's label "" named "serve-DATE-.json" before the helper; it still does
    assert result_path("serve", tags=[""], day=DAY).name == "serve-2026-12-02-.json"


def test_write_report_is_utf8_json_with_a_trailing_newline(tmp_path):
    report = {"device": "NVIDIA H200", "note": "µs, café", "rows": [1, 2.5]}
    path = write_report(tmp_path / "a" / "b" / "r.json", report, indent=2)
    assert path == tmp_path / "a" / "b" / "r.json"
    raw = path.read_bytes()
    assert raw.endswith(b"}\n") and not raw.endswith(b"\n\n")
    assert json.loads(raw.decode("utf-8")) == report
    assert raw.decode("utf-8").splitlines()[1].startswith('  "device"')  # indent=2
    assert write_report(str(tmp_path / "one.json"), [1]).read_text() == "[\n 1\n]\n"
    assert write_report(tmp_path / "flat.json", {"a": 1}, indent=None).read_text() == '{"a": 1}\n'


def test_write_report_leaves_no_file_for_a_value_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError):
        write_report(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_a_script_names_and_writes_its_file_through_the_helper(tmp_path):
    """bench/table.py end to end, run as the scripts are (from a working directory with
    bench/results, the commit from AIOLLM_COMMIT): the file name and its last byte."""
    (tmp_path / "bench" / "results").mkdir(parents=True)
    days = {date.today()}
    env = {**os.environ, "AIOLLM_COMMIT": "abc1234"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "table.py"), "--batch", "4",
                           "--repeat", "2"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [p.name for p in (tmp_path / "bench" / "results").iterdir()]
    days.add(date.today())  # a run across midnight may name either day
    assert len(written) == 1 and written[0] in {f"table-{d}.json" for d in days}
    text = (tmp_path / "bench" / "results" / written[0]).read_text()
    assert text.endswith("}\n")
    assert json.loads(text)["commit"] == "abc1234"
