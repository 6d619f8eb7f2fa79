"""vLLM's top-level CUDA-graph flags, --cudagraph-capture-sizes (its older spelling,
--cuda-graph-sizes) and --max-cudagraph-capture-size, and its --performance-mode, on
`aiollm serve`: each stopped a vLLM launch line as an unrecognized argument.

What they are in vLLM (vllm/engine/arg_utils.py, vllm/config/vllm.py):

- the two size flags set the compilation config's keys of the same names (its EngineArgs
  refuses a flag beside -cc's key of the same name, as mutually exclusive): they are read
  as -cc's keys are (aiollm/vllm_compilation.py), the largest graph as
  --cuda-graph-max-batch. They take plain integers, as vLLM's (no 1k); the largest
  size, also None (vLLM's optional int: not given);
- --performance-mode balanced | interactivity | throughput: balanced is the default;
  interactivity captures a decode graph at every batch size up to 32 (finer graphs, less
  padding) and picks latency-oriented kernels: aiollm picks its graph sizes itself
  (engine/cuda_graph.batch_buckets) and has one set of kernels, so it changes nothing;
  throughput doubles vLLM's default max_num_seqs and max_num_batched_tokens where they are
  not given: aiollm doubles its default --max-num-seqs alike, and keeps its step budget
  (--max-num-batched-tokens 2048: 4096 measured no more output tokens/s on the 8B
  LightLLM workload and a worse inter-token p99, bench/README.md).

vLLM's LLM(...) takes the same as keywords (KEYWORDS; aiollm/vllm_graph_keywords.py reads them
with keyword_flags and performance_mode_keyword).
"""

from __future__ import annotations

import argparse
from typing import Any

MODES = ("balanced", "interactivity", "throughput")
SIZES = "cudagraph_capture_sizes"
LARGEST = "max_cudagraph_capture_size"
# vLLM's LLM(...) keywords of these flags (EngineArgs' fields; cuda_graph_sizes its older)
KEYWORDS = ("cuda_graph_sizes", SIZES, LARGEST, "performance_mode")


class _SizeFlag(argparse.Action):
    """--cudagraph-capture-sizes N... (or --cuda-graph-sizes) or --max-cudagraph-capture-size
    N: its values checked (a usage error naming the flag and the value vLLM's int refuses)
    and kept in the namespace's `vllm_graphs["flags"]` as {key: (flag, shown, value)} for
    vllm_compilation.applied; the two spellings of the sizes together are refused."""

    def __init__(self, option_strings: list[str], dest: str, key: str, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        graphs = dict(getattr(namespace, "vllm_graphs", {}))
        flags = dict(graphs.get("flags", {}))
        earlier = flags.get(self.key, (option_string,))[0]
        if earlier != option_string:
            raise argparse.ArgumentError(self, f"{earlier} is given too: they are one "
                                               "setting (vLLM refuses both), give one")
        if self.key == LARGEST and values.strip() in ("None", ""):  # vLLM's optional int
            flags.pop(self.key, None)
        else:
            try:  # vLLM's int() of each word, then the size's own check
                if self.key == SIZES:
                    value = checked_size(SIZES, [_as_int(v) for v in values])
                else:
                    value = checked_size(LARGEST, _as_int(values))
            except ValueError as e:
                raise argparse.ArgumentError(
                    self, str(e) + _model_hint(self.key, values)) from None
            shown = " ".join(values) if self.key == SIZES else str(value)
            flags[self.key] = (option_string, f"{option_string} {shown}", value)
        graphs["flags"] = flags
        namespace.vllm_graphs = graphs


def _as_int(text: str) -> int | str:
    """A word as vLLM's int() reads it, or the word itself (for checked_size to refuse)."""
    try:
        return int(text)
    except ValueError:
        return text


def _model_hint(key: str, values: list[str] | str) -> str:
    """model_after_sizes' note for the sizes' words (none for the largest size's)."""
    return "" if key != SIZES else model_after_sizes(values, "--model")


def model_after_sizes(values: list[str], model_flag: str) -> str:
    """Where a list of batch sizes' last word, after sizes, is no number: a note that it
    was read as a size, being before no flag (a model written after the sizes, as
    argparse's nargs="+" takes every word up to the next flag, vLLM's and SGLang's too),
    and where the model goes (first, or as `model_flag`); else ""."""
    if len(values) < 2 or isinstance(_as_int(values[-1]), int):
        return ""
    if not all(isinstance(_as_int(v), int) for v in values[:-1]):
        return ""
    return (" (the sizes take every word up to the next flag: give the model first, "
            f"`aiollm serve MODEL ...`, or as {model_flag} MODEL)")


def whole(item: Any, least: int) -> bool:
    """Whether `item` is a whole number (an int, not a bool) of at least `least`: a batch
    size (least 1) or the largest one (least 0), here and in -cc's keys (vllm_compilation)."""
    return isinstance(item, int) and not isinstance(item, bool) and item >= least


def checked_size(key: str, value: Any) -> Any:
    """`value` of size `key` (SIZES: a list of batch sizes, whole numbers >= 1; LARGEST: a
    whole number >= 0) as it is; ValueError saying what it takes and the value (the first
    bad item of a list) otherwise."""
    if key == SIZES:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"takes batch sizes, whole numbers >= 1; got {value!r}")
        for item in value:
            if not whole(item, 1):
                raise ValueError(f"takes batch sizes, whole numbers >= 1; got {item!r}")
        return list(value)
    if not whole(value, 0):
        raise ValueError(f"takes a whole number >= 0; got {value!r}")
    return value


