"""vLLM's LLM(...) keywords for CUDA graphs and its performance mode, read as `aiollm serve`
reads the flags of the same names: optimization_level and compilation_config as -O and -cc
(aiollm/vllm_compilation.py), cudagraph_capture_sizes (cuda_graph_sizes),
max_cudagraph_capture_size and performance_mode as vLLM's top-level flags
(aiollm/vllm_graph_flags.py). aiollm/vllm_names.py hands them here from engine_options."""

from __future__ import annotations

from typing import Any, Callable

from aiollm import vllm_compilation, vllm_graph_flags
from aiollm.config import EngineConfig

KEYWORDS = ("optimization_level", "compilation_config", *vllm_graph_flags.KEYWORDS)


def taken(graphs: dict[str, Any], ours: dict[str, Any], named: dict[str, str],
          as_keywords: Callable[[str], str]) -> list[str]:
    """The keywords of KEYWORDS given (`graphs`, None left out) applied to aiollm's options
    `ours` (EngineConfig's fields; `named`: option -> the vLLM keyword that set it): no CUDA
    graphs where they leave vLLM with none (cuda_graph=False, which enforce_eager=True gives
    too), their largest graph as cuda_graph_max_batch, performance_mode="throughput"
    doubling max_running_requests where it is not given. Returns the lines saying what each
    does, in the CLI's terms (`as_keywords` writes them as keywords). Raises ValueError
    naming the keyword and its value where the CLI refuses the flag's, or where
    cuda_graph_max_batch is given too with another size; enforce_eager=True
    (cuda_graph=False) wins over them."""
    said = _graph_lines(graphs, ours, as_keywords)
    if (mode := graphs.get("performance_mode")) is not None:
        said.append(vllm_graph_flags.performance_mode_keyword(mode, ours, EngineConfig(),
                                                              named))
    return said


def _graph_lines(graphs: dict[str, Any], ours: dict[str, Any],
                 as_keywords: Callable[[str], str]) -> list[str]:
    level = config = None
    try:
        if "optimization_level" in graphs:
            level = vllm_compilation.parse_level(graphs["optimization_level"])
    except ValueError as e:
        raise ValueError(f"optimization_level={graphs['optimization_level']!r}: {e}") from None
    try:
        if "compilation_config" in graphs:
            config = vllm_compilation.parse_config(graphs["compilation_config"])
    except ValueError as e:
        raise ValueError(f"compilation_config={graphs['compilation_config']!r}: "
                         f"{as_keywords(str(e))}") from None
    flags = vllm_graph_flags.keyword_flags(graphs)
    config, flags = vllm_graph_flags.merged("compilation_config", config, flags)
    if level is None and config is None:
        return []
    try:
        settings = vllm_compilation.graph_settings(
            level, config, f"optimization_level={graphs.get('optimization_level')!r}",
            "compilation_config", enforce_eager=ours.get("cuda_graph") is False,
            flags=flags)
    except ValueError as e:  # the sizes disagree: a keyword's, where one is given
        lead = (flags.get(vllm_graph_flags.LARGEST) or flags.get(vllm_graph_flags.SIZES)
                or (None, f"compilation_config={graphs.get('compilation_config')!r}"))[1]
        raise ValueError(f"{lead}: {e}") from None
    if settings.eager:
        ours["cuda_graph"] = False
    if settings.max_batch is not None:
        given = ours.get("cuda_graph_max_batch")
        if given is not None and given != settings.max_batch:
            raise ValueError(f"cuda_graph_max_batch={given!r} and {settings.max_batch_from}'s "
                             f"largest CUDA graph, {settings.max_batch}, disagree: give one")
        ours["cuda_graph_max_batch"] = settings.max_batch
    return list(settings.said)
