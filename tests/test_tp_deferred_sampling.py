"""A tensor-parallel step whose deferred sampling never ran leaves no rank waiting (the CPU,
gloo, 2 ranks).

A step with constrained rows (a grammar, a logit bias) is launched without its sampling:
rank 0 samples once the masks are built, and broadcasts the ids the followers wait for. An
engine stopped between the launch and the sampling never broadcast them: its STOP went out
on another group than the one the followers waited on, and every rank waited forever (a
server stopped with Ctrl-C during a tool call hung, its event loop blocked in the STOP's
send). ModelRunner.settle() now samples such a step before the STOP, and after the step
loop's catch-all (a bug between the launch and the sampling), whose next step's message met
the followers in broadcast_ids.

The engine runs in a child process, so that a hang (gloo's 30-minute timeout) fails the
test after TIMEOUT_S instead of stalling the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from test_tensor_parallel import tiny_model  # noqa: F401 - a fixture

TIMEOUT_S = 240

# both scripts': a started -tp 2 engine on the model argv[1] names, and a constrained request
_PREAMBLE = r'''
import asyncio, sys, time
from aiollm.engine import Engine
from aiollm.errors import EngineStopped, RequestFailed
from aiollm.sampling_params import SamplingParams

# a logit bias constrains a row without a grammar: its sampling is deferred
biased = SamplingParams(max_tokens=8, temperature=1.0, seed=3, logit_bias={5: 2.0})


async def started():
    engine = Engine(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256,
                    max_model_len=128)
    engine.exit_on_lost_rank = False
    await engine.start()
    return engine
'''

_SCRIPT = _PREAMBLE + r'''

async def go():
    engine = await started()
    loop, launched = asyncio.get_running_loop(), asyncio.Event()
    real = engine.runner.launch

    def launch(inp):  # on the model thread: a constrained step's forward, then a pause
        out = real(inp)
        if out.deferred is not None:
            loop.call_soon_threadsafe(launched.set)
            time.sleep(1.0)  # the stop comes while the loop waits for this launch
        return out

    engine.runner.launch = launch
    task = asyncio.create_task(engine.generate([3, 17, 99], biased))
    await launched.wait()
    await engine.stop()  # between the launch and its sampling
    try:
        await task
    except EngineStopped:
        print("stopped mid-step", flush=True)


asyncio.run(go())
'''


# the loop's catch-all (a bug outside the model step) between a constrained step's launch
# and its sampling: the step was dropped, unsampled, and the next step's message met the
# followers in broadcast_ids
_CATCH_ALL = _PREAMBLE + r'''

async def go():
    engine = await started()
    real, calls = engine._process, []

    def process(step, result):  # a bug in the hand-out of the first step's tokens
        calls.append(step)
        if len(calls) == 1:
            raise RuntimeError("a bug in the hand-out")
        return real(step, result)

    engine._process = process
    try:
        await engine.generate([3, 17, 99], biased)
    except RequestFailed:
        print("failed by the bug", flush=True)
    out = await asyncio.wait_for(
        engine.generate([4, 18], SamplingParams(max_tokens=4, temperature=0.0)), 60)
    print("served after it:", len(out.token_ids), flush=True)
    await engine.stop()


asyncio.run(go())
'''


def _run(script_text: str, tiny_model: str, tmp_path) -> str:
    """Run `script_text` on `tiny_model` in a child process: its output (a hang fails)."""
    script = tmp_path / "deferred.py"
    script.write_text(script_text)
    proc = subprocess.Popen([sys.executable, str(script), tiny_model], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine and its spawned rank
        out, _ = proc.communicate()
        raise AssertionError(f"the ranks hung:\n{out}")
    assert proc.returncode == 0, out
    return out


def test_an_engine_stopped_between_a_launch_and_its_sampling_stops_its_ranks(
        tiny_model, tmp_path):  # noqa: F811
    assert "stopped mid-step" in _run(_SCRIPT, tiny_model, tmp_path)


def test_a_loop_error_between_a_launch_and_its_sampling_leaves_the_ranks_in_step(
        tiny_model, tmp_path):  # noqa: F811
    out = _run(_CATCH_ALL, tiny_model, tmp_path)
    assert "failed by the bug" in out and "served after it: 4" in out, out