def keyword_flags(options: dict[str, Any]) -> dict[str, tuple[str, str, Any]]:
    """LLM(...)'s keywords of the size flags given in `options` (None: not given), as
    _SizeFlag keeps the flags: {key: (keyword, "keyword=value", value)}. Raises ValueError
    led by the keyword and its value where the value is no size, or both spellings of the
    sizes are given."""
    flags: dict[str, tuple[str, str, Any]] = {}
    for keyword in KEYWORDS[:-1]:
        value = options.get(keyword)
        if value is None:
            continue
        key = LARGEST if keyword == LARGEST else SIZES
        shown = f"{keyword}={value!r}"
        if key in flags:
            raise ValueError(f"{shown}: {flags[key][0]} is given too: they are one setting "
                             "(vLLM refuses both), give one")
        try:
            flags[key] = (keyword, shown, checked_size(key, value))
        except ValueError as e:
            raise ValueError(f"{shown}: {e}") from None
    return flags


def add_to(group: argparse._ArgumentGroup) -> None:
    """Add --cudagraph-capture-sizes (--cuda-graph-sizes), --max-cudagraph-capture-size and
    --performance-mode to `group` (vLLM's flags)."""
    group.add_argument("--cudagraph-capture-sizes", "--cuda-graph-sizes", action=_SizeFlag,
                       key=SIZES, nargs="+", metavar="N",
                       help="vLLM's decode batch sizes captured as CUDA graphs: the largest "
                            "is --cuda-graph-max-batch, aiollm picks the sizes below it")
    group.add_argument("--max-cudagraph-capture-size", action=_SizeFlag, key=LARGEST,
                       metavar="N",
                       help="vLLM's largest decode batch captured as a CUDA graph: "
                            "--cuda-graph-max-batch (0: no graphs, as --enforce-eager)")
    group.add_argument("--performance-mode", choices=MODES, default=argparse.SUPPRESS,
                       help="vLLM's: throughput doubles --max-num-seqs where it is not "
                            "given (512), as vLLM doubles its own; balanced, vLLM's usual "
                            "mode, and interactivity (vLLM's finer decode graphs) change "
                            "nothing")


def merged(config_flag: str, config: dict[str, Any] | None,
           flags: dict[str, tuple[str, str, Any]]) -> tuple[dict[str, Any] | None,
                                                          dict[str, tuple[str, str]]]:
    """-cc's `config` (None: not given; `config_flag` as typed) with the size flags'
    keys added, and for each of those keys its (flag, shown) as typed. Raises ValueError,
    "argument FLAG: ..." (a keyword's: "keyword=value: ..."), where -cc gives the same key
    (vLLM's EngineArgs refuses them as mutually exclusive; -cc's older max_capture_size is
    the largest size too)."""
    if not flags:
        return config, {}
    config = dict(config or {})
    named = {}
    for key, (flag, shown, value) in flags.items():
        same = [k for k in config if k == key or (key == LARGEST and k == "max_capture_size")]
        if same:
            lead = f"argument {flag}" if flag.startswith("-") else shown
            raise ValueError(f"{lead}: {config_flag}'s {same[0]} is given too (vLLM refuses "
                             "both, as mutually exclusive): give one")
        config[key] = value
        named[key] = (flag, shown)
    return config, named


def performance_mode(args: argparse.Namespace, options: dict[str, Any]) -> str | None:
    """--performance-mode given (None: not given) applied to EngineConfig's `options`:
    throughput doubles max_running_requests where --max-num-seqs is not given. Returns the
    log line saying what it did, or that it changes nothing and why."""
    mode = getattr(args, "performance_mode", None)
    if mode is None:
        return None
    return _mode_applied(mode, f"--performance-mode {mode}", options,
                         getattr(args, "flags_typed", {}))


def performance_mode_keyword(mode: Any, options: dict[str, Any], defaults: Any,
                             named: dict[str, str]) -> str:
    """LLM(...)'s performance_mode, given, applied to its engine `options` as
    the flag is (the default max_running_requests from `defaults`, EngineConfig(), where
    options lack it; `named`: option -> the vLLM keyword that set it). Returns the log line,
    as performance_mode; ValueError naming the keyword and its value for a mode not of
    MODES."""
    if mode not in MODES:
        raise ValueError(f"performance_mode={mode!r}: takes one of {', '.join(MODES)}")
    typed = {k: named.get(k, k) for k in ("max_running_requests", "max_prefill_tokens")
             if options.get(k) is not None}
    work = {k: getattr(defaults, k) if options.get(k) is None else options[k]
            for k in ("max_running_requests", "max_prefill_tokens")}
    said = _mode_applied(mode, f"performance_mode={mode!r}", work, typed)
    if "max_running_requests" not in typed and mode == "throughput":
        options["max_running_requests"] = work["max_running_requests"]
    return said


def _mode_applied(mode: str, given: str, options: dict[str, Any],
                  typed: dict[str, str]) -> str:
    """`mode` applied to `options` (max_running_requests doubled for throughput, unless
    `typed`, the options given, hold it); the line saying so, led by `given`."""
    if mode == "balanced":
        return f"{given} has no effect: it is vLLM's default"
    if mode == "interactivity":
        return (f"{given} has no effect: aiollm picks its decode graph sizes itself (up to "
                "--cuda-graph-max-batch), not vLLM's every size to 32, and has one set of "
                "kernels; what is computed is the same")
    if "max_running_requests" in typed:
        return f"{given} has no effect: {typed['max_running_requests']} is given"
    options["max_running_requests"] *= 2
    said = (f"{given}: --max-num-seqs {options['max_running_requests']}, twice aiollm's "
            "default, as vLLM doubles its own in this mode")
    if "max_prefill_tokens" in typed:
        return said
    return (f"{said} (--max-num-batched-tokens stays {options['max_prefill_tokens']}: twice "
            "it measured no more output tokens/s and a worse inter-token p99, "
            "bench/README.md)")
