"""Lost ranks as users meet them (tensor parallelism on the CPU, gloo, 2 ranks): a rank that
fails its load at start-up is named with its own error (its number, exception type and
message) by Engine and by `aiollm serve`, not by rank 0's gloo "Connection closed by peer",
and no rank is left; an offline LLM whose rank dies raises instead of ending the process.

Rank 1 alone fails: a sitecustomize on the children's PYTHONPATH makes the rank-model build
of rank 1 (and of no other rank) raise, as a rank's own shard check or out-of-memory would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from test_tensor_parallel import (  # noqa: F401 - a fixture
    AIOLLM,
    _children,
    _until_healthy,
    tiny_model,
)
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

from aiollm.engine import Engine

# what a script of two ranks may take before it counts as hung: 50-105 s was seen on a loaded
# 2-core machine (each rank imports torch and loads), against the 60-120 s limits it had; the
# hangs these tests catch wait out the group's 10-minute rendezvous timeout
TIMEOUT_S = 300
FAULT = "MemoryError: rank 1 ran out of memory loading its shard"
_SITECUSTOMIZE = f'''
import aiollm.engine.loading as loading
_build = loading.build_rank_model
def build_rank_model(cfg, loaded, device, dtype, tp, *rest):
    if tp is not None and tp.rank == 1:
        raise MemoryError("{FAULT.split(": ", 1)[1]}")
    return _build(cfg, loaded, device, dtype, tp, *rest)
loading.build_rank_model = build_rank_model
'''


@pytest.fixture
def rank1_fails(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the spawned ranks' (this one has started)


def test_engine_raises_the_failing_ranks_error(tiny_model, rank1_fails):  # noqa: F811
    async def start():
        async with Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=256,
                          max_model_len=128):
            pass

    with pytest.raises(RuntimeError) as got:
        asyncio.run(start())
    assert str(got.value) == f"tensor parallel rank 1 failed: {FAULT}"
    assert _children(__import__("os").getpid()) == []


def test_serve_exits_with_the_failing_ranks_error(tiny_gguf, rank1_fails):  # noqa: F811
    proc = subprocess.run([AIOLLM, "serve", tiny_gguf, "--device", "cpu", "--kv-tokens", "256",
                           "--max-model-len", "128", "--tensor-parallel-size", "2",
                           "--port", "0"], capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    tail = out.strip().splitlines()[-1]
    assert f"tensor parallel rank 1 failed: {FAULT}" in tail, out
    assert "Connection closed by peer" not in tail, out


_LOST_OFFLINE = """
import os, sys, threading, time
from aiollm import LLM, SamplingParams

llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=2048,
          max_model_len=256)
(rank1,) = llm.engine.ranks.procs.values()
threading.Timer(1.0, rank1.kill).start()  # mid-generation: it takes several seconds
try:
    llm.generate([[3, 17, i] for i in range(8)], SamplingParams(max_tokens=240, ignore_eos=True))
    print("no error")
except Exception as e:
    print("in flight:", type(e).__name__, e, flush=True)
try:
    llm.generate([[3]], SamplingParams(max_tokens=2))
except Exception as e:
    print("after:", type(e).__name__, e, flush=True)
llm.close()
print("closed; rank 1:", rank1.poll(), "children:", os.listdir(f"/proc/{os.getpid()}/task") and
      open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split(), flush=True)
# the watchdog had ended the process (on a thread of its own, once the requests in flight
# had failed) by the time every other thread ended but tqdm's monitor, which lives on: wait
# for them (2 s at most)
def others():
    return [t for t in threading.enumerate()
            if t is not threading.current_thread() and t.name != "tqdm_monitor"]
deadline = time.monotonic() + 2
while others() and time.monotonic() < deadline:
    time.sleep(0.05)
