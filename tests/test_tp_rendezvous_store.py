"""The tensor-parallel rendezvous (aiollm/distributed/rendezvous.py) in this process, its
ranks on threads or one child: nodes of another --tensor-parallel-size / --nnodes are told,
not joined; a rank arriving twice is refused; node 0 that cannot host at --dist-init-addr,
and a node pointed at something else than the store, say so at once; node 0 waiting for its
own ranks hears another node's failure; the rendezvous' port is closed once the group is
left, also with a checkpoint's collective left under way. (Whole nodes through the CLI:
test_tp_rendezvous.py.)"""

from __future__ import annotations

import time

import pytest
from test_tensor_parallel import tiny_model  # noqa: F401 - a fixture


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
    Node 1 now fails naming both sizes, and node 0 names node 1 and why at once. Its
    message named --tensor-parallel-size outside the brackets serve's log rewrites as the
    user typed it."""
    from datetime import timedelta

    from aiollm.cli.log_config import rewrite_flags
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
        said = str(out[2])
        assert "size 2 (--tensor-parallel-size) over 2 node(s) (--nnodes)" in said, out
        assert "size 4 (--tensor-parallel-size) over 2 node(s) (--nnodes)" in said, out
        # the flags in the form serve's log names as the user typed them (SGLang's --tp)
        typed = rewrite_flags(said, {"--tensor-parallel-size": "--tp"})
        assert "--tensor-parallel-size" not in typed and "(--tp)" in typed, typed
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


def test_a_node_pointed_at_something_else_than_the_rendezvous_says_so_at_once(monkeypatch):
    """Node 1's --dist-init-addr names a port where something else listens (node 0's HTTP
    port, say): torch's client retried its handshake there for the whole timeout (10
    minutes), in C++ that Ctrl-C cannot interrupt. It now fails within seconds naming the
    address and the flag (here within its handshake's bound, 1 s, not 5: the rendezvous'
    timeout is 20 s, the limit asserted 15)."""
    import socket
    import threading
    from datetime import timedelta

    from aiollm.distributed import rendezvous
    from aiollm.distributed.rendezvous import Rendezvous

    monkeypatch.setattr(rendezvous, "HANDSHAKE_S", 1.0)

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


# how long an arrival's heartbeat stands still before it is taken for a killed rank's
# (rendezvous.STALE_S, 2 s): the tests of killed ranks wait it out, so 1 s here (20 polls of
# the live ranks, threads of this process)
STALE_S = 1.0


def _stopping_check(after: int, released):
    """A `check` for Rendezvous.meet that returns `after` times, then blocks until
    `released` is set (then raises): the rank stops polling without failing, as a process
    killed (SIGKILL, OOM) while it waits would."""
    calls = [0]

    def check():
        calls[0] += 1
        if calls[0] > after:
            released.wait()
            raise RuntimeError("released")
    return check


def test_a_rank_killed_in_the_rendezvous_is_replaced_by_its_restart(monkeypatch):
    """Node 1 killed while it waited for node 0 (its rank counted as arrived), then
    restarted: the restart was refused as "already arrived ... end it" though the first one
    was dead, and node 0 took the dead arrival for a live one. The restart now replaces the
    arrival that stopped showing it is alive, and the meet completes."""
    import threading
    from datetime import timedelta

    from aiollm.distributed import rendezvous
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    monkeypatch.setattr(rendezvous, "STALE_S", STALE_S)  # (the restart's watch lasts it)

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=15)
    node_0, killed, restarted = (Rendezvous(addr, 0, 4, 2, wait), Rendezvous(addr, 2, 4, 2, wait),
                                 Rendezvous(addr, 2, 4, 2, wait))
    rank_1, rank_3 = Rendezvous(addr, 1, 4, 2, wait), Rendezvous(addr, 3, 4, 2, wait)
    node_0.open()
    released = threading.Event()
    out: dict = {}

    def go(name, place, check=None):
        try:
            out[name] = place.meet(check)
        except Exception as e:  # noqa: BLE001 - the test reads it
            out[name] = e

    threads = [threading.Thread(target=go, args=("killed", killed, _stopping_check(3, released))),
               threading.Thread(target=go, args=("rank 3", rank_3)),
               threading.Thread(target=go, args=("rank 0", node_0))]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)  # node 1 arrived, then stopped; node 0 waits for its rank 1
        threads.append(threading.Thread(target=go, args=("restarted", restarted)))
        threads[-1].start()
        time.sleep(0.3)
        go("rank 1", rank_1)
        for t in threads[1:]:
            t.join(timeout=30)
        assert out["restarted"] is restarted.store, out
        assert out["rank 0"] is node_0.store and out["rank 3"] is rank_3.store, out
        assert out["rank 1"] is rank_1.store, out
    finally:
        released.set()
        threads[0].join(timeout=30)
        for p in (node_0, killed, restarted, rank_1, rank_3):
            p.close()


def test_node_0_does_not_meet_a_rank_that_stopped_in_the_rendezvous(monkeypatch):
    """Rank 1 arrived, then was killed before node 0's last rank came: node 0 counted it as
    arrived and went on to make the group, failing only after INIT_TIMEOUT (10 minutes)
    naming no node. Its arrival now goes stale: node 0 keeps waiting for a restart, and its
    timeout names rank 1 as stopped."""
    import threading
    from datetime import timedelta

    from aiollm.distributed import rendezvous
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    monkeypatch.setattr(rendezvous, "STALE_S", STALE_S)
    addr = f"127.0.0.1:{_free_port()}"
    node_0 = Rendezvous(addr, 0, 2, 2, timedelta(seconds=2 * STALE_S + 0.5))
    node_1 = Rendezvous(addr, 1, 2, 2, timedelta(seconds=30))
    node_0.open()
    released = threading.Event()
    killed = threading.Thread(target=lambda: pytest.raises(
        RuntimeError, node_1.meet, _stopping_check(0, released)))
    killed.start()
    try:
        time.sleep(0.5)  # rank 1 arrived and stopped
        with pytest.raises(TimeoutError, match=r"rank 1 \(node 1\) stopped"):
            node_0.meet()
    finally:
        released.set()
        killed.join(timeout=30)
        node_0.close()
        node_1.close()


def test_of_two_restarts_of_a_killed_rank_one_is_refused(monkeypatch):
    """Rank 1 killed while it waited, then started again twice at once: one restart
    replaces it and meets, the other is refused as a rank started twice."""
    import threading
    from datetime import timedelta

    from aiollm.distributed import rendezvous
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    monkeypatch.setattr(rendezvous, "STALE_S", STALE_S)  # (each restart's watch lasts it)

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=15)
    places = [Rendezvous(addr, r, 2, 2, wait) for r in (0, 1, 1, 1)]
    places[0].open()
    released = threading.Event()
    killed = threading.Thread(target=lambda: pytest.raises(
        RuntimeError, places[1].meet, _stopping_check(0, released)))
    killed.start()
    try:
        time.sleep(0.3)  # rank 1 arrived and stopped
        out: list = [None, None]

        def go(i):
            try:
                out[i] = places[2 + i].meet()
            except ValueError as e:
                out[i] = e
        restarts = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
        for t in restarts:
            t.start()
        time.sleep(0.5)
        assert places[0].meet() is places[0].store
        for t in restarts:
            t.join(timeout=30)
        refused = [o for o in out if isinstance(o, ValueError)]
        assert len(refused) == 1 and "rank 1 (node 1)" in str(refused[0]), out
        assert any(o is p.store for o, p in zip(out, places[2:])), out
    finally:
        released.set()
        killed.join(timeout=30)
        for p in places:
            p.close()


@pytest.mark.parametrize("flag,value", [("max_model_len", 64), ("dtype", "bfloat16"),
                                        ("model", "3 layers")])
def test_a_node_started_with_another_model_or_flags_is_refused_naming_them(tiny_model,  # noqa: F811
                                                                            tmp_path, flag,
                                                                            value):
    """Node 1 started with another --max-model-len, --dtype or model than node 0 (another
    checkpoint at the same path): the group was made, then a request hung (another layer
    count: a collective rank 0 never made), or a rank aborted in gloo (another dtype or
    width), and a longer --max-model-len wrote past node 1's rows. Node 1 is now refused
    before it arrives, naming its setting and node 0's; node 0 names node 1 and why."""
    import copy
    import dataclasses
    from datetime import timedelta

    from test_tensor_parallel import TINY

    from aiollm.config import EngineConfig
    from aiollm.distributed.group import RankLost
    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous
    from aiollm.distributed.start_settings import start_settings
    from aiollm.model.loader import read_config

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=10)
    cfg = EngineConfig(model=tiny_model, device="cpu", max_model_len=128,
                       tensor_parallel_size=2, nnodes=2, dist_init_addr=addr)
    if flag == "model":
        other = tmp_path / "tiny-3-layers"
        config = copy.deepcopy(TINY)
        config.num_hidden_layers = 3
        config.save_pretrained(other)  # its config is all the check reads
        cfg1 = dataclasses.replace(cfg, model=str(other), node_rank=1)
    else:
        cfg1 = dataclasses.replace(cfg, node_rank=1, **{flag: value})
    places = [Rendezvous(addr, 1, 2, 2, wait), Rendezvous(addr, 0, 2, 2, wait)]
    for place, c in zip(places, (cfg1, cfg)):
        place.settings = start_settings(c, read_config(c.model))
    places[1].open()
    try:
        started = time.monotonic()
        out = _meet_in_threads(*places)
        assert isinstance(out[0], ValueError), out
        said = {"max_model_len": ("max_model_len 64 (--max-model-len)",
                                  "max_model_len 128 (--max-model-len)"),
                "dtype": ("dtype bfloat16 (--dtype)", "dtype float32 (auto) (--dtype)"),
                "model": ("3 layers", "2 layers")}[flag]
        assert f"node 1 was started with " in str(out[0]) and said[0] in str(out[0]), out
        assert f"node 0 (the rendezvous at {addr}) with " in str(out[0]), out
        assert said[1] in str(out[0]), out
        assert isinstance(out[1], RankLost), out
        assert "node 1 (rank 1) failed to start: ValueError: node 1 was started with" \
            in str(out[1]), out
        assert time.monotonic() - started < 8, out  # not the timeout
    finally:
        for p in places:
            p.close()


