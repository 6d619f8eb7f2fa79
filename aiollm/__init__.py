"""aiollm: a one-process LLM inference server.

`from aiollm import Engine, SamplingParams`. Heavy submodules (torch, the model) load on
first use, so `import aiollm.kernels` or the CLI's --help stay fast.
"""

from aiollm.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "Engine", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "Engine":
        from aiollm.engine import Engine

        return Engine
    if name == "LLM":
        from aiollm.offline import LLM

        return LLM
    raise AttributeError(f"module 'aiollm' has no attribute {name!r}")
