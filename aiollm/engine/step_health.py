"""Whether the step loop still makes progress: the failed steps in a row since the last step
that completed, for the health probe.

A failed step fails its own requests and the loop goes on (step_loop.py), so one bad request
(a kernel fault on its input) costs only its batch. An error that every step meets (a
sticky CUDA error, a lost device) fails every request from then on while the loop keeps
running; /health must then stop saying 200, or a load balancer keeps sending the server
traffic it can only fail. vLLM treats the first error in its engine loop as fatal (the
engine is dead, every later request fails, its /health fails); aiollm keeps serving after
one, and calls the engine failing only once FAILING_STEPS steps in a row have failed with
none completing between them. The next step that completes clears it; while it is set,
health checks run a probe request to make one (health_probe.py).
"""

from __future__ import annotations

# Failed steps in a row that make the engine failing. One bad request fails one step (with
# the requests batched with it) and is gone; three in a row with no step completing
# between them is a fault that every step meets, not a request's.
FAILING_STEPS = 3


class StepHealth:
    """The step loop's record of failed steps: failed(e) for a step that raised (not one
    that ran out of memory and whose requests are paused and resumed, which is progress;
    one whose request fails as too large alone, oom.py, is), completed() for a step whose
    tokens were handed out."""

    def __init__(self) -> None:
        self.failed_in_a_row = 0
        self.last_error: str | None = None

    def failed(self, error: BaseException) -> None:
        self.failed_in_a_row += 1
        self.last_error = f"{type(error).__name__}: {error}"

    def completed(self) -> None:
        self.failed_in_a_row = 0

    @property
    def failing(self) -> str | None:
        """Why the engine cannot make progress (the last step's error, and how many steps in
        a row failed), None while it can."""
        if self.failed_in_a_row < FAILING_STEPS:
            return None
        return f"the last {self.failed_in_a_row} model steps failed: {self.last_error}"