def test_a_rank_restarted_after_the_group_was_made_is_told_to_restart_every_node():
    """Node 1 killed after the group was made (at a start-up checkpoint, or serving), then
    restarted while node 0 still runs: it was told that another node was started with its
    --node-rank, which sent its user looking for a duplicate. It now says that rank is
    already in a group, which takes no replacement: start every node again."""
    from datetime import timedelta

    from aiollm.distributed.launch import _free_port
    from aiollm.distributed.rendezvous import Rendezvous

    addr, wait = f"127.0.0.1:{_free_port()}", timedelta(seconds=5)
    places = [Rendezvous(addr, 0, 2, 2, wait), Rendezvous(addr, 1, 2, 2, wait)]
    places[0].open()
    restart = Rendezvous(addr, 1, 2, 2, wait)
    try:
        out = _meet_in_threads(*places)
        assert out == [p.store for p in places], out
        with pytest.raises(ValueError) as e:
            restart.meet()
        assert "tensor parallel rank 1 (node 1) is already in the group made at " \
               f"{addr}" in str(e.value), e.value
        assert "start every node again" in str(e.value), e.value
        assert "node 1 (--node-rank)" in str(e.value), e.value
    finally:
        for p in (*places, restart):
            p.close()


def test_a_node_waiting_for_node_0s_rendezvous_says_so(monkeypatch, caplog):
    """Node 1 started before node 0, or given a wrong --dist-init-addr: it waited up to the
    rendezvous' timeout (10 minutes) saying nothing after its first line. It now logs that
    it waits, for what and where, within NOTE_S and then every NOTE_EVERY_S."""
    import logging
    from datetime import timedelta

    from aiollm.distributed import rendezvous
    from aiollm.distributed.launch import _free_port

    monkeypatch.setattr(rendezvous, "NOTE_S", 0.2)
    monkeypatch.setattr(rendezvous, "NOTE_EVERY_S", 0.5)
    addr = f"127.0.0.1:{_free_port()}"
    place = rendezvous.Rendezvous(addr, 1, 2, 2, timedelta(seconds=1.3))
    with caplog.at_level(logging.INFO, logger="aiollm.distributed.rendezvous"):
        with pytest.raises(TimeoutError):
            place.open()
    notes = [r.getMessage() for r in caplog.records
             if "waiting for node 0" in r.getMessage()]
    assert len(notes) >= 2, caplog.text
    assert f"the tensor parallel rendezvous at {addr} (--dist-init-addr)" in notes[0], notes
    assert "aiollm serve --node-rank 0" in notes[0], notes


