"""SGLang's `python -m sglang.launch_server` flags on `aiollm serve`, so that a launch line
copied from SGLang runs as it asked or stops at once saying why (argparse's "unrecognized
arguments" said neither). Built as aiollm/vllm_flags.py is, in tables:

- ALIASES: SGLang's name of an aiollm option of the same meaning and unit (--model-path is
  MODEL, --context-length --max-model-len...; not --max-total-tokens, in SGLang a bound of
  the KV pool's tokens where --kv-tokens is its size), hidden from --help, which names them in the
  group's description; a value given under two of its spellings with two values is a usage
  error naming both (flag_alias.Alias). SGLang's flags spelt as aiollm's (--max-running-
  requests, --max-prefill-tokens, --cuda-graph-max-bs, --dtype, --kv-cache-dtype, --host,
  --port, --api-key, --served-model-name, --chat-template, --tool-call-parser,
  --reasoning-parser, --grammar-backend, --dist-init-addr, --nnodes, --node-rank,
  --log-level) are aiollm's own,
  and its values of a choice are aiollm's (`tool_call_parser_name`, `reasoning_parser_name`,
  `kv_cache_dtype_name`; `grammar_backend_name`: xgrammar, or none, structured output off);
- --max-total-tokens and --mem-fraction-static: SGLang's bound and sizing of the KV pool
  (EngineConfig.max_total_tokens, mem_fraction_static);
- --cuda-graph-bs N...: its largest size is --cuda-graph-max-batch, as it becomes SGLang's
  cuda_graph_max_bs (GraphBatchSizes); --max-queued-requests: the waiting requests past
  which SGLang answers 503 ("The request queue is full"), --max-waiting-requests here
  (which does not count those the running batch has free places for);
- NO_EFFECT, NO_EFFECT_VALUES: flags asking for what aiollm always does, or choosing among
  implementations of what aiollm does one way, changing no output; accepted and logged;
- REFUSED: flags asking for what aiollm cannot do: a usage error (exit 2) naming the flag
  and what aiollm offers instead; a value asking for aiollm's own behaviour (--dp-size 1)
  is taken.

Flags LightLLM spells the same way once dashed (--tp, --chunked_prefill_size, --nccl_port,
--dp, --enable_multimodal) are defined here once and mean the same in both.
"""

from __future__ import annotations

import argparse

from aiollm import moe_flags, vllm_flags
from aiollm.cli import token_counts
from aiollm.cli.flag_alias import Alias, add_aliases
from aiollm.config import GRAMMAR_BACKENDS
from aiollm.flag_kinds import Ignored, Refusal
from aiollm.vllm_graph_flags import model_after_sizes

# the flag -> (EngineConfig's option it sets, aiollm's flag of it, for --help), with the
# type its value is read as
ALIASES = {
    "--tp-size": ("tensor_parallel_size", "-tp", int),
    "--tp": ("tensor_parallel_size", "-tp", int),  # SGLang's docs' spelling; LightLLM's too
    "--tokenizer-path": ("tokenizer", "--tokenizer", str),
    # a count as SGLang's human_readable_int reads it (32k, 128K), as aiollm's own
    "--context-length": ("max_model_len", "--max-model-len", token_counts.token_count),
    "--random-seed": ("seed", "--seed", int),
}
# switches: the flag -> (option, the value it sets, aiollm's flag)
SWITCHES = {
    "--disable-radix-cache": ("prefix_cache", False, "--no-prefix-cache"),
    "--disable-cuda-graph": ("cuda_graph", False, "--enforce-eager"),
    # SGLang's warm-up is a request sent before serving, so that kernels compile then:
    # aiollm's launches its step shapes for the same reason
    "--skip-server-warmup": ("warm_up", False, "--no-warm-up"),
}
GRAPH_SIZES = "--cuda-graph-bs"


