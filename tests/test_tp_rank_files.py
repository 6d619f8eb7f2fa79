"""The folder of the spawned ranks' `.joining` and `.err` files (spawned_ranks.py) is left
behind by no path the code controls: a node that spawns no rank makes none; a rank whose
lead was killed (SIGKILL: the lead cleans nothing) removes its files and, the last one, the
folder; a rank that fails after its folder was removed makes none again, and still says
why it failed. Each test runs a follower (follower.py) as its lead would: seconds each.
NodeRanks.procs, the spawned ranks' processes, is read and assigned as before they moved to
SpawnedRanks. A node that spawned no rank does not wait for one of its own to be lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

from test_tensor_parallel import _alive, _children

from aiollm.config import EngineConfig
from aiollm.distributed import NodeRanks
from aiollm.distributed.launch import _free_port

TIMEOUT_S = 120  # a follower imports torch: seconds, more on a loaded machine


def test_a_node_that_spawns_no_rank_makes_no_folder(tmp_path, monkeypatch):
    """One rank per node (-tp 2 --nnodes 2): the node's lead spawns none, yet made a folder,
    which stayed when the node was killed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=2, nnodes=2,
                                   dist_init_addr=f"127.0.0.1:{_free_port()}"))
    try:
        assert os.listdir(tmp_path) == []
    finally:
        ranks.abort()
    assert os.listdir(tmp_path) == []


def _follower(folder, rank: int = 1) -> list[str]:
    """A follower's command line, its files in `folder`, waiting in a rendezvous nobody hosts."""
    return [sys.executable, "-m", "aiollm.distributed.follower", "--rank", str(rank),
            "--init", f"127.0.0.1:{_free_port()}", "--error-file", str(folder / f"rank{rank}.err"),
            "--joining-file", str(folder / f"rank{rank}.joining")]


def _env(config: str) -> dict:
    return {**os.environ, "AIOLLM_TP_CONFIG": config}


def test_a_rank_whose_lead_was_killed_removes_its_folder(tmp_path):
    """The lead (here a plain parent process) is killed while its ranks wait in the
    rendezvous; they exit (follower._exit_with_parent) and left the folder behind with
    their `.joining` files in it."""
    folder = tmp_path / "aiollm-tp-x"
    folder.mkdir()
    config = json.dumps(asdict(EngineConfig(device="cpu", tensor_parallel_size=3)))
    lead = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys\n"
        f"ps = [subprocess.Popen(c) for c in {[_follower(folder, r) for r in (1, 2)]!r}]\n"
        "[p.wait() for p in ps]")], env=_env(config))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while sorted(os.listdir(folder)) != ["rank1.joining", "rank2.joining"]:
            assert time.monotonic() < deadline and lead.poll() is None, os.listdir(folder)
            time.sleep(0.1)
        ranks = _children(lead.pid)
        lead.send_signal(signal.SIGKILL)
        lead.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks):
            assert time.monotonic() < deadline, "a rank outlived its lead"
            time.sleep(0.1)
        assert not folder.exists(), os.listdir(folder)
    finally:
        if lead.poll() is None:
            lead.kill()
            lead.wait()


def test_a_rank_failing_after_its_folder_was_removed_says_why_and_makes_none(tmp_path):
    """Its error file could not be written (the folder gone): the rank raised
    FileNotFoundError from its error path, its own error never logged."""
    folder = tmp_path / "gone"
    proc = subprocess.run(_follower(folder), env=_env('{"no_such_option": 1}'),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stderr
    assert "tensor parallel rank 1 failed" in proc.stderr, proc.stderr
    assert "no_such_option" in proc.stderr, proc.stderr
    assert "FileNotFoundError" not in proc.stderr, proc.stderr
    assert not folder.exists()


def test_a_rank_whose_lead_died_during_its_imports_exits(tmp_path):
    """The lead ended while its rank still imported torch: the rank took the process it was
    re-parented to for its lead, so it never saw its lead go, and waited in the rendezvous
    for 10 minutes (launch.INIT_TIMEOUT), its folder left behind after."""
    folder = tmp_path / "aiollm-tp-x"
    folder.mkdir()
    config = json.dumps(asdict(EngineConfig(device="cpu", tensor_parallel_size=2)))
    # (a spawned rank is told its lead's pid as SpawnedRanks.spawn tells it)
    cmd = _follower(folder) + ["--lead-pid", "{pid}"]
    lead = subprocess.run([sys.executable, "-c", (
        "import os, subprocess\n"
        f"cmd = [a.format(pid=os.getpid()) for a in {cmd!r}]\n"
        "print(subprocess.Popen(cmd).pid)")], env=_env(config), capture_output=True,
        text=True, timeout=TIMEOUT_S)
    rank = int(lead.stdout)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _alive(rank):
            assert time.monotonic() < deadline, os.listdir(folder)
            time.sleep(0.1)
        assert not folder.exists(), os.listdir(folder)
    finally:
        if _alive(rank):
            os.kill(rank, signal.SIGKILL)


def test_the_spawned_ranks_can_be_given_as_procs(tmp_path, monkeypatch):
    """NodeRanks.procs (rank: process) is read and assigned as before SpawnedRanks held the
    processes: a rank process given so is the one watched, its end named; assigning it
    raised AttributeError (a property without a setter)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=2))
    rank1 = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    ranks.procs = {1: rank1}
    try:
        assert ranks.procs == {1: rank1} and ranks.spawned.procs is ranks.procs
        assert ranks.lost_rank(wait=30) == "tensor parallel rank 1 exited with status 3"
    finally:
        ranks.abort()
    assert os.listdir(tmp_path) == []


def test_a_node_that_spawned_no_rank_does_not_wait_for_one_to_be_lost(tmp_path, monkeypatch):
    """A collective that failed at start-up on a node of one rank (-tp 2 --nnodes 2) looked
    for a lost spawned rank of its own for a second (start_failed's lost_rank(wait=1.0))
    though it had none: every such failed start ended a second late on both nodes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=2, nnodes=2,
                                   dist_init_addr=f"127.0.0.1:{_free_port()}"))
    try:
        t0 = time.monotonic()
        assert ranks.lost_rank(wait=10.0) is None
        assert time.monotonic() - t0 < 5.0
    finally:
        ranks.abort()