def test_auto_and_the_value_it_resolves_to_are_the_same_setting(tiny_model):  # noqa: F811
    """--dtype auto, --kv-cache-dtype auto and --device auto on one node, what they resolve
    to given on another (the same model, on the CPU: float32): nodes that run alike were
    refused ("--dtype auto" against "--dtype float32"). They are now taken as the same;
    another dtype is still refused, shown with what auto resolved to."""
    import dataclasses

    from aiollm.config import EngineConfig
    from aiollm.distributed.start_settings import differing, start_settings
    from aiollm.model.loader import read_config

    model = read_config(tiny_model)
    auto = EngineConfig(model=tiny_model, device="auto", tensor_parallel_size=2, nnodes=2,
                        dist_init_addr="127.0.0.1:29500")
    given = dataclasses.replace(auto, device="cpu", dtype="float32", kv_cache_dtype="float32")
    assert differing(start_settings(auto, model), start_settings(given, model)) == []
    other = dataclasses.replace(given, dtype="bfloat16", kv_cache_dtype="auto")
    ours, theirs = start_settings(auto, model), start_settings(other, model)
    assert differing(ours, theirs) == ["--dtype", "--kv-cache-dtype"]
    assert ours["--dtype"] == "float32 (auto)" and theirs["--dtype"] == "bfloat16", ours


def test_settings_a_node_differs_in_name_the_flags_the_user_typed():
    """A node started with SGLang's `--context-length 64`, refused for node 0's 128, was told
    "--max-model-len 64", a flag its user never typed: the settings were named bare, not in
    the "name (--flag)" form serve's log rewrites as typed (as the shape's are)."""
    from aiollm.cli.log_config import rewrite_flags
    from aiollm.distributed.start_settings import settings_said

    settings = {"the model": "llama (2 layers)", "--max-model-len": "64",
                "--max-running-requests": "8", "--no-cuda-graph": "given"}
    said = rewrite_flags(settings_said(settings, list(settings)),
                         {"--max-model-len": "--context-length",
                          "--max-running-requests": "--max-num-seqs"})
    assert said == ("the model llama (2 layers), max_model_len 64 (--context-length), "
                    "max_running_requests 8 (--max-num-seqs), --no-cuda-graph given"), said