class GraphBatchSizes(Alias):
    """SGLang's --cuda-graph-bs N...: the decode batch sizes it captures as CUDA graphs,
    whose largest becomes its cuda_graph_max_bs (SGLang's ServerArgs), as it becomes
    --cuda-graph-max-batch here; aiollm picks the sizes below it itself
    (engine/cuda_graph.batch_buckets). A usage error naming the flag for a size that is no
    whole number >= 1 (and where MODEL is not given yet and the last word is no number,
    that MODEL typed after the sizes was read as one). Beside SGLang's --cuda-graph-max-bs,
    before it or after, the list's largest size is the bound, as SGLang's ServerArgs takes
    them (the start logs which value it uses: graph_sizes_said); beside aiollm's own
    --cuda-graph-max-batch, Alias's rule (two values: give one)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            sizes = [int(v) for v in values]
        except ValueError:
            sizes = [0]
        if min(sizes) < 1:
            hint = ("" if getattr(namespace, "model", None) is not None
                    else model_after_sizes(values, "--model-path"))
            raise argparse.ArgumentError(self, "batch sizes must be whole numbers >= 1, "
                                               f"got {' '.join(values)}{hint}")
        namespace.graph_sizes_typed = " ".join(values)
        super().__call__(parser, namespace, max(sizes), option_string)


def graph_sizes_said(args: argparse.Namespace, cuda_graph: bool) -> str | None:
    """The start's line for --cuda-graph-bs as given (None: not given, or another spelling
    of the bound given after it), naming what it does here; `cuda_graph`: whether the
    config runs CUDA graphs at all (not with --enforce-eager or SGLang's
    --disable-cuda-graph)."""
    if getattr(args, "flags_typed", {}).get("cuda_graph_max_batch") != GRAPH_SIZES:
        return None
    dropped = getattr(args, "values_dropped", {}).get("cuda_graph_max_batch")
    unused = "" if dropped is None else (f"; {' '.join(dropped)} is not used: as in SGLang, "
                                         "the list's largest size is the bound")
    if not cuda_graph:
        return (f"{GRAPH_SIZES} {args.graph_sizes_typed} has no effect: CUDA graphs are "
                f"off{unused}")
    return (f"{GRAPH_SIZES} {args.graph_sizes_typed}: decode batches of up to "
            f"{args.cuda_graph_max_batch} requests replay CUDA graphs (its largest size, as "
            f"--cuda-graph-max-batch), captured at the sizes aiollm picks below it{unused}")


def chunk_size(value: str) -> int:
    """SGLang's --chunked-prefill-size (LightLLM's --chunked_prefill_size): the tokens of
    one step (token_counts' forms); its -1, which turns chunked prefill off, is refused
    (argparse.ArgumentTypeError): aiollm always prefills in chunks."""
    if value.strip() == "-1":
        raise argparse.ArgumentTypeError(
            "-1 turns chunked prefill off, and prompts are always prefilled in chunks of a "
            "step's token budget: to prefill a prompt in one step, give a budget of "
            "--max-model-len tokens")
    return token_counts.token_count(value)


_SPECULATIVE = "speculative decoding is not supported: leave the flag out"

REFUSED = (
    Refusal(("--dp-size", "--dp"), vllm_flags.NO_DATA_PARALLEL, same=("1",)),
    Refusal(("--enable-dp-attention",),
            "there is no data-parallel attention: --tensor-parallel-size splits attention "
            "heads over the ranks; leave the flag out", takes_value=False),
    Refusal(("--pp-size",), vllm_flags.NO_PIPELINE_PARALLEL, same=("1",)),
    # expert parallelism and what goes with it (aiollm/moe_flags.py)
    *moe_flags.SGLANG_REFUSED,
    *(Refusal((flag,), _SPECULATIVE)
      for flag in ("--speculative-algorithm", "--speculative-draft-model-path",
                   "--speculative-num-steps", "--speculative-eagle-topk",
                   "--speculative-num-draft-tokens")),
    Refusal(("--schedule-policy",),
            "requests are admitted first come, first served (fcfs), with no reordering by "
            "prefix match or priority; leave the flag out", same=("fcfs",)),
    Refusal(("--schedule-conservativeness",),
            "admission is chosen by --scheduler (aggressive, conservative or past_future), "
            "not scaled by a factor", same=("1", "1.0")),
    Refusal(("--is-embedding",),
            f"{vllm_flags.GENERATIVE_ONLY}; leave the flag out to generate text",
            takes_value=False),
    Refusal(("--enable-multimodal",),
            "aiollm's models take text alone: no images, audio or video; leave the flag out",
            takes_value=False),
    Refusal(("--lora-paths",), vllm_flags.NO_LORA),
    Refusal(("--json-model-override-args",),
            "the model's config.json is read as it is: serve a copy of the model directory "
            "with the values changed in its config.json", same=("{}",)),
    Refusal(("--disable-overlap-schedule",),
            "the loop always plans step N+1 while step N runs on the GPU, and nothing turns "
            "that off (outputs are the same either way); leave the flag out",
            takes_value=False),
    Refusal(("--page-size",),
            "the KV cache is token-level, one slot per token (SGLang's page size 1), with no "
            "pages to size; leave the flag out", same=("1",)),
    Refusal(("--enable-hierarchical-cache",),
            "the prefix cache keeps its KV in the GPU's pool alone, with no tier in host "
            "memory; leave the flag out", takes_value=False),
    Refusal(("--base-gpu-id",),
            "ranks take the GPUs this process sees from the first on: choose them with "
            "CUDA_VISIBLE_DEVICES (or, on one GPU, --device cuda:N)", same=("0",)),
    Refusal(("--allow-auto-truncate",),
            "a request longer than --max-model-len is refused (400), never cut short: "
            "truncate the prompt in the client, or raise --max-model-len",
            takes_value=False),
)

# switches that ask for what aiollm always does -> why they change nothing (--help)
NO_EFFECT = {
    "--enable-metrics": "/metrics is always served (Prometheus text)",
    # set by SGLang's own --config example; a log line changes no output, as
    # --uvicorn-log-level's does not
    "--log-requests": "request contents are never logged; --log-level debug logs each HTTP "
                      "request's method, path, status and id (X-Request-Id)",
    "--enable-mixed-chunk": "prompt chunks always share a step with the decodes (within "
                            "--mixed-prefill-tokens)",
    "--enable-cache-report": "usage always carries prompt_tokens_details (cached_tokens)",
    "--enable-torch-compile": "nothing is compiled with torch.compile: decode steps replay "
                              "CUDA graphs (outputs are the same)",
    "--enable-p2p-check": "tensor parallelism all-reduces with torch.distributed (NCCL), "
                          "which checks peer access between GPUs itself",
    "--show-time-cost": "no timings of the server's stages are logged (SGLang's profiling "
                        "marks); outputs are the same",
    # SGLang's metrics of each data-parallel scheduler, not only the first's
    "--enable-metrics-for-all-schedulers": "/metrics is always served by the one engine "
                                           "loop, which schedules every request",
    # SGLang then runs a batch between its captured sizes without a graph
    "--disable-cuda-graph-padding": "a decode batch between captured sizes replays the next "
                                    "size's CUDA graph, padded (outputs are the same)",
    **moe_flags.SGLANG_NO_EFFECT,
}

# SGLang's --decode-log-interval (decode steps), LightLLM's --log_stats_interval (seconds)
STATS_EVERY_MINUTE = ("the periodic statistics (the prefix cache's hit rate) are logged once "
                      "a minute; --disable-log-stats turns them off")

# each value's type as SGLang's ServerArgs declares it; its attention, sampling and MoE
# runner backends' choices, which grow with each release, are not checked (a newer release's
# name is taken)
NO_EFFECT_VALUES = (
    Ignored(("--watchdog-timeout",),
            "no watchdog ends the server when a step outlasts this many seconds (SGLang's "
            "guard against a hung step); outputs are the same", "SECONDS", kind=float),
    Ignored(("--attention-backend",),
            "attention runs on aiollm's Triton kernels (their PyTorch references on the "
            "CPU); outputs are the same", "BACKEND"),
    Ignored(("--sampling-backend",), "tokens are sampled by aiollm's own sampler",
            "BACKEND"),
    *moe_flags.SGLANG_NO_EFFECT_VALUES,
    Ignored(("--torch-compile-max-bs",), "nothing is compiled with torch.compile", "N",
            kind=int),
    Ignored(("--nccl-port",),
            "on one node the ranks meet at a free port of 127.0.0.1 that aiollm picks; over "
            "nodes, --dist-init-addr HOST:PORT names node 0's", "PORT", kind=int),
    Ignored(("--dist-timeout",),
            "the ranks' torch.distributed groups keep aiollm's timeouts (a rank lost at "
            "start-up is noticed by its watchdog, not at a timeout)", "SECONDS", kind=int),
    Ignored(("--decode-log-interval",), STATS_EVERY_MINUTE, "N", kind=int),
    # vLLM's too (its recipes' GPT-OSS configs set 20): tokens sent N at a time, to save
    # the host's time per chunk; the text streamed is the same
    Ignored(("--stream-interval",),
            "streams send each step's tokens as they are sampled, one step at a time (the "
            "text is the same, in more chunks)", "N", kind=int),
)

# tool-call and reasoning parsers under SGLang's and LightLLM's names -> aiollm's
_TOOL_CALL_PARSERS = {"qwen25": "hermes", "qwen": "hermes"}  # <tool_call>{json}</tool_call>
# qwen3-thinking: SGLang's Qwen3Detector forced into the reasoning, its DeepSeekR1Detector's
# parse (the output starts inside <think>)
_REASONING_PARSERS = {"deepseek-r1": "deepseek_r1", "qwen3-thinking": "deepseek_r1"}
_KV_CACHE_DTYPES = {"bf16": "bfloat16"}


def grammar_backend_name(value: str) -> str:
    """--grammar-backend's value (SGLang's flag; LightLLM's --output_constraint_mode): one of
    GRAMMAR_BACKENDS, xgrammar or none (structured output off); argparse.ArgumentTypeError
    for the libraries aiollm does not have (SGLang's outlines and llguidance, LightLLM's
    outlines)."""
    if value in GRAMMAR_BACKENDS:
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not available: grammars run on xgrammar, the one grammar library "
        "aiollm has; give xgrammar, or none to turn structured output off")


def tool_call_parser_name(value: str) -> str:
    """--tool-call-parser's value under aiollm's name: vLLM's (vllm_flags), and SGLang's and
    LightLLM's qwen25 (SGLang's newer qwen), Qwen 2.5's <tool_call> JSON, which is hermes."""
    return _TOOL_CALL_PARSERS.get(value, vllm_flags.tool_call_parser_name(value))


