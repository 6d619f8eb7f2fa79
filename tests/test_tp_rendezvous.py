"""The rendezvous of tensor-parallel start-up across nodes (`aiollm serve --nnodes 2` on
loopback, gloo on the CPU): a node whose own checks fail before it joins tells node 0, which
exits naming it and its error within seconds, not after the rendezvous' timeout (10 minutes)
with torch's generic timeout; a node that never comes is named by the ranks that did not
arrive; Ctrl-C in the rendezvous' wait ends that node at once, its spawned ranks too.

A sitecustomize on the children's PYTHONPATH shortens the rendezvous' timeout
(launch.INIT_TIMEOUT), marks each rank's entry into the group's join (launch.join) and a
lead's first look of the rendezvous' wait (join's `check`, called at each look)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pytest
from test_tensor_parallel import _alive, _children
from test_tp_start_checks import rank_folders_removed  # noqa: F401 - autouse
from test_tp_start_checks import (
    TINY3,
    _completion,
    _end,
    _last_error,
    _serving,
    _two_nodes,
    no_rank_folders_left,
)
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

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
    check = kwargs.get("check")  # (a node's lead: called at each look of the wait)
    if check is not None:
        waiting = os.environ["AIOLLM_TEST_WAITING"] + str(rank)

        def look():  # where the rank is: in the rendezvous' wait
            if not os.path.exists(waiting):
                open(waiting, "w").close()
            check()
        kwargs["check"] = look
    return _join(cfg, rank, *args, **kwargs)

launch.join = join
'''


def _env(tmp_path, timeout_s: float) -> tuple[dict, str]:
    """The children's env (the sitecustomize above) and the path prefix of the marks of a
    rank's entry into the join (+ the rank); a lead's first look of the rendezvous' wait is
    marked at WAITING + its rank."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    marker = str(tmp_path / "joining-rank")
    return {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_INIT_TIMEOUT":
            str(timeout_s), "AIOLLM_TEST_JOINING": marker,
            "AIOLLM_TEST_WAITING": str(tmp_path / WAITING)}, marker


WAITING = "waiting-rank"  # (in tmp_path)


def _wait_for(path: str, node, log) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(path):
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)



def test_node_0_names_the_node_whose_checks_failed_before_the_rendezvous(
        tiny_gguf, tmp_path):  # noqa: F811
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
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, models={1: str(other)})
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


def test_node_1_names_node_0_whose_checks_failed(tiny_gguf, tmp_path):  # noqa: F811
    """As above, node 0 given the model 2 ranks cannot split: node 1, waiting in the
    rendezvous, names node 0's error. Node 0 posted it, then its store closed with its
    exit before node 1's next look: node 1 said only that node 0 "ended before the group
    was made: see its log"."""
    other = tmp_path / "tiny3-1kv"
    odd = copy.deepcopy(TINY3)
    odd.num_key_value_heads = 1
    odd.save_pretrained(other)
    env, marker = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, models={0: str(other)}, start=(1,))
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


def test_node_0_names_the_ranks_that_never_arrived(tiny_gguf, tmp_path):  # noqa: F811
    """Node 1 was never started: node 0 fails after the rendezvous' timeout naming the
    ranks that did not arrive, their node and what to check, not torch's bare timeout."""
    env, _ = _env(tmp_path, timeout_s=1)  # (its wait ends at the timeout: 1 s)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, start=(0,))
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
def test_ctrl_c_ends_a_node_waiting_in_the_rendezvous(tiny_gguf, tmp_path, node,  # noqa: F811
                                                      sig):
    """The other node was never started; this one waits in the rendezvous (node 0 with a
    rank it spawned, -tp 4: for node 1's ranks; node 1: for node 0's rendezvous to come
    up). Ctrl-C there was held until the rendezvous' timeout; the node now exits with
    status 130 within seconds, and the rank it spawned is gone too. SIGTERM (a supervisor's
    stop) does the same with 143, 128 + SIGTERM, as torchrun's and a shell's: node 0 exited
    130, as at Ctrl-C."""
    env, _ = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=4, start=(node,))
    try:
        lead = 2 * node
        # the lead joins once rank lead+1 does: then it waits for the other node
        _wait_for(str(tmp_path / WAITING) + str(lead), nodes[0], logs[0])
        spawned = _children(nodes[0].pid)
        assert spawned, logs[0].read_text()
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
def test_node_0_is_told_of_a_node_stopped_in_the_rendezvous(tiny_gguf, tmp_path,  # noqa: F811
                                                            sig, why):
    """-tp 4 over 2 nodes; node 0's spawned rank 1 is held before it joins, so node 1 waits
    in the rendezvous for it. Node 1 stopped there (Ctrl-C, or SIGTERM from its supervisor)
    exits 128 + the signal and tells node 0, which exits 1 naming node 1 and why. At
    SIGTERM node 1 died of Python's default handler: node 0 was not told and waited the
    rendezvous' timeout (10 minutes), then named ranks 2-3 as never arrived."""
    env, _ = _env(tmp_path, timeout_s=120)
    release = tmp_path / "release"
    env.update(AIOLLM_TEST_HOLD_RANK="1", AIOLLM_TEST_HOLD_UNTIL=str(release))
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=4)
    try:
        # node 1's lead joins once rank 3 does, then waits for rank 1
        _wait_for(str(tmp_path / WAITING) + "2", nodes[1], logs[1])
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


