"""The engine: request lifecycle, step planning, the model loop."""

from aiollm.engine.engine import Engine
from aiollm.engine.outputs import Delta, RequestOutput
from aiollm.engine.request import TokenLogprob

__all__ = ["Delta", "Engine", "RequestOutput", "TokenLogprob"]
