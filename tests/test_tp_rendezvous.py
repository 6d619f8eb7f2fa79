"""The rendezvous of tensor-parallel start-up across nodes (`aiollm serve --nnodes 2` on
loopback, gloo on the CPU): a node whose own checks fail before it joins tells node 0, which
exits naming it and its error within seconds, not after the rendezvous' timeout (10 minutes)
with torch's generic timeout; a node that never comes is named by the ranks that did not
arrive; Ctrl-C in the rendezvous' wait ends that node at once, its spawned ranks too.

A sitecustomize on the children's PYTHONPATH shortens the rendezvous' timeout
(launch.INIT_TIMEOUT) and marks each rank's entry into the group's join (launch.join)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pytest
from test_tensor_parallel import _alive, _children, tiny_model  # noqa: F401 - a fixture
from test_tp_start_checks import TINY3, _last_error, _two_nodes

# two processes import torch: seconds, up to a minute on a loaded 2-core machine
TIMEOUT_S = 300
_SITECUSTOMIZE = '''
import datetime, os
import aiollm.distributed.launch as launch

launch.INIT_TIMEOUT = datetime.timedelta(seconds=float(os.environ["AIOLLM_TEST_INIT_TIMEOUT"]))
_join = launch.join

def join(cfg, rank, *args, **kwargs):  # where the rank is: about to join the group
    open(os.environ["AIOLLM_TEST_JOINING"] + str(rank), "w").close()
    # a rank held before it joins (its node's lead waits for it) until a file exists
    if os.environ.get("AIOLLM_TEST_HOLD_RANK") == str(rank):
        import time
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["AIOLLM_TEST_HOLD_UNTIL"]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    return _join(cfg, rank, *args, **kwargs)

launch.join = join
'''


def _env(tmp_path, timeout_s: float) -> tuple[dict, str]:
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    marker = str(tmp_path / "joining-rank")
    return {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_INIT_TIMEOUT":
            str(timeout_s), "AIOLLM_TEST_JOINING": marker}, marker


def _wait_for(path: str, node, log) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _end(nodes) -> None:
    for p in nodes:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_node_0_names_the_node_whose_checks_failed_before_the_rendezvous(
        tiny_model, tmp_path):  # noqa: F811
    """Node 1 was given a model whose heads 2 ranks cannot split (another model at the same
    path): its check fails before it joins. Node 0 waited for it the whole rendezvous
    timeout, then failed with torch's timeout naming no node; it now exits with status 1
    within seconds, naming node 1, its rank and its error."""
    other = tmp_path / "tiny3-1kv"
    odd = copy.deepcopy(TINY3)
    odd.num_key_value_heads = 1  # 1 KV head and 3 heads: 2 ranks split neither
    odd.save_pretrained(other)  # its config is all the check reads
    env, _ = _env(tmp_path, timeout_s=120)
    started = time.monotonic()
    nodes, logs = _two_nodes(tiny_model, tmp_path, env, models={1: str(other)})
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
        texts = [log.read_text() for log in logs]
        assert codes == [1, 1], texts
        assert time.monotonic() - started < 100, texts  # not the rendezvous' timeout
        error = _last_error(texts[0])
        assert "tensor parallel node 1 (rank 1) failed to start: ValueError: tensor " \
               "parallel size 2 does not fit this model's heads" in error, texts[0]
    finally:
        _end(nodes)


def test_node_1_names_node_0_whose_checks_failed(tiny_model, tmp_path):  # noqa: F811
    """As above, node 0 given the model 2 ranks cannot split: node 1, waiting in the
    rendezvous, names node 0's error. Node 0 posted it, then its store closed with its
    exit before node 1's next look: node 1 said only that node 0 "ended before the group
    was made: see its log"."""
    other = tmp_path / "tiny3-1kv"
    odd = copy.deepcopy(TINY3)
    odd.num_key_value_heads = 1
    odd.save_pretrained(other)
    env, marker = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_model, tmp_path, env, models={0: str(other)}, start=(1,))
    try:
        _wait_for(marker + "1", nodes[0], logs[0])  # node 1 waits for node 0's store
        args = list(nodes[0].args)  # node 1's, at the same --dist-init-addr
        args[args.index("--node-rank") + 1] = "0"
        args[-1:] = ["--port", "0", str(other)]
        logs.append(tmp_path / "node0.log")
        with open(logs[1], "w") as out:
            nodes.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env))
        assert [p.wait(timeout=TIMEOUT_S) for p in nodes] == [1, 1], logs[0].read_text()
        error = _last_error(logs[0].read_text())
        assert "tensor parallel node 0 (rank 0) failed to start: ValueError: tensor " \
               "parallel size 2 does not fit this model's heads" in error, error
    finally:
        _end(nodes)