_HELD_RANK0_AND_MARK = '''
import os, time
import aiollm.model as model
from aiollm.distributed.group import TensorParallel

_load_model, _start_check = model.load_model, TensorParallel.start_check

def load_model(*args, **kwargs):  # rank 0 loads until told (a large model: minutes)
    from aiollm.model import parallel
    if parallel.current().rank == 0:
        while not os.path.exists(os.environ["AIOLLM_TEST_RELEASE"]):
            time.sleep(0.05)
    return _load_model(*args, **kwargs)

def start_check(self, *args, **kwargs):  # where the rank is: at a start-up checkpoint
    open(os.environ["AIOLLM_TEST_AT_CHECK"] + str(self.rank), "w").close()
    return _start_check(self, *args, **kwargs)

model.load_model, TensorParallel.start_check = load_model, start_check
'''


@pytest.mark.parametrize("killed", [0, 1])
def test_a_node_killed_after_the_group_was_made_is_named_by_the_other(
        tiny_gguf, tmp_path, killed):  # noqa: F811
    """The group is made; node 1 waits at the first start-up checkpoint while rank 0 loads.
    One node is killed (SIGKILL, the OOM killer): the other exited 1 with a traceback of
    gloo's "Connection closed by peer", naming no node (with -tp 4, its own spawned rank,
    which only saw the same). It now names the node that ended and what to do."""
    (tmp_path / "sitecustomize.py").write_text(_HELD_RANK0_AND_MARK)
    marker, release = str(tmp_path / "at-check-rank"), tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_AT_CHECK": marker,
           "AIOLLM_TEST_RELEASE": str(release)}
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env)
    try:
        _wait_for(marker + "1", nodes[1], logs[1])
        time.sleep(0.5)  # inside the checkpoint's wait
        nodes[killed].kill()
        nodes[killed].wait()
        release.touch()  # rank 0, if alive, reaches the checkpoint: its collective fails
        other = 1 - killed
        assert nodes[other].wait(timeout=60) == 1, logs[other].read_text()
        text = logs[other].read_text()
        assert "Traceback" not in text, text
        error = _last_error(text)
        assert f"tensor parallel node {killed} (rank {killed}) ended during start-up, after " \
               f"the group was made" in error, error
        assert "start every node again" in error, error
    finally:
        release.touch()
        _end(nodes)


def test_node_1_says_so_when_node_0_ends_while_it_serves(tiny_gguf, tmp_path):  # noqa: F811
    """Two nodes serve; node 0 is killed (SIGKILL, the OOM killer; or it gave up its
    start-up after its load, Ctrl-C). Node 1, waiting for rank 0's next step message,
    exited 1 with a traceback of gloo's "Connection closed by peer". It now exits 1
    within seconds naming node 0, its spawned ranks gone too."""
    env, _ = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=4)
    try:
        _serving(nodes, logs)
        spawned = _children(nodes[1].pid)
        nodes[0].kill()
        nodes[0].wait()
        assert nodes[1].wait(timeout=30) == 1, logs[1].read_text()
        text = logs[1].read_text()
        assert "Traceback" not in text, text
        error = _last_error(text)
        assert "tensor parallel node 0 (ranks 0-1) ended while this node served" in error, \
            error
        assert not any(_alive(pid) for pid in spawned), "a spawned rank outlived its node"
    finally:
        _end(nodes)


