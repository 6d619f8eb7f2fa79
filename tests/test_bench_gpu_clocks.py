"""bench/gpu_clocks.py: the summary of nvidia-smi's clock and power samples."""

from __future__ import annotations

from conftest import load_bench

gpu_clocks = load_bench("gpu_clocks")

SAMPLES = """\
2026/12/01 19:41:50.1, 1980, 125.4, 0, 0x0000000000000000
2026/12/01 19:41:50.6, 1530, 694.5, 100, 0x0000000000000004
2026/12/01 19:41:51.1, 1590, 691.7, 98, 0x0000000000000004
2026/12/01 19:41:51.6, 1980, 670.0, 100, 0x0000000000000000
2026/12/01 19:41:52.1, [N/A], [N/A], [N/A], [N/A]
"""


def test_summary_counts_busy_samples_only(tmp_path):
    f = tmp_path / "clocks.csv"
    f.write_text(SAMPLES)
    s = gpu_clocks.summarize(str(f))
    assert s == {"busy_samples": 3, "sm_clock_mhz_median": 1590.0, "sm_clock_mhz_min": 1530.0,
                 "power_w_median": 691.7, "power_capped_share": round(2 / 3, 3)}


def test_summary_of_an_idle_gpu_is_empty(tmp_path):
    f = tmp_path / "clocks.csv"
    f.write_text(SAMPLES.splitlines()[0] + "\n")
    assert gpu_clocks.summarize(str(f)) == {}


def test_sampler_command_writes_to_the_file():
    cmd = gpu_clocks.sampler_command("/tmp/x.csv", 250)
    assert cmd[0] == "nvidia-smi" and "--filename=/tmp/x.csv" in cmd and "--loop-ms=250" in cmd