def test_node_0_names_the_ranks_that_never_arrived(tiny_model, tmp_path):  # noqa: F811
    """Node 1 was never started: node 0 fails after the rendezvous' timeout naming the
    ranks that did not arrive, their node and what to check, not torch's bare timeout."""
    env, _ = _env(tmp_path, timeout_s=3)
    nodes, logs = _two_nodes(tiny_model, tmp_path, env, start=(0,))
    try:
        assert nodes[0].wait(timeout=TIMEOUT_S) == 1, logs[0].read_text()
        error = _last_error(logs[0].read_text())
        assert "rank 1 (node 1) did not reach the tensor parallel rendezvous at 127.0.0.1:" \
               in error, error
        assert "aiollm serve --node-rank 1" in error, error
    finally:
        _end(nodes)


@pytest.mark.parametrize("node,sig", [(0, signal.SIGINT), (1, signal.SIGINT),
                                      (0, signal.SIGTERM), (1, signal.SIGTERM)])
def test_ctrl_c_ends_a_node_waiting_in_the_rendezvous(tiny_model, tmp_path, node,  # noqa: F811
                                                      sig):
    """The other node was never started; this one waits in the rendezvous (node 0 with a
    rank it spawned, -tp 4: for node 1's ranks; node 1: for node 0's rendezvous to come
    up). Ctrl-C there was held until the rendezvous' timeout; the node now exits with
    status 130 within seconds, and the rank it spawned is gone too. SIGTERM (a supervisor's
    stop) does the same with 143, 128 + SIGTERM, as torchrun's and a shell's: node 0 exited
    130, as at Ctrl-C."""
    env, marker = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_model, tmp_path, env, tp=4, start=(node,))
    try:
        lead = 2 * node
        _wait_for(marker + str(lead), nodes[0], logs[0])  # the lead joins once rank lead+1 does
        spawned = _children(nodes[0].pid)
        assert spawned, logs[0].read_text()
        time.sleep(1.0)  # inside the rendezvous' wait
        nodes[0].send_signal(sig)
        assert nodes[0].wait(timeout=20) == 128 + sig, logs[0].read_text()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in spawned):
            assert time.monotonic() < deadline, "a spawned rank outlived its node"
            time.sleep(0.1)
    finally:
        _end(nodes)


@pytest.mark.parametrize("sig,why", [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                     (signal.SIGTERM, "terminated (SIGTERM)")])
def test_node_0_is_told_of_a_node_stopped_in_the_rendezvous(tiny_model, tmp_path,  # noqa: F811
                                                            sig, why):
    """-tp 4 over 2 nodes; node 0's spawned rank 1 is held before it joins, so node 1 waits
    in the rendezvous for it. Node 1 stopped there (Ctrl-C, or SIGTERM from its supervisor)
    exits 128 + the signal and tells node 0, which exits 1 naming node 1 and why. At
    SIGTERM node 1 died of Python's default handler: node 0 was not told and waited the
    rendezvous' timeout (10 minutes), then named ranks 2-3 as never arrived."""
    env, marker = _env(tmp_path, timeout_s=120)
    release = tmp_path / "release"
    env.update(AIOLLM_TEST_HOLD_RANK="1", AIOLLM_TEST_HOLD_UNTIL=str(release))
    nodes, logs = _two_nodes(tiny_model, tmp_path, env, tp=4)
    try:
        _wait_for(marker + "2", nodes[1], logs[1])  # node 1's lead joins once rank 3 does
        time.sleep(1.0)  # inside the rendezvous' wait
        nodes[1].send_signal(sig)
        assert nodes[1].wait(timeout=20) == 128 + sig, logs[1].read_text()
        # (node 0's lead is still held, waiting for its rank 1: it looks at the rendezvous
        # there too, and is not held until that rank joins)
        assert nodes[0].wait(timeout=60) == 1, logs[0].read_text()
        error = _last_error(logs[0].read_text())
        assert f"tensor parallel node 1 (ranks 2-3) failed to start: {why}" in error, error
    finally:
        release.touch()
        _end(nodes)


