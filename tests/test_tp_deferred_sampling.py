"""A tensor-parallel step whose deferred sampling never ran leaves no rank waiting (the CPU,
gloo, 2 ranks).

A step with constrained rows (a grammar, a logit bias) is launched without its sampling:
rank 0 samples once the masks are built, and broadcasts the ids the followers wait for. An
engine stopped between the launch and the sampling never broadcast them: its STOP went out
on another group than the one the followers waited on, and every rank waited forever (a
server stopped with Ctrl-C during a tool call hung, its event loop blocked in the STOP's
send). ModelRunner.settle() now samples such a step before the STOP.

The engine runs in a child process, so that a hang (gloo's 30-minute timeout) fails the
test after TIMEOUT_S instead of stalling the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from test_tensor_parallel import tiny_model  # noqa: F401 - a fixture

TIMEOUT_S = 240

_SCRIPT = r'''
import asyncio, sys, time
from aiollm.engine import Engine
from aiollm.errors import EngineStopped
from aiollm.sampling_params import SamplingParams

# a logit bias constrains a row without a grammar: its sampling is deferred
biased = SamplingParams(max_tokens=8, temperature=1.0, seed=3, logit_bias={5: 2.0})


async def go():
    engine = Engine(sys.argv[1], device="cpu", tensor_parallel_size=2, kv_tokens=256,
                    max_model_len=128)
    engine.exit_on_lost_rank = False
    await engine.start()
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


def test_an_engine_stopped_between_a_launch_and_its_sampling_stops_its_ranks(
        tiny_model, tmp_path):  # noqa: F811
    script = tmp_path / "deferred.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), tiny_model], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine and its spawned rank
        out, _ = proc.communicate()
        raise AssertionError(f"the ranks hung at the stop:\n{out}")
    assert proc.returncode == 0 and "stopped mid-step" in out, out
