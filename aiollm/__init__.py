"""aiollm: a one-process LLM inference server.

`from aiollm import Engine, SamplingParams`. Heavy submodules (torch, the model) load on
first use, so `import aiollm.kernels` or the CLI's --help stay fast.
"""

# vLLM's top-level names too: its outputs' classes and its prompt dicts' types
__all__ = ["LLM", "Engine", "SamplingParams", "RequestOutput", "CompletionOutput",
           "TextPrompt", "TokensPrompt", "PromptType", "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        # the installed distribution's (pyproject.toml's), as vLLM reads its own, rather than
        # a copy to keep in step; read on first use: importlib.metadata costs the CLI ~10 ms
        from importlib.metadata import PackageNotFoundError, version

        try:
            globals()[name] = found = version("aiollm")
        except PackageNotFoundError:  # a source tree on sys.path, never installed
            globals()[name] = found = "unknown"
        return found
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