def _meet_in_threads(*places) -> list:
    """Each Rendezvous in `places` meets on its own thread, failing as its node would
    (Rendezvous.fail): what each meet returned or raised, in order."""
    import threading

    out: list = [None] * len(places)

    def go(i, place):
        try:
            out[i] = place.meet()
        except Exception as e:  # noqa: BLE001 - the test reads it
            out[i] = e
            place.fail(place.node_of(place.rank), e)

    threads = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate(places)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # in this order
    for t in threads:
        t.join(timeout=30)
    return out


def test_nodes_started_with_different_tensor_parallel_sizes_are_told_not_joined():
    """Node 0 runs -tp 4 --nnodes 2 (ranks 0, 1), node 1 -tp 2 --nnodes 2 (rank 1): rank 1
    of both arrived, node 1 found ranks 0 and 1 there and went on to make a group of 2 that
    node 0 never joins (node 0 then timed out naming node 1's ranks 2, 3 as never come).
    Node 1 now fails naming both sizes, and node 0 names node 1 and why at once."""
    from datetime import timedelta

    from aiollm.distributed.group import RankLost
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=5)
    places = [Rendezvous(addr, 0, 4, 2, wait), Rendezvous(addr, 1, 4, 2, wait),
              Rendezvous(addr, 1, 2, 2, wait)]
    places[0].open()
    try:
        started = time.monotonic()
        out = _meet_in_threads(*places)
        assert isinstance(out[2], ValueError), out
        assert "--tensor-parallel-size 2 --nnodes 2" in str(out[2]), out
        assert "--tensor-parallel-size 4 --nnodes 2" in str(out[2]), out
        assert isinstance(out[0], RankLost) and "node 1 (ranks 2-3) failed to start: " \
            "ValueError" in str(out[0]), out
        assert time.monotonic() - started < 4, out  # not the timeout
    finally:
        for p in places:
            p.close()


def test_a_rank_that_arrives_twice_is_refused():
    """Two nodes started with the same --node-rank: the second one's rank was counted as
    the first's (the group then hung or collided in gloo); it is now refused, naming the
    rank and the flags to check, and the first one's group is made (both came before
    rank 0: it is not told that node 1 failed)."""
    from datetime import timedelta

    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=5)
    places = [Rendezvous(addr, 0, 2, 2, wait), Rendezvous(addr, 1, 2, 2, wait),
              Rendezvous(addr, 1, 2, 2, wait)]
    places[0].open()
    try:
        out = _meet_in_threads(places[1], places[2], places[0])
        assert out[2] is places[0].store and out[0] is places[1].store, out
        assert isinstance(out[1], ValueError), out
        assert "rank 1 (node 1) has already arrived" in str(out[1]), out
    finally:
        for p in places:
            p.close()


@pytest.mark.parametrize("where", ["taken", "not-here"])
def test_node_0_that_cannot_host_the_rendezvous_says_so_at_once(where):
    """--dist-init-addr's port is taken on node 0 (torch raised its DistNetworkError, a
    RuntimeError that `aiollm serve` printed as a traceback), or its host is not one of
    this machine's (torch's own client then tried to reach it for the whole timeout, 10
    minutes, not interruptible): an OSError naming the flag, at once."""
    import socket
    from datetime import timedelta

    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        host = "127.0.0.1" if where == "taken" else "192.0.2.1"  # (TEST-NET-1: nobody's)
        port = taken.getsockname()[1] if where == "taken" else _free_port()
        place = Rendezvous(f"{host}:{port}", 0, 2, 2, timedelta(seconds=3))
        started = time.monotonic()
        with pytest.raises(OSError, match=f"the tensor parallel rendezvous at {host}:{port}"
                           r" \(--dist-init-addr\)"):
            place.open()
        assert time.monotonic() - started < 2
        place.close()
    finally:
        taken.close()


def test_a_node_pointed_at_something_else_than_the_rendezvous_says_so_at_once():
    """Node 1's --dist-init-addr names a port where something else listens (node 0's HTTP
    port, say): torch's client retried its handshake there for the whole timeout (10
    minutes), in C++ that Ctrl-C cannot interrupt. It now fails within seconds naming the
    address and the flag."""
    import socket
    import threading
    from datetime import timedelta

    from aiollm.distributed.rendezvous import Rendezvous

    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    done = threading.Event()

    def answer():  # as an HTTP server would: a reply to whatever comes, then close
        other.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = other.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(64)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    server = threading.Thread(target=answer)
    server.start()
    addr = f"127.0.0.1:{other.getsockname()[1]}"
    place = Rendezvous(addr, 1, 2, 2, timedelta(seconds=20))
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=f"no tensor parallel rendezvous answers at "
                           f"{addr} .--dist-init-addr.") as e:
            place.meet()
        assert time.monotonic() - started < 15, e.value
        place.fail(1, e.value)  # not tried again: nobody there to tell
        assert time.monotonic() - started < 15
    finally:
        done.set()
        server.join()
        other.close()