@pytest.mark.parametrize("tp", [2, 4])
def test_node_0_names_node_1_ended_while_it_served(tiny_gguf, tmp_path, tp):  # noqa: F811
    """Two nodes serve; node 1 is killed. The next request failed with gloo's "Connection
    closed by peer" and node 0 exited saying "tensor parallel rank 0: model step failed"
    with it, naming no node. Both now name node 1 and say to start every node again; with
    -tp 4, not node 0's own rank 1, which only saw node 1's sockets close as rank 0 did."""
    import urllib.error
    import urllib.request

    env, _ = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, tp=tp)
    try:
        base = _serving(nodes, logs)
        nodes[1].kill()
        nodes[1].wait()
        request = _completion(base)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=60)
        body = e.value.read().decode()
        ranks = "rank 1" if tp == 2 else "ranks 2-3"
        said = f"tensor parallel node 1 ({ranks}) ended while this node served"
        assert said in body, body
        assert nodes[0].wait(timeout=30) == 1, logs[0].read_text()
        error = _last_error(logs[0].read_text())
        assert said in error and "start every node again" in error, error
    finally:
        _end(nodes)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_node_1_at_once_while_it_serves(tiny_gguf, tmp_path, sig):  # noqa: F811
    """Two nodes serve, idle; node 1 gets Ctrl-C (SIGINT) or SIGTERM. Its lead waits for
    rank 0's next step message inside gloo, where Python's KeyboardInterrupt is raised
    only once one comes: at Ctrl-C it ran on until rank 0's keep-alive, up to a minute
    (group.KEEPALIVE_S). Both signals now end it at once, as a signal ends a process;
    node 0's next request names node 1."""
    import urllib.error
    import urllib.request

    env, _ = _env(tmp_path, timeout_s=120)
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env)
    try:
        base = _serving(nodes, logs)
        time.sleep(0.5)  # (in the wait for the next step message)
        nodes[1].send_signal(sig)
        assert nodes[1].wait(timeout=20) == -sig, logs[1].read_text()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(_completion(base), timeout=60)
        assert "tensor parallel node 1 (rank 1) ended while this node served" in \
            e.value.read().decode()
    finally:
        _end(nodes)


KEEPALIVE_S = 0.5  # node 0's idle message in idle_pair (group.KEEPALIVE_S: 60 s)


@pytest.fixture(scope="module")
def idle_pair(tiny_gguf, tmp_path_factory):  # noqa: F811
    """Two nodes that serve (-tp 2, one rank each), node 1 started with SIGINT ignored,
    node 0 sending its idle message every KEEPALIVE_S: (nodes, logs, node 0's base URL).
    Shared, in the file's order, by test_node_1_started_ignoring_ctrl_c_serves_on_at_it,
    which leaves both serving, and test_node_0_idle_names_node_1_ended_at_its_keep_alive,
    which ends them (two processes that import torch and load, started once)."""
    tmp_path = tmp_path_factory.mktemp("idle-pair")
    env, _ = _env(tmp_path, timeout_s=120)
    with open(tmp_path / "sitecustomize.py", "a") as f:
        f.write(f"\nimport aiollm.distributed.group as group\ngroup.KEEPALIVE_S = {KEEPALIVE_S}\n")
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, env, start=(0,))
    args = list(nodes[0].args)  # node 0's, at the same --dist-init-addr
    args[args.index("--node-rank") + 1] = "1"
    del args[args.index("--port"): args.index("--port") + 2]
    logs.append(tmp_path / "node1.log")
    with open(logs[1], "w") as out:
        nodes.append(subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT,
            env={**env, "TMPDIR": str(tmp_path / "tmp")},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)))
    try:
        yield nodes, logs, _serving(nodes, logs)
    finally:
        _end(nodes)
        no_rank_folders_left(tmp_path / "tmp")


def test_node_1_started_ignoring_ctrl_c_serves_on_at_it(idle_pair):
    """Node 1 started with SIGINT ignored, as a shell script's background job is (POSIX:
    `aiollm serve --node-rank 1 ... &`), so that Ctrl-C in the script's terminal reaches
    node 0 alone, whose drain needs node 1. Node 1 put the default back once it served and
    died of that Ctrl-C at once, failing node 0's requests in flight; it now serves on."""
    import urllib.request

    nodes, logs, base = idle_pair
    nodes[1].send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert nodes[1].poll() is None, logs[1].read_text()
    with urllib.request.urlopen(_completion(base), timeout=60) as r:
        assert r.status == 200


def test_node_0_idle_names_node_1_ended_at_its_keep_alive(idle_pair):
    """Two nodes serve, idle; node 1 is killed. Node 0's next message is its keep-alive
    (group.KEEPALIVE_S, KEEPALIVE_S here), which fails: it went to the loop's catch-all,
    which logged "engine loop error" and tried again every 10 ms, for as long as no
    request came (a hundred tracebacks a second, /health ok). Node 0 now exits 1 naming
    node 1, with no traceback of gloo's closed socket (which says no more than that
    name)."""
    nodes, logs, _ = idle_pair
    assert nodes[0].poll() is None and nodes[1].poll() is None, logs[0].read_text()[-3000:]
    nodes[1].kill()
    nodes[1].wait()
    assert nodes[0].wait(timeout=30) == 1, logs[0].read_text()[-3000:]
    text = logs[0].read_text()
    assert "engine loop error" not in text and "Traceback" not in text, text[-3000:]
    error = _last_error(text)
    assert "tensor parallel node 1 (rank 1) ended while this node served" in error, error