print("the process goes on; other threads:", [t.name for t in others()], flush=True)
"""


def test_an_offline_llm_whose_rank_dies_raises_and_its_process_goes_on(tiny_gguf):  # noqa: F811
    """LLM (offline) under tensor parallelism whose rank 1 is killed mid-generate(): the
    call raises naming the rank, later calls raise naming it too, close() ends cleanly and
    the user's process goes on (it exited with status 1, as a server does)."""
    proc = subprocess.run([sys.executable, "-c", _LOST_OFFLINE, tiny_gguf],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "in flight: RequestFailed tensor parallel rank 1 was killed by SIGKILL" in out, out
    assert ("after: EngineStopped tensor parallel rank 1 was killed by SIGKILL: this engine "
            "cannot serve any more") in out, out
    assert "closed; rank 1: -9 children: []" in out, out
    assert "the process goes on" in out, out


_JOIN_FAILS = '''
import aiollm.distributed.launch as launch
_join = launch.join
def join(cfg, rank, addr, *rest, **kw):
    if rank == 1:
        raise RuntimeError("CUDA error: invalid device ordinal")
    return _join(cfg, rank, addr, *rest, **kw)
launch.join = join
'''
_OFFLINE_START = """
import sys, time
from aiollm import LLM
t = time.monotonic()
try:
    LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256, max_model_len=128)
except Exception as e:
    print("raised:", type(e).__name__, e, flush=True)
print(f"after {time.monotonic() - t:.0f} s", flush=True)
"""


def test_an_offline_llm_whose_rank_fails_before_joining_raises_its_error(tiny_gguf,  # noqa: F811
                                                                         tmp_path):
    """Rank 1 fails before it joins the group's rendezvous (its GPU cannot be set): an
    offline LLM's start raises its error at once. Rank 0 waited in the rendezvous for a
    rank that was gone, for the group's start-up timeout (10 minutes)."""
    (tmp_path / "sitecustomize.py").write_text(_JOIN_FAILS)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_START, tiny_gguf], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert ("raised: RankLost tensor parallel rank 1 failed: RuntimeError: CUDA error: "
            "invalid device ordinal") in out, out


# the scripts' child processes (the spawned ranks), from any of their threads
_CHILDREN = '''
def children():
    kids = []
    for t in os.listdir(f"/proc/{os.getpid()}/task"):
        try:  # (a thread may end meanwhile)
            kids += open(f"/proc/{os.getpid()}/task/{t}/children").read().split()
        except FileNotFoundError:
            pass
    return kids
'''
_INTERRUPTED_START = """
import os, signal, sys, threading, time
from aiollm import LLM, SamplingParams
""" + _CHILDREN + """
def ctrl_c_once_rank_1_runs():
    while not children():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=ctrl_c_once_rank_1_runs, daemon=True).start()
try:
    LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256, max_model_len=128)
    print("started", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
deadline = time.monotonic() + 10
while children() and time.monotonic() < deadline:
    time.sleep(0.05)
print("children:", children(), flush=True)
llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256, max_model_len=128)
out = llm.generate([[3, 17]], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
print("second:", len(out[0].outputs[0].token_ids), flush=True)
llm.close()
print("children at the end:", children(), flush=True)
"""