def test_a_stopped_engine_closes_its_rendezvous_port(tiny_model):  # noqa: F811
    """An Engine of -tp 2 started and stopped in this process: the rendezvous' store (rank
    0 hosts it) went on listening at its port as long as the Engine object lived, its
    host group holding it; a new start at the same --dist-init-addr could not host it."""
    import asyncio
    import socket

    from aiollm.engine import Engine

    async def start_stop() -> Engine:
        engine = Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=256,
                        max_model_len=128)
        async with engine:
            pass
        return engine

    engine = asyncio.run(start_stop())
    host, _, port = engine.ranks.rendezvous.addr.rpartition(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2.0).close()


def test_node_0_waiting_for_a_slow_local_rank_is_told_of_another_nodes_failure(monkeypatch):
    """Node 0's lead waits for the ranks it spawned to reach the rendezvous (a long import
    or device start); node 1 posted its failure meanwhile: node 0 looked only at its own
    ranks and ended when the slow rank joined (up to INIT_TIMEOUT). It now raises the
    rendezvous' RankLost naming node 1 within a poll."""
    import subprocess
    import sys
    from datetime import timedelta

    from aiollm.config import EngineConfig
    from aiollm.distributed.group import RankLost
    from aiollm.distributed import launch
    from aiollm.distributed.launch import NodeRanks, _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    monkeypatch.setattr(launch, "INIT_TIMEOUT", timedelta(seconds=8))  # (its wait's limit)
    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=30)
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=4, nnodes=2,
                                   dist_init_addr=addr))
    ranks.rendezvous = Rendezvous(addr, 0, 4, 2, wait)
    node_1 = Rendezvous(addr, 2, 4, 2, wait)
    # node 0's rank 1, slow to start: it never writes its joining file
    ranks.procs[1] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ranks.rendezvous.open()
        node_1.open()
        node_1.fail(1, ValueError("its check failed"))
        started = time.monotonic()
        with pytest.raises(RankLost, match=r"tensor parallel node 1 \(ranks 2-3\) failed to "
                                           r"start: ValueError: its check failed"):
            ranks._wait_for_joining()
        assert time.monotonic() - started < 5
    finally:
        ranks.abort()  # (kills the slow rank, closes the store)
        node_1.close()


_HELD_RANK_1 = '''
import sys, time
from datetime import timedelta
import torch.distributed as dist
from aiollm.distributed.rendezvous import Rendezvous

store = Rendezvous(sys.argv[1], 1, 2, 1, timedelta(seconds=30)).meet()
dist.init_process_group("gloo", store=store, rank=1, world_size=2)
dist.new_group(backend="gloo")
time.sleep(60)  # never reaches the checkpoint
'''


def test_a_start_left_in_a_checkpoint_closes_its_rendezvous_port():
    """Rank 0 interrupted (Ctrl-C) at a start-up checkpoint that rank 1 never reaches: its
    collective stays under way, so the host group is kept (its destructor would wait for
    it), and with it the rendezvous' store, listening at --dist-init-addr: a second start
    in this process at the same address could not host it. The port is now closed."""
    import signal
    import socket
    import subprocess
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from aiollm.distributed.group import TensorParallel
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    addr = f"127.0.0.1:{_free_port()}"
    place = Rendezvous(addr, 0, 2, 1, timedelta(seconds=30))
    place.open()
    rank_1 = subprocess.Popen([sys.executable, "-c", _HELD_RANK_1, addr])
    try:
        dist.init_process_group("gloo", store=place.meet(), rank=0, world_size=2)
        tp = TensorParallel(0, 2, torch.device("cpu"), dist.new_group(backend="gloo"))

        def ctrl_c(*_):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, ctrl_c)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(KeyboardInterrupt):
                tp.start_check()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        dist.destroy_process_group()  # as NodeRanks.abort leaves the group
        tp.release()
        place.close()
        host, _, port = addr.rpartition(":")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2.0).close()
        again = Rendezvous(addr, 0, 2, 1, timedelta(seconds=30))
        again.open()  # a second start hosts it
        again.close()
    finally:
        rank_1.kill()
        rank_1.wait()
