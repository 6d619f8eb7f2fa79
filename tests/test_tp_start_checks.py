"""A rank whose start-up fails (its weights, its KV cache's size from gpu_memory_utilization,
its KV pool) is named, with its own exception type and message, by every rank: by Engine and
`aiollm serve` on node 0, by `aiollm serve --node-rank 1` on another node, and by the ranks
beside it, which met gloo's "Connection closed by peer" from their neighbour and were named
in its place (tensor parallelism on the CPU, gloo).

The failing rank meets the others at the start-up checkpoint they wait in
(TensorParallel.start_check / start_failed) with its error. Before, node 0 of two nodes
raised gloo's error naming no rank, the other node too, and of 3 ranks on one node the
error named rank 1, which had only lost its neighbour rank 2.

A sitecustomize on the children's PYTHONPATH makes one rank (AIOLLM_TEST_FAIL, "RANK:WHERE")
raise at one point of its start-up, as a missing shard, a GPU fuller than the others or an
out-of-memory would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import torch
from transformers import LlamaConfig
from test_tensor_parallel import (  # noqa: F401 - a fixture
    AIOLLM,
    _children,
    _free_port,
    _save_tokenizer,
)
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

from aiollm.distributed import RankLost
from aiollm.engine import Engine

# two ranks import torch and load: 50-105 s was seen on a loaded 2-core machine
# (test_tp_rank_failures.py); a rank waiting for a peer that never comes waits 10 minutes
TIMEOUT_S = 300
FAULTS = {
    "weights": "FileNotFoundError: rank {r}: model-00002-of-00002.safetensors is missing",
    "sizing": "ValueError: gpu_memory_utilization 0.9 leaves no room for the KV cache on "
              "rank {r}",
    "pool": "MemoryError: rank {r} ran out of memory allocating its KV pool",
}
_SITECUSTOMIZE = '''
import os
_rank, _where = os.environ["AIOLLM_TEST_FAIL"].split(":")
FAULTS = %r

def _fail_here():
    import builtins
    from aiollm.model import parallel
    tp = parallel.current()
    if tp is not None and tp.rank == int(_rank):
        kind, text = FAULTS[_where].format(r=_rank).split(": ", 1)
        raise getattr(builtins, kind)(text)

def _failing(fn):
    def wrapped(*args, **kwargs):
        _fail_here()
        return fn(*args, **kwargs)
    return wrapped

import aiollm.engine.loading as loading
import aiollm.model as model
if _where == "weights":
    model.load_model = _failing(model.load_model)
elif _where == "sizing":
    loading.pool_tokens = _failing(loading.pool_tokens)
else:
    class KVPool(loading.KVPool):
        def __init__(self, *args, **kwargs):
            _fail_here()
            super().__init__(*args, **kwargs)
    loading.KVPool = KVPool
''' % FAULTS
# 3 heads, 3 KV heads and an MLP of 96 split over 3 ranks
TINY3 = LlamaConfig(vocab_size=161, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=256,
                    tie_word_embeddings=True)


def _fault_env(tmp_path, rank: int, where: str) -> dict:
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return {"PYTHONPATH": str(tmp_path), "AIOLLM_TEST_FAIL": f"{rank}:{where}"}


@pytest.fixture(scope="module")
def tiny3_model(tmp_path_factory) -> str:
    from transformers import AutoModelForCausalLM

    path = str(tmp_path_factory.mktemp("tiny-tp3"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(TINY3).save_pretrained(path, safe_serialization=True)
    _save_tokenizer(path)
    return path


@pytest.mark.parametrize("where", ["weights", "pool"])
def test_engine_names_the_rank_whose_start_up_failed(tiny3_model, tmp_path, monkeypatch,
                                                     where):
    """3 ranks on one node; rank 2 fails loading its weights, while rank 0 still loads (for
    3 s, past the watchdog's grace, here 1 s), or allocating its KV pool, after the pools'
    size is agreed: Engine's start raises naming rank 2 and its error, and no rank is left.
    Rank 2's weights: the error named rank 1, which had only lost its neighbour ("exited
    with status 1", its error file gone with the watchdog's kill). Rank 2's pool: the start
    succeeded (no collective follows on the CPU)."""
    for key, value in _fault_env(tmp_path, 2, where).items():
        monkeypatch.setenv(key, value)  # the spawned ranks' (this process has started)
    # (a child an earlier test of this worker left, still exiting, is none of this test's)
    before = set(_children(os.getpid()))
    if where == "weights":
        import aiollm.model
        from aiollm.distributed import rank_watchdog

        load_model = aiollm.model.load_model
        # (the grace 1 s, not 5: rank 0 loads 3 s, past it once rank 2 failed within 2 s)
        monkeypatch.setattr(rank_watchdog, "START_GRACE_S", 1.0)

        def slow_load_model(*args, **kwargs):
            time.sleep(3)
            return load_model(*args, **kwargs)

        monkeypatch.setattr(aiollm.model, "load_model", slow_load_model)

    async def start():
        engine = Engine(tiny3_model, device="cpu", tensor_parallel_size=3, kv_tokens=256,
                        max_model_len=128)
        engine.exit_on_lost_rank = False  # (this process is pytest's)
        async with engine:
            pass

    with pytest.raises(RankLost) as got:
        asyncio.run(start())
    assert str(got.value) == "tensor parallel rank 2 failed: " + FAULTS[where].format(r=2)
    assert set(_children(os.getpid())) <= before  # no rank is left


def _last_error(log: str) -> str:
    return [line for line in log.splitlines() if " ERROR " in line or "Error" in line][-1]

def _two_nodes(model: str, tmp_path, env: dict, tp: int = 2, models: dict | None = None,
               start: tuple = (0, 1)) -> tuple[list[subprocess.Popen], list]:
    """`aiollm serve -tp TP --nnodes 2` on loopback (one rank per node by default), with
    `env`: the processes of the nodes in `start` and their log files, in that order.
    `models`: another model path for a node (node rank -> path). Their temporary files
    go to tmp_path/"tmp" (rank_folders_removed checks that none is left)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**env, "TMPDIR": str(tmp_path / "tmp")}
    common = ["--device", "cpu", "--max-model-len", "128", "-tp", str(tp), "--nnodes", "2",
              "--dist-init-addr", f"127.0.0.1:{_free_port()}"]
    logs = [tmp_path / f"node{k}.log" for k in start]
    nodes = []
    for k, log in zip(start, logs):
        with open(log, "w") as out:
            port = ["--port", "0"] if k == 0 else []
            node_model = (models or {}).get(k, model)
            nodes.append(subprocess.Popen([AIOLLM, "serve", *port, "--node-rank", str(k),
                                           *common, node_model], stdout=out,
                                          stderr=subprocess.STDOUT, env=env))
    return nodes, logs


