"""vLLM's -O (--optimization-level) and -cc (--compilation-config) read as aiollm's CUDA-graph
settings, so that a vLLM launch line with `-O3` starts (both flags were refused, any value).

What they set in vLLM (vllm/config/vllm.py, vllm/config/compilation.py): the optimization
level, 0 to 3 (default 2), picks defaults for torch.compile (the compilation `mode`: none at
-O0, vLLM's own Inductor backend, VLLM_COMPILE = 3, above it) and for CUDA graphs
(`cudagraph_mode`: NONE at -O0, PIECEWISE at -O1, FULL_AND_PIECEWISE at -O2 and -O3, whole
graphs for decode steps and graph pieces between attention calls for the others); a
compilation config's keys set either explicitly. aiollm compiles nothing with torch.compile,
and its CUDA graphs are -O2's kind: decode steps replayed whole (engine/cuda_graph.py),
prompt steps as graph segments between eager attention calls (engine/prefill_graphs.py).
So:

- what leaves vLLM with no CUDA graphs (-O0; cudagraph_mode NONE; a piecewise graph mode
  under a compilation mode other than 3, which vLLM turns into NONE; use_cudagraph false,
  its older key; an empty cudagraph_capture_sizes or max_cudagraph_capture_size 0) runs
  every step eagerly, as --enforce-eager does;
- the largest graph (max_cudagraph_capture_size, its older name max_capture_size, or the
  largest of cudagraph_capture_sizes; both given, they must agree, as vLLM's VllmConfig
  requires) is --cuda-graph-max-batch; aiollm picks the sizes below it itself
  (cuda_graph.batch_buckets); --enforce-eager wins over all of it, as in vLLM;
- the rest (-O1 to -O3, compilation modes, the other graph modes, torch.compile's and
  Inductor's keys) is taken, with a log line saying it has no effect and why: none of it
  changes what is computed, only how vLLM would launch it;
- what vLLM refuses (a level other than 0-3, a key its CompilationConfig lacks, a value of
  the wrong kind, JSON that does not parse) is refused, naming the flag and the value.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from aiollm import vllm_graph_flags, vllm_value_checks

LEVELS = (0, 1, 2, 3)
_MODES = {"NONE": 0, "STOCK_TORCH_COMPILE": 1, "DYNAMO_TRACE_ONCE": 2, "VLLM_COMPILE": 3}
_GRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
_LEVEL_GRAPHS = {0: "NONE", 1: "PIECEWISE", 2: "FULL_AND_PIECEWISE", 3: "FULL_AND_PIECEWISE"}
_PIECEWISE = ("PIECEWISE", "FULL_AND_PIECEWISE")  # need vLLM's compilation (mode 3)
_OURS = "FULL_AND_PIECEWISE"

# CompilationConfig's keys that only torch.compile and Inductor read (and vLLM's older ones:
# use_inductor), each with the kind of value vLLM takes
_COMPILE_ONLY: dict[str, type | tuple[type, ...]] = {
    "backend": str, "custom_ops": list, "splitting_ops": list, "compile_mm_encoder": bool,
    "compile_sizes": list, "compile_ranges_split_points": list,
    "inductor_compile_config": dict, "inductor_passes": dict, "pass_config": dict,
    "dynamic_shapes_config": dict, "use_inductor_graph_partition": bool,
    "use_inductor": bool, "debug_dump_path": str, "cache_dir": str,
    "compile_cache_save_format": str, "cudagraph_num_of_warmups": int,
    "cudagraph_copy_inputs": bool, "cudagraph_specialize_lora": bool,
}
_GRAPH_KEYS = ("level", "mode", "cudagraph_mode", "cudagraph_capture_sizes",
               "max_cudagraph_capture_size", "max_capture_size", "use_cudagraph",
               "full_cuda_graph")
KEYS = (*_GRAPH_KEYS, *_COMPILE_ONLY)

EAGER = "every step runs eagerly, with no CUDA graphs, as with --enforce-eager"
_NOT_COMPILED = "nothing is compiled with torch.compile"
_OUR_GRAPHS = ("aiollm's CUDA graphs are -O2's kind (vLLM's FULL_AND_PIECEWISE): decode "
               "steps replayed whole, prompt steps as graph segments between eager "
               "attention calls")


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """What -O and --compilation-config ask of aiollm. eager: no CUDA graphs (as
    --enforce-eager); max_batch: the largest decode batch captured (--cuda-graph-max-batch),
    None: aiollm's own; said: one line per setting given, what it does in aiollm;
    max_batch_from: the flag that gave max_batch (-cc, or a size flag of its own)."""

    eager: bool
    max_batch: int | None
    said: tuple[str, ...]
    max_batch_from: str = "-cc"


def _whole(value: Any) -> int | None:
    """`value` as a whole number (an int, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _lax_whole(value: Any) -> Any:
    """A size as vLLM's config (pydantic, lax) reads it: a string of digits (what
    `-cc.cudagraph_capture_sizes+ 1,2,4` gives) as its int; anything else as it is."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def parse_level(value: Any) -> int:
    """An optimization level (vLLM's -O0..-O3: an int, or its digit as typed) as an int.
    Raises ValueError saying what it takes."""
    level = _whole(value)
    if level is None and isinstance(value, str) and value.strip().isdigit():
        level = int(value)
    if level not in LEVELS:
        raise ValueError(f"takes an optimization level 0, 1, 2 or 3 (vLLM's -O0 to -O3); "
                         f"got {value!r}")
    return level


def parse_config(value: Any) -> dict[str, Any]:
    """A compilation config (vLLM's --compilation-config: a JSON object, or as LLM(...)'s
    keyword a dict; a level 0-3 alone, as vLLM's older releases took it, is {"level": N})
    as a dict of its keys, each checked as vLLM checks it. Raises ValueError naming the
    key and its value, or saying the JSON does not parse."""
    if (isinstance(value, str) and value.strip().isdigit()) or _whole(value) is not None:
        return {"level": parse_level(value)}
    value = vllm_value_checks.config_keys(value, "CompilationConfig", KEYS,
                                          "'{\"cudagraph_mode\": \"NONE\"}'")
    config = {k: v for k, v in value.items() if v is not None}  # None: vLLM's "not set"
    for key in ("max_cudagraph_capture_size", "max_capture_size"):
        if key in config:
            config[key] = _lax_whole(config[key])
    if isinstance(config.get("cudagraph_capture_sizes"), list):
        config["cudagraph_capture_sizes"] = [_lax_whole(s) for s in
                                             config["cudagraph_capture_sizes"]]
    for key, item in config.items():
        if (why := _key_misfit(key, item)) is not None:
            raise ValueError(f"{key} {why}; got {item!r}")
    return config


def _key_misfit(key: str, item: Any) -> str | None:
    """Why `item` is no value of compilation config `key`, or None."""
    if key == "level":
        return None if _whole(item) in LEVELS else "takes 0, 1, 2 or 3"
    if key == "mode":
        if _whole(item) in LEVELS or (isinstance(item, str) and item.upper() in _MODES):
            return None
        return f"takes 0, 1, 2, 3 or one of {', '.join(_MODES)}"
    if key == "cudagraph_mode":
        if isinstance(item, str) and item.upper() in _GRAPH_MODES:
            return None
        return f"takes one of {', '.join(_GRAPH_MODES)}"
    if key == "cudagraph_capture_sizes":
        if isinstance(item, list) and all(vllm_graph_flags.whole(s, 1) for s in item):
            return None
        return "takes a list of batch sizes, whole numbers >= 1"
    if key in ("max_cudagraph_capture_size", "max_capture_size", "cudagraph_num_of_warmups"):
        return None if vllm_graph_flags.whole(item, 0) else "takes a whole number >= 0"
    if key == "compile_cache_save_format":
        return None if item in ("binary", "unpacked") else "takes \"binary\" or \"unpacked\""
    kind = _COMPILE_ONLY.get(key, bool)
    if kind is bool:
        return None if isinstance(item, bool) else "takes true or false"
    if isinstance(item, kind) and not isinstance(item, bool):
        return None
    return {str: "takes a string", list: "takes a list", dict: "takes a JSON object"}[kind]


def graph_settings(level: int | None, config: dict[str, Any] | None, level_shown: str = "-O",
                   config_shown: str = "-cc", enforce_eager: bool = False,
                   flags: dict[str, tuple[str, str]] | None = None) -> GraphSettings:
    """What optimization `level` (parse_level's; None: not given, vLLM's 2) and compilation
    `config` (parse_config's; None: not given) ask of aiollm, as vLLM resolves them: the
    level's defaults for what the config leaves out; `enforce_eager` (--enforce-eager or
    --no-cuda-graph given) over all of them, as vLLM's enforce_eager sets no graphs. Each
    line in `said` names its setting as `level_shown` (the level as given: "-O3") or
    `config_shown` and the key ("-cc.mode=3"), or, for a key given by a flag of its own
    (vllm_graph_flags.py), as `flags` has it: key -> (flag, flag and value as typed).
    Raises ValueError, as vLLM's VllmConfig does, where graphs are captured and
    max_cudagraph_capture_size is not the largest of cudagraph_capture_sizes."""
    config = config or {}
    flags = flags or {}

    def name(key: str) -> str:
        return flags[key][0] if key in flags else key

    lvl = 2 if level is None else level
    mode = config.get("mode", config.get("level"))  # level: its older name; mode wins
    mode = _MODES[mode.upper()] if isinstance(mode, str) else mode
    if mode is None:
        mode = 3 if lvl > 0 else 0
    graphs = config.get("cudagraph_mode")
    if graphs is None and config.get("use_cudagraph") is False:
        graphs = "NONE"
    graphs = _LEVEL_GRAPHS[lvl] if graphs is None else graphs.upper()
    dropped = graphs in _PIECEWISE and mode != 3  # vLLM: piecewise graphs need its compiler
    no_graphs = enforce_eager or graphs == "NONE" or dropped
    sizes = config.get("cudagraph_capture_sizes")
    largest = config.get("max_cudagraph_capture_size", config.get("max_capture_size"))
    if sizes is not None:
        if largest is not None and largest != max(sizes, default=0) and not no_graphs:
            key = ("max_cudagraph_capture_size" if "max_cudagraph_capture_size" in config
                   else "max_capture_size")
            raise ValueError(f"{name(key)} {largest} and the largest of "
                             f"{name('cudagraph_capture_sizes')}, {max(sizes, default=0)}, "
                             "disagree (vLLM refuses them too): give one of them")
        largest = max(sizes, default=0)
    cap = largest
    eager = no_graphs or cap == 0
    from_key = next((k for k in ("max_cudagraph_capture_size", "max_capture_size")
                     if k in config), "cudagraph_capture_sizes")
    from_flag = flags[from_key][0] if from_key in flags else config_shown

    said = []
    if level is not None:
        if eager and lvl == 0 and "cudagraph_mode" not in config:
            said.append(f"{level_shown}: {EAGER} (vLLM's -O0: no torch.compile, no CUDA "
                        "graphs)")
        else:
            said.append(f"{level_shown} has no effect: {_NOT_COMPILED}; {_OUR_GRAPHS}")
    for key, item in config.items():
        shown = (flags[key][1] if key in flags
                 else f"{config_shown}.{key}={json.dumps(item)}")
        if key == "level" and "mode" in config:
            said.append(f"{shown} has no effect: mode, given too, is taken over level (its "
                        "older name)")
        elif key in ("mode", "level") and dropped and "cudagraph_mode" not in config:
            said.append(f"{shown}: {EAGER} (vLLM's piecewise CUDA graphs need its "
                        "compilation, mode 3)")
        elif key in ("mode", "level") or key in _COMPILE_ONLY:
            said.append(f"{shown} has no effect: {_NOT_COMPILED}")
        elif key == "cudagraph_mode" and eager and (graphs == "NONE" or dropped):
            said.append(f"{shown}: {EAGER}" + (" (vLLM runs piecewise CUDA graphs only "
                                               "with its compilation, mode 3)"
                                               if dropped else ""))
        elif key in ("cudagraph_mode", "full_cuda_graph", "use_cudagraph") and not (
                key == "use_cudagraph" and eager):
            ours = graphs == _OURS and key == "cudagraph_mode"
            said.append(f"{shown} has no effect: {_OUR_GRAPHS}"
                        + ("" if ours else "; what is computed is the same"))
        elif key == "use_cudagraph":
            said.append(f"{shown}: {EAGER}")
        elif cap == 0:
            said.append(f"{shown}: no CUDA graph is captured, so {EAGER}")
        elif eager:
            said.append(f"{shown} has no effect: no CUDA graph is captured (vLLM captures "
                        "none with these settings)")
        else:
            said.append(f"{shown}: decode batches of up to {cap} requests replay CUDA graphs, "
                        f"as --cuda-graph-max-batch {cap} (aiollm picks the sizes below it)")
    return GraphSettings(eager=eager, max_batch=None if eager else cap, said=tuple(said),
                         max_batch_from=from_flag)


class _GraphFlag(argparse.Action):
    """-O/--optimization-level or -cc/--compilation-config: its value checked (a usage error
    naming the flag and the value where vLLM would refuse it) and kept in the namespace's
    `vllm_graphs` ({"level": (shown, level), "config": (flag, dict)}) for serve's checks.
    -O's value is a level, or, as vLLM's releases before the optimization levels took it
    (-O was --compilation-config's short name), a JSON object of compilation keys; two
    compilation configs are one, the later's keys over the earlier's."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        graphs = dict(getattr(namespace, "vllm_graphs", {}))
        as_level = "-O" in self.option_strings and not values.lstrip().startswith("{")
        try:
            if as_level:
                shown = (f"-O{values}" if option_string == "-O"  # as vLLM's lines write it
                         else f"{option_string} {values}")
                graphs["level"] = (shown, parse_level(values))
            else:
                earlier = graphs.get("config", (None, {}))[1]
                graphs["config"] = (option_string, {**earlier, **parse_config(values)})
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        namespace.vllm_graphs = graphs


def add_to(group: argparse._ArgumentGroup) -> None:
    """Add -O/--optimization-level and -cc/--compilation-config to `group` (vLLM's flags)."""
    group.add_argument("-O", "--optimization-level", action=_GraphFlag, metavar="LEVEL",
                       help="vLLM's 0 to 3: -O0 runs every step eagerly, as --enforce-eager; "
                            "-O1 to -O3 change nothing (nothing is compiled with "
                            "torch.compile; aiollm's CUDA graphs are -O2's kind)")
    group.add_argument("-cc", "--compilation-config", action=_GraphFlag, metavar="JSON",
                       help="vLLM's CompilationConfig: what leaves vLLM with no CUDA graphs "
                            "(cudagraph_mode NONE...) runs eagerly, as --enforce-eager; "
                            "max_cudagraph_capture_size (or the largest of "
                            "cudagraph_capture_sizes) is --cuda-graph-max-batch; other keys "
                            "change nothing")


def applied(namespace: argparse.Namespace) -> GraphSettings | None:
    """The GraphSettings of the -O, --compilation-config and vLLM's size flags
    (vllm_graph_flags.py) the namespace holds (under its --enforce-eager); None where none
    was given. Raises graph_settings' ValueError, or vllm_graph_flags.merged's; one about
    a size given by a flag begins "argument FLAG: "."""
    graphs = getattr(namespace, "vllm_graphs", None)
    if not graphs:
        return None
    level_shown, level = graphs.get("level", ("-O", None))
    config_flag, config = graphs.get("config", ("-cc", None))
    config, flags = vllm_graph_flags.merged(config_flag, config, graphs.get("flags", {}))
    try:
        return graph_settings(level, config, level_shown, config_flag,
                              enforce_eager=not namespace.cuda_graph, flags=flags)
    except ValueError as e:  # the sizes disagree: one of them, at least, a flag's
        if not flags:
            raise
        flag = (flags.get(vllm_graph_flags.LARGEST) or flags[vllm_graph_flags.SIZES])[0]
        raise ValueError(f"argument {flag}: {e}") from None
