"""aiollm: a one-process LLM inference server.

`from aiollm import Engine, SamplingParams`. Heavy submodules (torch, the model) load on
first use, so `import aiollm.kernels` or the CLI's --help stay fast.
"""

__version__ = "0.1.0"
# vLLM's top-level names too: its outputs' classes and its prompt dicts' types
__all__ = ["LLM", "Engine", "SamplingParams", "RequestOutput", "CompletionOutput",
           "TextPrompt", "TokensPrompt", "PromptType", "__version__"]


def __getattr__(name: str):
    # numpy's import, for SamplingParams, was most of the `aiollm` command's before its own
    # Ctrl-C handling (aiollm/cli/__init__.py)
    if name == "SamplingParams":
        from aiollm.sampling_params import SamplingParams

        return SamplingParams
    if name == "Engine":
        from aiollm.engine import Engine

        return Engine
    if name == "LLM":
        from aiollm.offline import LLM

        return LLM
    if name in ("RequestOutput", "CompletionOutput"):
        from aiollm.engine import outputs

        return getattr(outputs, name)
    if name in ("TextPrompt", "TokensPrompt", "PromptType"):
        from aiollm import inputs

        return getattr(inputs, name)
    raise AttributeError(f"module 'aiollm' has no attribute {name!r}")
