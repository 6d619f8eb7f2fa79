"""The health probe: while the engine is failing (step_health.py), a health check runs a
tiny request through the step loop to see whether the fault is gone.

The failing state clears only when a step completes. A load balancer that takes a 503
server out of rotation sends it no request, so after a transient fault (another process
held the device memory for a moment, and FAILING_STEPS requests failed out of memory) no
step would ever run again to clear it: the server stayed 503 for ever, though it would
serve. So while the engine is failing, a health check runs one probe request (PROBE_PROMPT,
one greedy output token) and reports its outcome: completed, its step has cleared the
failing state as any completed step does; failed or timed out, the check names why.

Concurrent checks share the probe under way, and a probe starts at most every
PROBE_INTERVAL_S seconds (a check in between answers from the state as it is), so a probe
loop cannot load a sick server. The probe is an ordinary request kept out of the request
metrics and the scheduler's history of output lengths (Request.counted), and a step of
nothing but the probe out of the step histograms (a step it shares with a client's request
is that request's work and counts); it takes no place of the waiting queue's
(--max-waiting-requests does not count it, nor the running batch's row it holds, and a full
queue does not refuse it) and waits first in line, behind no client's request
(Planner.enqueue); a probe that times out is
aborted as a client that goes away is, which gives back its KV and its table slot.

Hugging Face TGI's router works this way: once a generation failed, its /health runs a
one-token prefill on the model and answers by its outcome (a healthy server's check only
allocates on the device). SGLang's /health_generate submits a one-token greedy request,
kept out of its metrics, and answers 503 past a timeout (20 s by default). vLLM's /health
only reads whether its engine died; a dead vLLM engine never recovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING

from aiollm.engine.stream import collect, deltas
from aiollm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from aiollm.engine import Engine

log = logging.getLogger(__name__)

PROBE_PROMPT = [0, 1, 2, 3]  # token ids: any model's vocabulary has them; no tokenizer call
PROBE_TIMEOUT_S = 5.0  # a probe not done by then counts as failed (and is aborted)
PROBE_INTERVAL_S = 1.0  # the least time between the starts of two probes


class HealthProbe:
    """The probe of one started engine: check() is what a health check awaits."""

    def __init__(self, engine: Engine) -> None:
        # the engine holds its probe: a strong reference back made a cycle that kept a
        # stopped engine (its model, its request table) alive until Python's collector ran
        self._engine = weakref.proxy(engine)
        self._task: asyncio.Task | None = None  # the probe under way, or the last one
        self._started_at = -float("inf")  # time.monotonic() of the last probe's start

    async def check(self, timeout: float = PROBE_TIMEOUT_S) -> str | None:
        """None when the serving engine makes progress; else why not, in words. While it is
        failing it probes first (or joins the probe under way): a probe that completes
        clears the failing state and gives None; within PROBE_INTERVAL_S of the last
        probe's start it answers without one. `timeout`: seconds a probe it starts may take."""
        e = self._engine
        if e.failing is None:
            return None
        due = time.monotonic() - self._started_at >= PROBE_INTERVAL_S
        if self._task is None or (self._task.done() and due):
            self._started_at = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._probe(timeout),
                                                                name="aiollm-health-probe")
        if self._task.done():  # probed less than PROBE_INTERVAL_S ago: its outcome
            why = self._task.result()
        else:
            # shielded: a checker that goes away (its client disconnected) leaves the probe
            # to the others that share it
            why = await asyncio.shield(self._task)
        failing = e.failing
        if failing is None:
            return None
        return failing if why is None else f"{failing}; {why}"

    async def _probe(self, timeout: float) -> str | None:
        """Run one probe request: None when it completed, else what went wrong."""
        e = self._engine
        params = SamplingParams(max_tokens=1, temperature=0.0)
        t0 = time.monotonic()
        try:
            req, text = e._submit(_prompt(e), params, counted=False)
            await asyncio.wait_for(collect(req, deltas(req, text, e._finish)), timeout)
        except asyncio.TimeoutError:
            why = f"the health probe (a one-token request) did not complete within {timeout:g} s"
        except Exception as err:  # the request's own error: the step's, Overloaded, ...
            why = f"the health probe (a one-token request) failed: {err}"
        else:
            log.info("health probe completed in %.3f s: the engine makes progress again",
                     time.monotonic() - t0)
            return None
        log.warning("%s", why)
        return why


def _prompt(engine: Engine) -> list[int]:
    """PROBE_PROMPT within the model's vocabulary and context (a tiny test model's too)."""
    n = min(len(PROBE_PROMPT), engine.model_config.vocab_size, engine.max_model_len - 1)
    return PROBE_PROMPT[:n]


class EngineHealth:
    """The Engine's health, as a health check asks it (a mixin of Engine: it reads the
    step loop's StepHealth and HealthProbe, made at start)."""

    @property
    def failing(self) -> str | None:
        """Why a serving engine cannot make progress, None while it can: its last steps
        all failed (step_health.py: a sticky device error fails every step, and so every
        request, while the loop runs on). Cleared by the next step that completes."""
        return self._step_health.failing if self._started else None

    async def check_health(self, timeout: float = PROBE_TIMEOUT_S) -> str | None:
        """None while the engine serves and makes progress; else why not, in words. While
        it is failing, a probe request of one token (HealthProbe above; shared with the
        checks under way, at most one a second, within `timeout` seconds) tells a fault that
        has passed, whose completed step clears the failing state, from one that is still
        there. What a health check asks; never raises (only RuntimeError from another event
        loop than the engine's, or before the engine was first started)."""
        self._check_started()
        if not self.serving:
            return "the engine is not serving"
        self._check_own_loop()
        return await self._health_probe.check(timeout)