def reasoning_parser_name(value: str) -> str:
    """--reasoning-parser's value under aiollm's name: SGLang's deepseek-r1 and
    qwen3-thinking are deepseek_r1 (the output starts inside the reasoning, in all three)."""
    return _REASONING_PARSERS.get(value, value)


def kv_cache_dtype_name(value: str) -> str:
    """--kv-cache-dtype's value under aiollm's name: SGLang's bf16 is bfloat16."""
    return _KV_CACHE_DTYPES.get(value, value)


def add_to(parser: argparse.ArgumentParser) -> None:
    """Add SGLang's flags (the tables above, --max-total-tokens and --mem-fraction-static)
    to `parser`, aiollm serve's, in a group of their own."""
    by_target: dict[str, list[str]] = {}
    for flag, (_, shown, _) in ALIASES.items():
        by_target.setdefault(shown, []).append(flag)
    aliases = "; ".join(f"{'/'.join(flags)} is {shown}" for shown, flags in by_target.items())
    switches = "; ".join(f"{flag} is {shown}" for flag, (_, _, shown) in SWITCHES.items())
    refused = ", ".join(r.names[0] for r in REFUSED)
    group = parser.add_argument_group(
        "SGLang's flags", "`python -m sglang.launch_server` flags of the same meaning are "
        f"aliases of aiollm's: --model-path is MODEL; {aliases}; --chunked-prefill-size is "
        "--max-prefill-tokens, a step's tokens (given with it, the smaller counts; -1 is "
        "refused); --cuda-graph-bs's largest size is --cuda-graph-max-batch (beside "
        "--cuda-graph-max-bs too, as in SGLang); "
        "--max-queued-requests is --max-waiting-requests (requests waiting for the running "
        f"batch, past which a request gets 503); {switches}. --max-running-requests, "
        "--max-prefill-tokens, "
        "--cuda-graph-max-bs, --dtype, --kv-cache-dtype (bf16 is bfloat16), --host, "
        "--port, --api-key, --served-model-name, --chat-template, --tool-call-parser "
        "(qwen25 and qwen are hermes), --reasoning-parser (deepseek-r1 and qwen3-thinking "
        "are deepseek_r1), --grammar-backend (xgrammar or none), "
        "--dist-init-addr, --nnodes, --node-rank and --log-level are aiollm's own. Those "
        "below bound and size the KV cache as SGLang does or change nothing. Refused, each "
        "with what to use instead (--help=NAME says it; a value asking for aiollm's own "
        f"behaviour, such as --dp-size 1, is taken): {refused}.")
    add_aliases(group, "--model-path", ALIASES, SWITCHES)
    group.add_argument("--chunked-prefill-size", dest="max_prefill_tokens", type=chunk_size,
                       action=Alias, least=True, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    # SGLang's ServerArgs takes the list's largest size over --cuda-graph-max-bs given too
    group.add_argument(GRAPH_SIZES, dest="cuda_graph_max_batch", action=GraphBatchSizes,
                       wins_over=("--cuda-graph-max-bs",), default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    group.add_argument("--max-queued-requests", dest="max_waiting_requests", type=int,
                       action=Alias, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    group.add_argument("--max-total-tokens", type=token_counts.token_count, default=None,
                       metavar="N",
                       help="SGLang's: at most N tokens in the KV cache, which holds the "
                            "smaller of N and what the memory gives (--mem-fraction-static, "
                            "or aiollm's sizing; on the CPU, its default), as SGLang bounds "
                            "its pool; --kv-tokens instead sizes it")
    group.add_argument("--mem-fraction-static", type=float, default=None, metavar="F",
                       help="SGLang's: keep this process's weights and KV cache within F x "
                            "the GPU memory free when it starts, the rest, 1 - F, for "
                            "activations and CUDA graphs (instead of --kv-memory-fraction; "
                            "--kv-tokens overrides it; no effect on the CPU)")
    vllm_flags.add_tables(group, NO_EFFECT, NO_EFFECT_VALUES, REFUSED)