def _end(nodes: list[subprocess.Popen]) -> None:
    """Kill the nodes of `_two_nodes` still running, and reap them."""
    for p in nodes:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(autouse=True)
def rank_folders_removed(tmp_path):
    """After the test, once its nodes ended (those killed by SIGKILL too: their spawned
    ranks remove their files, follower.RankFiles), no folder of spawned ranks is left in
    the nodes' TMPDIR (_two_nodes). Import it into a module to check its tests."""
    yield
    no_rank_folders_left(tmp_path / "tmp")


def no_rank_folders_left(folder) -> None:
    """Fail unless no folder of spawned ranks is left in `folder` (a TMPDIR) within 10 s."""
    deadline = time.monotonic() + 10  # (a rank sees its lead gone within 0.2 s)
    while left := sorted(folder.glob("aiollm-tp-*")) if folder.exists() else []:
        if time.monotonic() > deadline:
            pytest.fail(f"left behind: {[(p.name, os.listdir(p)) for p in left]}")
        time.sleep(0.1)


def _serving(nodes: list, logs: list) -> str:
    """Wait until both nodes of `_two_nodes` serve (node 1 logs "ready on"); node 0's base
    URL. Fails if either exits first or TIMEOUT_S passes."""
    from serve_log import logged_base

    deadline = time.monotonic() + TIMEOUT_S
    while (base := logged_base(logs[0])) is None or "ready on" not in logs[1].read_text():
        assert nodes[0].poll() is None and nodes[1].poll() is None, \
            [log.read_text() for log in logs]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return base


def _completion(base: str) -> urllib.request.Request:
    """A four-token /v1/completions request to the server at `base`."""
    return urllib.request.Request(
        f"{base}/v1/completions", headers={"content-type": "application/json"},
        data=json.dumps({"prompt": "w3 w17", "max_tokens": 4}).encode())


@pytest.mark.parametrize("failing", [0, 1])
def test_each_node_names_the_rank_that_failed_to_size_its_kv_cache(tiny_gguf,  # noqa: F811
                                                                   tmp_path, failing):
    """Two nodes on loopback (`aiollm serve --nnodes 2`, one rank each); one rank's KV
    cache sizing raises: both nodes exit with status 1 within seconds, each naming that
    rank and its error (the failing one its own error)."""
    env = {**os.environ, **_fault_env(tmp_path, failing, "sizing")}
    fault = FAULTS["sizing"].format(r=failing)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env)
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
        texts = [log.read_text() for log in logs]
        assert codes == [1, 1], texts
        other = 1 - failing
        assert _last_error(texts[other]).endswith(
            f"tensor parallel rank {failing} failed: {fault}"), texts[other]
        assert "Connection closed by peer" not in _last_error(texts[other]), texts[other]
        # (its own ValueError, as on one rank: aiollm.cli logs the message)
        assert _last_error(texts[failing]).endswith(fault.split(": ", 1)[1]), texts[failing]
    finally:
        _end(nodes)


