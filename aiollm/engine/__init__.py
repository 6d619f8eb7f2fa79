"""The engine: request lifecycle, step planning, the model loop."""

from aiollm.engine.engine import Engine
from aiollm.engine.outputs import CompletionOutput, Delta, Logprob, RequestOutput
from aiollm.engine.request import TokenLogprob

__all__ = ["CompletionOutput", "Delta", "Engine", "Logprob", "RequestOutput", "TokenLogprob"]
