"""A spawned rank lost while the group is made (tensor parallelism on the CPU, gloo): every
rank has met at the rendezvous, then the rank dies (SIGKILL, the OOM killer) as it enters
init_process_group or the host group's new_group. Its peers wait inside torch for its
address in the store, which Ctrl-C and the watchdog cannot interrupt: an offline LLM's
start-up on node 0 ended only after that wait's timeout (launch.INIT_TIMEOUT, 10 minutes, in
init_process_group; the host group's 30 minutes in new_group). It now ends within seconds
naming the rank and why, as the watchdog words it.

A sitecustomize on the processes' PYTHONPATH shortens INIT_TIMEOUT to INIT_TIMEOUT_S (the
old wait's length) and, where AIOLLM_TEST_START_GRACE is set, the watchdog's START_GRACE_S,
and kills the chosen rank where AIOLLM_TEST_KILL_AT says, writing the time of its death to
a file first."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from test_tensor_parallel import AIOLLM
from test_tp_start_checks import rank_folders_removed  # noqa: F401 - autouse
from test_tp_start_checks import _end, _last_error, _two_nodes, no_rank_folders_left
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

TIMEOUT_S = 300  # (processes that import torch on a loaded 2-core machine)
INIT_TIMEOUT_S = 40  # the group's timeout here: the wait this test would see before
FAST_S = 15  # from the rank's death to its peers' error: seconds, not INIT_TIMEOUT_S
_SITECUSTOMIZE = '''
import datetime, os
import aiollm.distributed.launch as launch

launch.INIT_TIMEOUT = datetime.timedelta(seconds=float(os.environ["AIOLLM_TEST_INIT_TIMEOUT"]))
if os.environ.get("AIOLLM_TEST_START_GRACE"):
    import aiollm.distributed.rank_watchdog as rank_watchdog
    rank_watchdog.START_GRACE_S = float(os.environ["AIOLLM_TEST_START_GRACE"])
if os.environ.get("AIOLLM_TP_CONFIG"):  # a spawned rank
    import signal, time
    import torch.distributed as dist

    _init, _new_group = dist.init_process_group, dist.new_group

    def die(rank):  # (once: the ranks of a start-up after it live)
        if (rank == int(os.environ["AIOLLM_TEST_KILL_RANK"])
                and not os.path.exists(os.environ["AIOLLM_TEST_DIED"])):
            with open(os.environ["AIOLLM_TEST_DIED"], "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    def init_process_group(*args, **kwargs):
        if os.environ["AIOLLM_TEST_KILL_AT"] == "init_process_group":
            # once every other rank is past the rendezvous too (it met): else its look
            # there saw this rank gone, as it did before
            others = [f"aiollm/tp/met/{r}" for r in range(kwargs["world_size"])
                      if r != kwargs["rank"]]
            while not kwargs["store"].check(others):
                time.sleep(0.01)
            time.sleep(0.2)
            die(kwargs["rank"])
        return _init(*args, **kwargs)

    def new_group(*args, **kwargs):
        if os.environ["AIOLLM_TEST_KILL_AT"] == "new_group":
            die(dist.get_rank())
        return _new_group(*args, **kwargs)

    dist.init_process_group, dist.new_group = init_process_group, new_group
'''
def _env(tmp_path, rank: int, at: str) -> tuple[dict, str]:
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    died = str(tmp_path / "died")
    return {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_KILL_RANK": str(rank),
            "AIOLLM_TEST_KILL_AT": at, "AIOLLM_TEST_DIED": died,
            "AIOLLM_TEST_INIT_TIMEOUT": str(INIT_TIMEOUT_S)}, died


def _died_at(path: str) -> float:
    with open(path) as f:
        return float(f.read())


PLACES = ["init_process_group", "new_group"]
# an offline LLM whose rank 1 dies at each place in turn, each loss followed by an LLM made
# again in the same process (the next place's spawned ranks read its env as they start)
_LOST_THEN_AGAIN = """
import os, sys, time
from aiollm import LLM, SamplingParams
died = os.environ["AIOLLM_TEST_DIED"]  # (+ the place: each rank 1 dies once)
for at in sys.argv[2:]:
    os.environ["AIOLLM_TEST_KILL_AT"], os.environ["AIOLLM_TEST_DIED"] = at, died + at
    print("place:", at, flush=True)
    try:
        LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256, max_model_len=128)
        print("started", flush=True)
    except Exception as e:
        print("raised:", type(e).__name__, e, flush=True)
    print("at", repr(time.time()), flush=True)
    llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256,
              max_model_len=128)
    out = llm.generate([[3, 17]], SamplingParams(max_tokens=4, ignore_eos=True))
    print("again:", len(out[0].outputs[0].token_ids), "tokens", flush=True)
    llm.close()