def test_a_checkpoint_carries_a_long_or_non_ascii_failure_as_bytes_cut_to_its_bound(tmp_path):
    """The checkpoint sends each rank's value and error in a tensor of fixed size (nothing
    another node sends is unpickled): the smallest value comes back; an error past
    FAILURE_BYTES is cut there, mid-character too, and still read (one group of one rank,
    in this process)."""
    import torch.distributed as dist

    from aiollm.distributed.group import FAILURE_BYTES, TensorParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        tp = TensorParallel(0, 1, torch.device("cpu"))
        assert tp.start_check(1234) == 1234 and tp.starting
        why = "ValueError: é" + "x" * FAILURE_BYTES  # the cut splits no character here...
        with pytest.raises(RankLost, match="^tensor parallel rank 0 failed: ValueError: éx+$"
                           ) as e:
            tp._meet(0, why, last=False)
        assert len(str(e.value).encode()) == len("tensor parallel rank 0 failed: ") + FAILURE_BYTES
        assert not tp.starting  # a failed checkpoint is the last one met
        tp.starting = True
        odd = "x" * (FAILURE_BYTES - 1) + "é"  # ...here it does: the half is replaced
        with pytest.raises(RankLost, match="x\ufffd$"):
            tp._meet(0, odd, last=True)
    finally:
        dist.destroy_process_group()


def test_a_rank_whose_start_up_failed_says_so_before_it_waits_for_the_others(tmp_path,
                                                                            caplog):
    """A rank whose start-up failed waits at the next start-up checkpoint until every rank
    reaches it (rank 0 may still be loading its weights, for minutes): `aiollm serve
    --node-rank 1` and node 0's rank 0 of two nodes waited there without a word, their own
    error logged only once the others came. The rank logs its error and the wait first (one
    group of one rank, in this process)."""
    import logging

    import torch.distributed as dist

    from aiollm.distributed.group import TensorParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        tp = TensorParallel(0, 1, torch.device("cpu"))
        with caplog.at_level(logging.INFO, logger="aiollm.distributed.group"):
            tp.start_failed(FileNotFoundError("model-00002-of-00002.safetensors is missing"))
        [record] = [r for r in caplog.records if r.name == "aiollm.distributed.group"]
        assert record.levelno >= logging.INFO
        assert ("tensor parallel rank 0 failed to start: FileNotFoundError: model-00002-of-"
                "00002.safetensors is missing; waiting for the other ranks" in record.message)
        assert not tp.starting
    finally:
        dist.destroy_process_group()


_SLOW_RANK0_AND_MARK = '''
import os, time
import aiollm.model as model
from aiollm.distributed.group import TensorParallel

_load_model, _start_check = model.load_model, TensorParallel.start_check

def load_model(*args, **kwargs):  # rank 0 loads for minutes, as a large model does
    from aiollm.model import parallel
    if parallel.current().rank == 0:
        time.sleep(300)
    return _load_model(*args, **kwargs)

def start_check(self, *args, **kwargs):  # where the rank is: at a start-up checkpoint
    open(os.environ["AIOLLM_TEST_AT_CHECK"] + str(self.rank), "w").close()
    return _start_check(self, *args, **kwargs)

model.load_model, TensorParallel.start_check = load_model, start_check
'''


def test_ctrl_c_ends_a_node_waiting_at_a_start_up_checkpoint(tiny_gguf, tmp_path):  # noqa: F811
    """`aiollm serve --node-rank 1` waits at the first start-up checkpoint until rank 0, on
    node 0, has loaded its weights (minutes for a large model). Ctrl-C there did nothing
    until rank 0 came: the wait, in gloo, holds Python's signal handler. It now exits with
    status 130 within seconds."""
    (tmp_path / "sitecustomize.py").write_text(_SLOW_RANK0_AND_MARK)
    marker = str(tmp_path / "at-check-rank")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_AT_CHECK": marker}
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not os.path.exists(marker + "1"):
            assert nodes[1].poll() is None and time.monotonic() < deadline, logs[1].read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # inside the checkpoint's wait (as test_tp_rendezvous.py's)
        nodes[1].send_signal(signal.SIGINT)
        assert nodes[1].wait(timeout=20) == 130, logs[1].read_text()
    finally:
        _end(nodes)
