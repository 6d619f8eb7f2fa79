"""LightLLM's `python -m lightllm.server.api_server` flags on `aiollm serve`, so that a
launch line copied from LightLLM (its README's, its benchmarks') runs as it asked or stops at
once saying why. LightLLM spells its flags with underscores (--model_dir), which aiollm's
parser reads as their dashed names (flag_spelling.dashed), so the tables hold those. Built
as aiollm/vllm_flags.py and sglang_flags.py are:

- ALIASES: LightLLM's name of an aiollm option of the same meaning and unit
  (--max_total_token_num is --kv-tokens, the KV cache's tokens; --max_req_total_len
  --max-model-len, a request's input + output tokens; --output_constraint_mode
  --grammar-backend, whose none turns structured output off...), hidden from --help, which names
  them in the group's description; two spellings given two values is a usage error naming
  both. Flags spelt as aiollm's (--host, --port, --nnodes, --node_rank, --disable_log_stats,
  --tool_call_parser) are aiollm's own; those spelt as SGLang's once dashed (--tp,
  --chunked_prefill_size, --nccl_port, --dp, --enable_multimodal) are sglang_flags.py's;
  vLLM's --trust-remote-code (of no effect) and --tokenizer-mode (LightLLM's fast taken)
  answer --trust_remote_code and --tokenizer_mode;
- --mem_fraction: LightLLM's sizing of the KV pool (EngineConfig.mem_fraction);
- NO_EFFECT, NO_EFFECT_VALUES: flags asking for what aiollm always does, or choosing among
  implementations of what aiollm does one way, changing no output; accepted and logged
  (--mode: its modes of attention kernels alone; a mode of an int8 or fp8 KV cache refused);
- REFUSED: flags asking for what aiollm cannot do: a usage error (exit 2) naming the flag
  and what aiollm offers instead; a value asking for aiollm's own behaviour is taken.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from aiollm import vllm_flags
from aiollm.cli import sglang_flags, token_counts
from aiollm.cli.flag_alias import Alias, add_aliases
from aiollm.config import EngineConfig
from aiollm.flag_kinds import Ignored, Refusal

# LightLLM's --data_type values -> aiollm's --dtype
_DATA_TYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16",
               "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}


def data_type(value: str) -> str:
    """LightLLM's --data_type as aiollm's dtype name: fp16, bf16 and fp32 are float16,
    bfloat16 and float32; argparse.ArgumentTypeError naming LightLLM's choices for any
    other."""
    try:
        return _DATA_TYPES[value]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(_DATA_TYPES)})") from None


def _one_name(value: str) -> list[str]:
    """LightLLM's --model_name, one name, as --served-model-name's list of names."""
    return [value]


def answers_any_model(args: argparse.Namespace) -> bool:
    """Whether the served name is LightLLM's --model_name alone: the name /v1/models and
    every answer report, but no request's `model` is checked against it, as LightLLM
    checks none (its chat route takes any); --served-model-name, vLLM's, answers a 404 for
    another name, and given beside --model_name (the same name: Alias refuses two), in
    either order, its check holds: that flag asks for it, where --model_name only names
    the model (LightLLM has no --served-model-name, vLLM no --model_name, so neither
    engine decides the pair; the answer followed the last spelling typed)."""
    spellings = getattr(args, "values_typed", {}).get("served_model_name", {})
    return "--model-name" in spellings and "--served-model-name" not in spellings


# the flag (dashed) -> (EngineConfig's option it sets, aiollm's flag of it, for --help), with
# the type its value is read as
ALIASES = {
    "--model-name": ("served_model_name", "--served-model-name", _one_name),
    "--max-total-token-num": ("kv_tokens", "--kv-tokens", int),
    "--running-max-req-size": ("max_running_requests", "--max-running-requests", int),
    "--max-req-total-len": ("max_model_len", "--max-model-len", int),
    "--data-type": ("dtype", "--dtype", data_type),
    "--graph-max-batch-size": ("cuda_graph_max_batch", "--cuda-graph-max-batch", int),
    "--output-constraint-mode": ("grammar_backend", "--grammar-backend",
                                 sglang_flags.grammar_backend_name),
}
# switches: the flag -> (option, the value it sets, aiollm's flag)
SWITCHES = {
    "--disable-cudagraph": ("cuda_graph", False, "--enforce-eager"),
    "--disable-dynamic-prompt-cache": ("prefix_cache", False, "--no-prefix-cache"),
}

REFUSED = (
    Refusal(("--disable-chunked-prefill",),
            "prompts are always prefilled in chunks of a step's token budget: to prefill a "
            "prompt in one step, raise --batch_max_tokens (--max-prefill-tokens) to "
            "--max_req_total_len (--max-model-len)", takes_value=False),
    Refusal(("--max-req-input-len",),
            "a request's input is limited only with its output, by --max_req_total_len "
            "(--max-model-len): there is no separate limit on input; leave the flag out"),
    Refusal(("--run-mode",),
            "there is no prefill/decode disaggregation: one server prefills and decodes "
            "(normal); leave the flag out", same=("normal",)),
    Refusal(("--eos-id",),
            "requests end at the tokenizer's and the model config's eos ids; a request may "
            "add its own (stop_token_ids, LightLLM's stop_sequences)"),
    Refusal(("--quant-type",), vllm_flags.NOT_QUANTIZED, same=("none",)),
    Refusal(("--use-reward-model",),
            f"{vllm_flags.GENERATIVE_ONLY}; leave the flag out to generate text",
            takes_value=False),
    Refusal(("--nccl-host",),
            "give node 0's address and a port every node reaches as --dist-init-addr "
            "HOST:PORT (on one node, leave both out)", same=("127.0.0.1",)),
    Refusal(("--long-truncation-mode",),
            "a request longer than --max_req_total_len (--max-model-len) is refused, never "
            "cut short: truncate the prompt in the client, or raise it"),
)

NO_EFFECT = {
    "--use-dynamic-prompt-cache": "the prefix cache is on unless turned off "
                                  "(--disable_dynamic_prompt_cache, --no-prefix-cache)",
    "--splitfuse-mode": "prompt chunks always share a step with the decodes, within "
                        "--mixed-prefill-tokens",
    "--disable-custom-allreduce": "tensor parallelism all-reduces with torch.distributed "
                                  "(NCCL) only",
    "--enable-fa3": "attention runs on aiollm's Triton kernels (outputs are the same)",
    "--enable-prefill-decode-mixed": "prompt chunks always share a step with the decodes, "
                                     "within --mixed-prefill-tokens",
    # LightLLM's aggressive schedule admits new prompts at any step, stalling the decodes
    # for that step's prefill; without it, every --router_max_wait_tokens steps
    "--disable-aggressive-schedule": "no prefill stalls the decodes: a step's prompt chunks "
                                     "share it with them, within --mixed-prefill-tokens",
    "--health-monitor": "/health answers whether the engine runs, and nothing restarts the "
                        "server: run it under a supervisor (systemd, Kubernetes) for that",
}

# the router's admission knobs: its "busy" threshold of the pool's use, its guess of a
# request's output length, and the decode steps between admissions (LightLLM's api_cli.py
# and its req queues); aiollm's scheduler has none of the same meaning. Each value's type is
# the one LightLLM's api_cli.py declares
_POLICIES = {"aggressive": "while their prompts fit in the KV cache",
             "past_future": "by output lengths predicted from finished requests",
             "conservative": "by each request's max_tokens"}
_DEFAULT_POLICY = next(f.default for f in fields(EngineConfig) if f.name == "scheduler")
_ADMISSION = ("waiting requests are admitted at every step by --scheduler's policy ("
              + "; ".join(f"{name}{', the default' if name == _DEFAULT_POLICY else ''}: {how}"
                          for name, how in sorted(_POLICIES.items(),
                                                  key=lambda p: p[0] != _DEFAULT_POLICY))
              + ")")
# LightLLM's --mode values that pick its attention kernels alone (api_cli.py's help: "fast
# kernel for model which use GQA", flash decoding "for long context"; ppl's fp16 kernels),
# the KV cache kept in the model's dtype; its others keep the KV cache in int8 or fp8
KERNEL_MODES = ("triton_flashdecoding", "triton_gqa_attention", "triton_gqa_flashdecoding",
                "ppl_fp16")
# where MODEL goes, for a word of a nargs "+" flag's that may be MODEL typed after its values
_MODEL_FIRST = "give the model first, `aiollm serve MODEL ...`, or as --model_dir MODEL"


def _mode_refusal(modes: list[str]) -> str | None:
    """Why LightLLM's --mode `modes` (nargs "+") is refused: the first that is not one of
    KERNEL_MODES (int8 or fp8 KV cache, its calibration), named; None where all are. A
    last word after kernel modes may be MODEL, written after them (nargs "+" takes every
    word up to the next flag): the reason then says where MODEL goes."""
    other = next((mode for mode in modes if mode not in KERNEL_MODES), None)
    if other is None:
        return None
    model = ("" if len(modes) < 2 or other is not modes[-1] else
             f" (--mode takes every word up to the next flag: {_MODEL_FIRST})")
    return (f"{other} is not served: the KV cache is kept in the model's dtype (no int8 or "
            "fp8 KV cache); leave the flag out, or give only kernel modes "
            f"({', '.join(KERNEL_MODES)}), which change nothing{model}")


# LightLLM's attention backends: its api_cli.py's choices, and flashqla (its linear
# attention's, a later release's)
ATTENTION_BACKENDS = ("auto", "triton", "fa3", "flashinfer", "flashqla")


def _backend_refusal(flag: str):
    """The check of --llm_prefill_att_backend's or --llm_decode_att_backend's words (nargs
    "+"): the first that is none of ATTENTION_BACKENDS is refused, named, saying where MODEL
    goes, for nargs "+" takes every word up to the next flag: a MODEL typed after the
    backends was taken as one, and the server started its default model instead."""
    def refusal(backends: list[str]) -> str | None:
        other = next((name for name in backends if name not in ATTENTION_BACKENDS), None)
        if other is None:
            return None
        return (f"{other} is not one of LightLLM's attention backends "
                f"({', '.join(ATTENTION_BACKENDS)}); {_underscored(flag)} takes every word up "
                f"to the next flag: {_MODEL_FIRST}")
    return refusal


NO_EFFECT_VALUES = (
    Ignored(("--graph-max-len-in-batch",),
            "decode CUDA graphs cover every context up to --max-model-len", "N", kind=int),
    Ignored(("--router-token-ratio",), f"{_ADMISSION}, with no switch at a share of the "
            "KV cache in use", "RATIO", kind=float),
    Ignored(("--router-max-new-token-len",), f"{_ADMISSION}, not from a fixed guess", "N",
            kind=int),
    Ignored(("--router-max-wait-tokens",), f"{_ADMISSION}, not every N decode steps; "
            "--mixed-prefill-tokens bounds the prompt tokens a decode step carries", "N",
            kind=int),
    Ignored(("--mode",), "attention runs on aiollm's Triton kernels (outputs are the same)",
            "MODE", refuse=_mode_refusal, nargs="+"),
    # nargs "+" as LightLLM declares them: a backend per kind of attention layer
    *(Ignored((flag,), "attention runs on aiollm's Triton kernels (outputs are the same)",
              "BACKEND", nargs="+", refuse=_backend_refusal(flag))
      for flag in ("--llm-prefill-att-backend", "--llm-decode-att-backend")),
    Ignored(("--log-stats-interval",), sglang_flags.STATS_EVERY_MINUTE.replace(
        "--disable-log-stats", "--disable_log_stats"), "SECONDS", kind=int),
    Ignored(("--cache-capacity",),
            "aiollm's models take text alone, so there is no cache of images' or audio's "
            "embeddings to size", "N", kind=int),
    Ignored(("--httpserver-workers",),
            "one process serves HTTP (asynchronously) and runs the engine", "N", kind=int),
)


# what an alias does beside its aiollm flag's meaning, for --help (answers_any_model)
NOTES = {"--model-name": " (one name, which no request's model is checked against, as in "
                         "LightLLM; --served-model-name answers another name 404, beside it "
                         "too)",
         "--output-constraint-mode": " (xgrammar or none; LightLLM's default is none, "
                                     "structured output off, aiollm's xgrammar)"}


def add_to(parser: argparse.ArgumentParser) -> None:
    """Add LightLLM's flags (the tables above, and --mem_fraction) to `parser`, aiollm
    serve's, in a group of their own."""
    shown = [(flag, aiollm_flag) for flag, (_, aiollm_flag, _) in ALIASES.items()]
    shown += [(flag, aiollm_flag) for flag, (_, _, aiollm_flag) in SWITCHES.items()]
    aliases = "; ".join(f"{_underscored(flag)} is {aiollm_flag}{NOTES.get(flag, '')}"
                        for flag, aiollm_flag in shown)
    refused = ", ".join(_underscored(r.names[0]) for r in REFUSED)
    group = parser.add_argument_group(
        "LightLLM's flags", "`python -m lightllm.server.api_server` flags (underscores or "
        "dashes) of the same meaning are aliases of aiollm's: --model_dir is MODEL; "
        f"{aliases}; --batch_max_tokens, --chunked_prefill_size and --splitfuse_block_size are "
        "--max-prefill-tokens, a step's tokens (several given: the smallest counts); --tp "
        "is -tp. --host, --port, --nnodes, --node_rank, --disable_log_stats and "
        "--tool_call_parser (qwen25 is hermes) are aiollm's own; --tokenizer_mode takes "
        "fast and auto; --trust_remote_code changes nothing (as vLLM's). Those below size "
        "the KV cache as LightLLM does or change nothing. Refused, each with what to use "
        "instead (--help=NAME says it; a value asking for aiollm's own behaviour, such as "
        f"--run_mode normal, is taken): {refused}.")
    add_aliases(group, "--model-dir", ALIASES, SWITCHES)
    # a step's tokens: the prefill batch's, and (older LightLLM) a splitfuse step's chunk
    for flag in ("--batch-max-tokens", "--splitfuse-block-size"):
        group.add_argument(flag, dest="max_prefill_tokens", type=token_counts.token_count,
                           action=Alias, least=True, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
    group.add_argument("--mem-fraction", type=float, default=None, metavar="F",
                       help="LightLLM's --mem_fraction: size the KV cache so that the GPU's "
                            "memory in use once it is allocated (every process's) is F x "
                            "its total, the rest, 1 - F, for activations and CUDA graphs "
                            "(instead of --kv-memory-fraction; --kv-tokens overrides it; no "
                            "effect on the CPU)")
    vllm_flags.add_tables(group, NO_EFFECT, NO_EFFECT_VALUES, REFUSED)


def _underscored(flag: str) -> str:
    """A dashed flag as LightLLM spells it: --max-total-token-num is --max_total_token_num."""
    return "--" + flag[2:].replace("-", "_")