"""


@pytest.fixture(scope="module")
def lost_then_again(tiny_gguf, tmp_path_factory):  # noqa: F811
    """One script for both places of the loss (PLACES, in turn): an offline LLM whose rank 1
    dies there, then a second LLM in the same process. For each place: its part of the
    stdout, the whole stdout and stderr, and the file with the time of the death. The first
    start's error and time, and the second start's tokens, are checked by separate tests
    (one process for all: each a start-up; a place's loss comes after the other's LLM made
    again and closed, as a notebook's next cell's would)."""
    tmp_path = tmp_path_factory.mktemp("lost")
    env, _ = _env(tmp_path, 1, PLACES[0])
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    died = str(tmp_path / "died-")
    proc = subprocess.run([sys.executable, "-c", _LOST_THEN_AGAIN, tiny_gguf, *PLACES],
                          env={**env, "AIOLLM_TEST_DIED": died}, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    no_rank_folders_left(tmp_path / "tmp")
    out = proc.stdout + proc.stderr
    parts = proc.stdout.split("place: ")[1:]
    return {place: ((parts[i] if i < len(parts) else ""), out, died + place)
            for i, place in enumerate(PLACES)}


@pytest.mark.parametrize("place", PLACES)
def test_an_offline_llm_names_a_rank_lost_while_the_group_is_made(lost_then_again, place):
    """Node 0 of an offline LLM (rank 0 in the caller's process): its start raises RankLost
    naming rank 1 and its signal within seconds of rank 1's death. It waited out
    INIT_TIMEOUT inside init_process_group (the watchdog could only record the loss)."""
    stdout, out, died = lost_then_again[place]
    assert stdout.startswith(place + "\n"), out
    assert "raised: RankLost tensor parallel rank 1 was killed by SIGKILL\n" in stdout, out
    ended = float(stdout.split("\nat ", 1)[1].split("\n", 1)[0])
    assert ended - _died_at(died) < FAST_S, out


@pytest.mark.parametrize("place", PLACES)
def test_an_offline_llm_made_again_after_the_loss_starts(lost_then_again, place):
    """The same process makes its LLM again once the first start raised RankLost: it
    starts and generates. A loss in init_process_group left torch's count of groups (which
    names their keys in the store) advanced on rank 0, destroy_process_group resetting it
    only for a group made: the new start's names were not its fresh ranks', and it failed
    after INIT_TIMEOUT (gloo's wait for a key no rank sets)."""
    stdout, out, _ = lost_then_again[place]
    assert "raised: RankLost tensor parallel rank 1 was killed by SIGKILL\n" in stdout, out
    assert "again: 4 tokens\n" in stdout, out


def test_serve_exits_naming_a_rank_lost_while_the_group_is_made(tiny_gguf, tmp_path):  # noqa: F811
    """`aiollm serve -tp 2` (node 0): exits 1 within seconds, its last error naming rank 1
    and its signal."""
    env, died = _env(tmp_path, 1, "init_process_group")
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([AIOLLM, "serve", tiny_gguf, "--device", "cpu", "--kv-tokens",
                                 "256", "--max-model-len", "128", "-tp", "2", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        assert proc.wait(timeout=TIMEOUT_S) == 1, log.read_text()
        ended = time.time()
        assert ended - _died_at(died) < FAST_S, log.read_text()
        assert "tensor parallel rank 1 was killed by SIGKILL" in _last_error(log.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_node_1_names_its_rank_lost_while_the_group_is_made(tiny_gguf, tmp_path):  # noqa: F811
    """-tp 4 over 2 nodes: node 1's spawned rank 3 dies as it enters init_process_group.
    Node 1, whose lead waits there for it (a client of node 0's store: it cannot end that
    wait), exits 1 within seconds naming rank 3 and its signal: its watchdog fails the
    group once its start-up grace has passed (0.5 s here, not 5: only the watchdog can end
    that wait, so the grace is all the time it waits)."""
    env, died = _env(tmp_path, 3, "init_process_group")
    env["AIOLLM_TEST_START_GRACE"] = "0.5"
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=4)
    try:
        assert nodes[1].wait(timeout=TIMEOUT_S) == 1, logs[1].read_text()
        ended = time.time()
        assert ended - _died_at(died) < FAST_S, logs[1].read_text()
        error = _last_error(logs[1].read_text())
        assert "tensor parallel rank 3 was killed by SIGKILL" in error, error
    finally:
        _end(nodes)


def test_node_1_says_node_0_ended_while_the_group_was_made(tiny_gguf, tmp_path):  # noqa: F811
    """-tp 4 over 2 nodes: node 0's spawned rank 1 dies as it enters init_process_group.
    Node 0 names it; node 1, whose wait ends as node 0 stops hosting the store, exits 1
    within seconds saying node 0 ended while the group was made (it said "after the group
    was made": no group was)."""
    env, died = _env(tmp_path, 1, "init_process_group")
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=4)
    try:
        assert [p.wait(timeout=TIMEOUT_S) for p in nodes] == [1, 1], logs[1].read_text()
        assert time.time() - _died_at(died) < FAST_S, logs[1].read_text()
        assert "tensor parallel rank 1 was killed by SIGKILL" in _last_error(
            logs[0].read_text())
        error = _last_error(logs[1].read_text())
        assert "tensor parallel node 0 (ranks 0-1) ended while the group was made" in error, error
    finally:
        _end(nodes)