def test_ctrl_c_during_an_offline_llm_s_start_ends_its_ranks(tiny_gguf):  # noqa: F811
    """Ctrl-C while an offline LLM's ranks start (a notebook's interrupted cell): its rank 1
    ends, and a second LLM in the same process starts and generates. Rank 1 was left
    running, and rank 0 in the torch.distributed group, so the second LLM raised "trying
    to initialize the default process group twice"."""
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_START, tiny_gguf],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "interrupted\nchildren: []\nsecond: 4\nchildren at the end: []\n" in proc.stdout, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_servers_process_group_drains_it(tiny_gguf, tmp_path,  # noqa: F811
                                                         sig):
    """SIGTERM to the whole process group, as systemd stops a service (KillMode
    control-group) and `kill -TERM -PGID` does: the server finishes the request in flight
    and exits 0. Rank 1 died of the SIGTERM at once, so the request failed ("rank 1 was
    killed by SIGTERM") and the server exited 1; rank 0 stops its ranks itself. So at
    Ctrl-C in the server's terminal (SIGINT to the foreground process group): a spawned
    rank ignores it (it is no other node's lead, which a signal ends at once)."""
    import aiohttp

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([AIOLLM, "serve", tiny_gguf, "--device", "cpu",
                                 "--kv-tokens", "1024", "--max-model-len", "256", "-tp", "2",
                                 "--port", "0"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = asyncio.run(_until_healthy(proc, log))

        async def terminated_while_streaming():
            # (31 steps left at the signal, each needing rank 1: one that died of it
            # fails the next within milliseconds)
            body = {"prompt": [3, 17], "max_tokens": 32, "temperature": 0, "stream": True,
                    "ignore_eos": True}
            async with aiohttp.ClientSession() as s:
                async with s.post(base + "/v1/completions", json=body) as r:
                    await r.content.readline()  # serving has begun
                    os.killpg(proc.pid, sig)
                    return r.status, (await r.read()).decode()

        status, tail = asyncio.run(terminated_while_streaming())
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert status == 200 and "error" not in tail and tail.endswith("data: [DONE]\n\n"), tail
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_SLOW_RENDEZVOUS = '''
import os
if os.environ.get("AIOLLM_TP_CONFIG"):  # the first spawned rank reaches the rendezvous late
    import time
    from aiollm.distributed.rendezvous import Rendezvous
    _meet = Rendezvous.meet
    def meet(*args, **kwargs):
        try:  # (the next start's rank, once this file exists, comes at once)
            open(os.environ["AIOLLM_TEST_LATE_ONCE"], "x").close()
            time.sleep(3)
        except FileExistsError:
            pass
        return _meet(*args, **kwargs)
    Rendezvous.meet = meet
'''
_CANCELLED_IN_RENDEZVOUS = """
import asyncio, glob, os, sys, tempfile, threading
from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams
""" + _CHILDREN + """
async def main():
    engine = Engine(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256,
                    max_model_len=128)
    engine.exit_on_lost_rank = False
    start = asyncio.ensure_future(engine.start())
    while not glob.glob(os.path.join(tempfile.gettempdir(), "aiollm-tp-*", "rank1.joining")):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # rank 0 waits in the rendezvous now
    start.cancel()
    try:
        await start
    except asyncio.CancelledError:
        print("cancelled", flush=True)
    await engine.start()
    out = await engine.generate([3, 17], SamplingParams(max_tokens=4, ignore_eos=True))
    print("generated:", len(out.token_ids), flush=True)
    await engine.stop()
    print("children:", children(), flush=True)
    # a watchdog left running dropped the last reference to its group at exit, on a daemon
    # thread, and the process aborted (RankWatchdog.end)
    print("watchdogs:", [t.name for t in threading.enumerate() if "watchdog" in t.name],
          flush=True)

asyncio.run(main())
"""


def test_a_start_cancelled_in_the_rendezvous_leaves_the_next_one_to_start(tiny_gguf,  # noqa: F811
                                                                          tmp_path):
    """start() cancelled (a wait_for's timeout, Ctrl-C) while rank 0 waits in the group's
    rendezvous for a rank still on its way: the next start() starts and generates, and no
    rank is left. A rank killed in the rendezvous left rank 0's start-up waiting there for
    the group's timeout (10 minutes), and the next start with it. The process then exits
    cleanly: no watchdog thread outlives stop() (one that did aborted the exit, rc -6,
    "terminate called without an active exception", in some runs on a loaded machine)."""
    (tmp_path / "sitecustomize.py").write_text(_SLOW_RENDEZVOUS)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TMPDIR": str(tmp),
           "AIOLLM_TEST_LATE_ONCE": str(tmp_path / "late-once")}
    proc = subprocess.run([sys.executable, "-c", _CANCELLED_IN_RENDEZVOUS, tiny_gguf],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.stdout == "cancelled\ngenerated: 4\nchildren: []\nwatchdogs: []\n", out
    assert proc.returncode == 0, out
