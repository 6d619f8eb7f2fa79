"""`vllm serve` flags on `aiollm serve`, so that a launch line copied from vLLM runs as it
asked or stops at once saying why (argparse's "unrecognized arguments" said neither).

Flags whose meaning aiollm has under its own name are aliases where
aiollm/cli/serve_parser.py defines that name (--model, --max-num-seqs,
--max-num-batched-tokens, --enforce-eager, --[no-]enable-prefix-caching,
--disable-log-stats, -tp), and so are vLLM's values of a choice (`dtype_name`,
`tool_call_parser_name`). This module adds the rest to the serve parser (`add_to`):

- NO_EFFECT: flags asking for what aiollm always does; accepted, each listed in --help
  saying so, and logged at start-up as having no effect;
- NO_EFFECT_VALUES: flags taking a value that vLLM itself uses only with a feature aiollm
  lacks and refuses under its own flag (expert parallelism's --all2all-backend; multimodal
  --limit-mm-per-prompt, taken where every count is 0), or that bound what aiollm always
  covers (--max-seq-len-to-capture: the graphs cover --max-model-len): accepted
  and logged as NO_EFFECT, but for a value that asks for what aiollm cannot do, refused as
  REFUSED are, and for one vLLM's parser refuses (a number's "abc": Ignored.kind), a usage
  error as there;
- REFUSED: flags asking for what aiollm cannot do; each is a usage error (exit 2) whose one
  line names the flag and what aiollm offers instead. A value asking for aiollm's own
  behaviour (-pp 1, --max-logprobs 20) is accepted. Hidden from --help, which names them
  in the group's description;
- -O/--optimization-level and -cc/--compilation-config (aiollm/vllm_compilation.py): read
  as aiollm's CUDA-graph settings (--enforce-eager, --cuda-graph-max-batch), the rest
  logged as having no effect; --cudagraph-capture-sizes, --max-cudagraph-capture-size and
  --performance-mode (aiollm/vllm_graph_flags.py) likewise;
- --structured-outputs-config (aiollm/vllm_structured_config.py): read as --grammar-backend
  and --reasoning-parser, the keys that change nothing logged so, the others refused.

Nothing else here reaches EngineConfig: a flag is either an alias, or changes nothing, or stops
the start; none is dropped while it would change outputs or memory use. The same tables
answer vLLM's keywords of LLM(...) (aiollm/vllm_names.py), but for SERVER_ONLY.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from aiollm import (moe_flags, vllm_compilation, vllm_graph_flags, vllm_structured_config,
                    vllm_value_checks)
from aiollm.config import REASONING_PARSERS
from aiollm.flag_kinds import Ignored, Refusal, optional_int


def gguf_quantization_misfit(model: str | None) -> str | None:
    """Why vLLM's quantization gguf (what a GGUF file always is) does not fit `model`: a
    Hugging Face directory, which vLLM would fail to load as GGUF. None for a GGUF file,
    and for a path that is neither (the load reports it)."""
    from aiollm.model.paths import resolve_model_path

    try:
        _, gguf_name = resolve_model_path(model)
    except FileNotFoundError:
        return None
    if gguf_name is not None:
        return None
    return (f"gguf is the quantization of a GGUF file, and {model!r} is a Hugging Face model "
            "directory (served as its safetensors are): leave the flag out, or give a .gguf "
            "file as MODEL")


# what a pooling task (vLLM's --task embed, LLM.embed ...) is told (vllm_members.py too)
GENERATIVE_ONLY = ("aiollm serves generative models only: no pooling (embeddings, "
                   "classification, scores, rewards)")
_GENERATIVE_FLAG = f"{GENERATIVE_ONLY}; leave the flag out to generate text"

_TEXT_ONLY = f"{vllm_value_checks.TEXT_ONLY}; leave the flag out"

# refusals SGLang's and LightLLM's flags share (aiollm/cli/sglang_flags.py, lightllm_flags.py)
NO_LORA = ("LoRA adapters are not supported: serve a checkpoint with the adapter merged "
           "into its weights")
NOT_QUANTIZED = ("quantized checkpoints are not supported: serve float16/bfloat16/float32 "
                 "safetensors, or a GGUF file (dequantized as it loads)")
NO_PIPELINE_PARALLEL = ("there is no pipeline parallelism: split the model over GPUs with "
                        "--tensor-parallel-size (over nodes too, with --nnodes)")
NO_DATA_PARALLEL = ("there is no data parallelism in one server: run one aiollm server per "
                    "replica behind a load balancer")

REFUSED = (
    Refusal(("-q", "--quantization"), NOT_QUANTIZED,
            same=("gguf",),  # vLLM's name for what a .gguf model always is
            model_check=gguf_quantization_misfit),
    Refusal(("-pp", "--pipeline-parallel-size"), NO_PIPELINE_PARALLEL, same=("1",)),
    Refusal(("-dp", "--data-parallel-size"), NO_DATA_PARALLEL, same=("1",)),
    Refusal(("--block-size",),
            "the KV cache is token-level, one slot per token, with no blocks to size; leave "
            "the flag out", same=("1",)),
    Refusal(("--scheduling-policy",),
            "requests are admitted first come, first served (fcfs): there is no priority "
            "scheduling; leave the flag out", same=("fcfs",)),
    Refusal(("--swap-space",),
            "nothing is swapped to the CPU: a request paused for KV memory keeps its tokens "
            "and is resumed by recomputing its KV", same=("0",)),
    Refusal(("--cpu-offload-gb",),
            "weights are never offloaded to the CPU: split a model too large for one GPU "
            "with --tensor-parallel-size", same=("0",)),
    # expert parallelism and what goes with it (aiollm/moe_flags.py)
    *moe_flags.VLLM_REFUSED,
    Refusal(("--enable-lora",), NO_LORA, takes_value=False),
    Refusal(("--lora-modules",), NO_LORA),
    Refusal(("--speculative-config",), "speculative decoding is not supported"),
    Refusal(("--max-logprobs",),
            "the most logprobs and prompt_logprobs a request may ask for is fixed at 20",
            same=("20",)),
    Refusal(("--no-enable-chunked-prefill",),
            "prompts are always prefilled in chunks of a step's token budget: to prefill a "
            "prompt in one step, raise --max-prefill-tokens (--max-num-batched-tokens) to "
            "--max-model-len", takes_value=False),
    Refusal(("--download-dir",),
            "models are never downloaded: MODEL is a local directory or .gguf file "
            "(download it first, e.g. `hf download ID --local-dir DIR`)"),
    Refusal(("--revision",),
            "models are never downloaded: MODEL is a local directory or .gguf file "
            "(download the revision first, e.g. `hf download ID --revision R --local-dir DIR`)"),
    Refusal(("--tokenizer-revision",),
            "models are never downloaded: the tokenizer is MODEL's own (download the revision "
            "first, e.g. `hf download ID --revision R --local-dir DIR`)"),
    Refusal(("--max-lora-rank",), NO_LORA, same=("16",)),  # vLLM's default: no adapter
    Refusal(("--guided-decoding-backend",),
            "grammars run on xgrammar, the one library aiollm has: leave the flag out "
            "(vLLM's newer spelling, --structured-outputs-config.backend xgrammar, is "
            "taken); --grammar-backend none turns structured output off",
            same=("xgrammar", "auto")),
    Refusal(("--reasoning-parser-plugin",),
            "no code is loaded to add a reasoning parser: aiollm's own are "
            f"{', '.join(REASONING_PARSERS)} (--reasoning-parser); leave the flag out",
            same=("",)),
    Refusal(("--task",), _GENERATIVE_FLAG, same=("generate", "auto")),
    Refusal(("--runner",), _GENERATIVE_FLAG, same=("generate", "auto")),
    Refusal(("--convert",), _GENERATIVE_FLAG, same=("none", "auto")),
    Refusal(("--tokenizer-mode",),
            "the tokenizer is the model's tokenizer.json (or the GGUF file's vocabulary), "
            "with no slow or mistral mode",
            same=("auto", "fast")),  # fast: LightLLM's --tokenizer_mode default, the same
    Refusal(("--skip-tokenizer-init",),
            "the tokenizer always loads (prompts may still be given as token ids)",
            takes_value=False),
    Refusal(("--hf-token",),
            "models are never downloaded, so no hub token is used: MODEL is a local "
            "directory or .gguf file"),
    Refusal(("--hf-config-path",),
            "a GGUF file's config is read from its own metadata, as llama.cpp reads it: "
            "serve the Hugging Face model directory with that config.json instead, or leave "
            "the flag out"),
    Refusal(("--hf-overrides",),
            "the model's config.json is read as it is: serve a copy of the model directory "
            "with the values changed in its config.json"),
    Refusal(("--mm-processor-kwargs",), _TEXT_ONLY),
    Refusal(("--override-generation-config",),
            "put the values in the generation_config.json of a folder and give it with "
            "--generation-config PATH"),
    Refusal(("--distributed-executor-backend",),
            "tensor-parallel ranks are processes aiollm spawns itself, one per GPU (no Ray); "
            "leave the flag out", same=("mp",)),
    Refusal(("--allowed-local-media-path",), _TEXT_ONLY, same=("",)),
    # vLLM's HTTP server's own (SERVER_ONLY)
    *(Refusal((flag,), "TLS is not served: put a TLS-terminating proxy (nginx, Envoy, a "
                       "cloud load balancer) in front of the server")
      for flag in ("--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs", "--ssl-cert-reqs")),
    Refusal(("--root-path",),
            "routes are served at the root (/v1/..., /health): have the proxy strip its "
            "prefix before forwarding, and leave the flag out"),
    Refusal(("--middleware",),
            "the HTTP server is aiohttp, not an ASGI app: it takes no ASGI middleware"),
    Refusal(("--no-async-scheduling",),
            "the engine loop always plans step N+1 while step N runs on the device, and "
            "nothing turns that off (outputs are the same either way); leave the flag out",
            takes_value=False),
    Refusal(("--enable-sleep-mode",),
            "there is no sleep mode (vLLM's /sleep and /wake_up, LLM.sleep and "
            "LLM.wake_up): the weights and the KV cache stay on the GPU while the server "
            "runs; stop the server to free its memory (offline, LLM.close() gives them back "
            "and a new LLM loads them again)", takes_value=False),
    # "hf" (and "auto", which picks it for a config.json) ask for what aiollm reads
    Refusal(("--config-format",),
            "the model's configuration is read from its Hugging Face config.json (or a GGUF "
            "file's metadata): Mistral's params.json is not read; leave the flag out",
            same=("auto", "hf")),
)

# vLLM flags that ask for what aiollm always does -> why they change nothing (--help)
NO_EFFECT = {
    "--enable-auto-tool-choice": "tool_choice \"auto\" is always served: tool calls are read "
                                 "by --tool-call-parser, or by the parser the chat template "
                                 "implies",
    "--enable-chunked-prefill": "long prompts are always prefilled in chunks, within "
                                "--max-prefill-tokens a step",
    "--disable-log-requests": "request contents are never logged",
    "--no-enable-log-requests": "request contents are never logged",
    # a log line changes no output, as --uvicorn-log-level's does not (SGLang's
    # --log-requests, which its own --config example sets, is taken alike)
    "--enable-log-requests": "request contents are never logged; --log-level debug logs "
                             "each HTTP request's method, path, status and id (X-Request-Id)",
    # vLLM too serves an architecture it implements with its own code, flag or not; a
    # checkpoint needing its own code has a model_type aiollm refuses, naming those it serves
    "--trust-remote-code": "no code from a checkpoint is ever run: the model types aiollm "
                           "implements are served with their tokenizer.json",
    "--no-trust-remote-code": "no code from a checkpoint is ever run",
    **moe_flags.VLLM_NO_EFFECT,
    "--disable-custom-all-reduce": "tensor parallelism all-reduces with torch.distributed "
                                   "(NCCL) only",
    "--enable-request-id-headers": "every response carries X-Request-Id: the request's own "
                                   "(its header, else its body's request_id) or a new one",
    "--enable-prompt-tokens-details": "usage always carries prompt_tokens_details "
                                      "(cached_tokens)",
    "--enable-server-load-tracking": "GET /load always answers the requests in flight",
    "--disable-frontend-multiprocessing": "the HTTP server and the engine are always one "
                                          "process",
    "--disable-fastapi-docs": "no API docs (/docs, /redoc, /openapi.json) are served",
    "--disable-uvicorn-access-log": "HTTP requests are logged only with --log-level debug",
    "--async-scheduling": "the engine loop always plans and queues step N+1 while step N "
                          "runs, one step ahead of the device",
    "--disable-cascade-attn": "there is no cascade attention: every request attends over its "
                              "own KV slots",
}


def _kept_as_typed(kind: Callable[[str], Any]) -> Callable[[str], str]:
    """argparse's type= that checks a value as `kind` reads it (its ValueError is argparse's
    "invalid KIND value" usage error) and keeps the text as typed, for the log's line."""
    def check(value: str) -> str:
        kind(value)
        return value

    check.__name__ = getattr(kind, "__name__", "value")
    return check


NO_EFFECT_VALUES = (
    *moe_flags.VLLM_NO_EFFECT_VALUES,
    # in vLLM's own --config example: a log level changes no output, so it is taken
    Ignored(("--uvicorn-log-level",),
            "the HTTP server is aiohttp, not uvicorn: --log-level sets the server's logging "
            "(debug logs every HTTP request)", "LEVEL",
            choices=("critical", "error", "warning", "info", "debug", "trace")),
    Ignored(("--max-log-len",),
            "request contents are never logged, so there is nothing to cut short", "N",
            kind=optional_int),
    Ignored(("--max-seq-len-to-capture",),
            "decode CUDA graphs cover every context up to --max-model-len", "N", kind=int),
    Ignored(("--limit-mm-per-prompt",),
            "aiollm's models take text alone, so no prompt carries images, audio or video",
            "JSON", refuse=vllm_value_checks.multimodal_refusal),
)

# flags of vLLM's server alone (its frontend's, AsyncEngineArgs'), not keywords of its LLM(...):
# aiollm's LLM refuses them as unknown, as vLLM's does
SERVER_ONLY = frozenset({"--enable-auto-tool-choice", "--disable-log-requests",
                         "--no-enable-log-requests", "--enable-log-requests", "--lora-modules",
                         "--enable-request-id-headers", "--enable-prompt-tokens-details",
                         "--enable-server-load-tracking", "--disable-frontend-multiprocessing",
                         "--disable-fastapi-docs", "--disable-uvicorn-access-log",
                         "--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs", "--ssl-cert-reqs",
                         "--root-path", "--middleware",
                         "--uvicorn-log-level", "--max-log-len"})

_DTYPES = {"half": "float16", "float": "float32"}  # vLLM's other names for them
_TOOL_CALL_PARSERS = {"llama3_json": "llama3"}  # the same format under vLLM's name


def dtype_name(value: str) -> str:
    """--dtype's value under aiollm's name: vLLM's half is float16, float is float32."""
    return _DTYPES.get(value, value)


def tool_call_parser_name(value: str) -> str:
    """--tool-call-parser's value under aiollm's name: vLLM's llama3_json is llama3."""
    return _TOOL_CALL_PARSERS.get(value, value)


def _note(namespace: argparse.Namespace, flag: str, why: str, value: Any = None) -> None:
    """Record in the namespace's `no_effect` (set only when one is given) that `flag` (with
    its `value`, if it takes one) has no effect and why: serve's checks log it. A flag
    given again is one note, with the value argparse keeps (the last), in the place of the
    first: one line in the log."""
    note = (flag if value is None else f"{flag} {value}", why)
    notes = list(getattr(namespace, "no_effect", ()))
    same = (i for i, (shown, _) in enumerate(notes) if shown.split(" ", 1)[0] == flag)
    if (i := next(same, None)) is None:
        notes.append(note)
    else:
        notes[i] = note
    namespace.no_effect = notes


class NoEffect(argparse.Action):
    """A switch that is accepted and sets nothing but its note (_note)."""

    def __init__(self, option_strings: list[str], dest: str, why: str, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0,
                         default=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        _note(namespace, option_string, self.why)


class NoEffectValue(argparse.Action):
    """A flag of NO_EFFECT_VALUES: its value accepted with a note (_note), or a usage
    error naming the flag where ignored.refuse refuses it."""

    def __init__(self, option_strings: list[str], dest: str, ignored: Ignored,
                 **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         **kwargs)
        self.ignored = ignored

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.ignored.refuse is not None and (why := self.ignored.refuse(values)):
            raise argparse.ArgumentError(self, why)
        shown = " ".join(values) if isinstance(values, list) else values
        _note(namespace, option_string, self.ignored.why, shown)
        if self.ignored.config_check is not None:  # run by serve's checks (serve_checks)
            checks = dict(getattr(namespace, "config_checks", {}))
            checks[self.ignored.names[0]] = (option_string, values, self.ignored.config_check)
            namespace.config_checks = checks  # a flag given again: its last value's


class Refuse(argparse.Action):
    """A refused flag: a usage error naming it, unless its value is one of refusal.same
    (then its refusal.model_check goes to the namespace's `model_checks`, for serve's
    checks to run against MODEL)."""

    def __init__(self, option_strings: list[str], dest: str, refusal: Refusal) -> None:
        super().__init__(option_strings, argparse.SUPPRESS,
                         nargs=None if refusal.takes_value else 0,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.refusal = refusal

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.refusal.takes_value and values in self.refusal.same:
            if self.refusal.model_check is not None:  # run by serve's checks (serve_checks)
                namespace.model_checks = [*getattr(namespace, "model_checks", ()),
                                          (f"{option_string} {values}",
                                           self.refusal.model_check)]
            return
        raise argparse.ArgumentError(self, self.reason())

    def reason(self) -> str:
        """Why the flag is refused: what aiollm offers instead."""
        message = self.refusal.message
        return message() if callable(message) else message

    def hidden_help(self) -> str:
        """The line `--help=WORD` shows for the flag, hidden from --help (help_format.py):
        the values taken, if any, and why the others (or the switch) stop the start."""
        taken = ", ".join(repr(v) if not v else v for v in self.refusal.same)
        lead = f"taken: {taken}; any other value stops the start: " if taken else (
            "stops the start: ")
        return lead + self.reason()


def add_tables(group: argparse._ArgumentGroup, no_effect: dict[str, str],
               no_effect_values: tuple[Ignored, ...], refused: tuple[Refusal, ...]) -> None:
    """Add one engine's tables to `group`, as this module's (NO_EFFECT, NO_EFFECT_VALUES,
    REFUSED) and sglang_flags' and lightllm_flags' are laid out: switches of no effect
    (flag -> why), flags whose value has none (Ignored), refused flags (Refusal)."""
    for flag, why in no_effect.items():
        group.add_argument(flag, action=NoEffect, why=why, help=f"no effect: {why}")
    for ignored in no_effect_values:
        group.add_argument(*ignored.names, action=NoEffectValue, ignored=ignored,
                           type=_kept_as_typed(ignored.kind), choices=ignored.choices,
                           nargs=ignored.nargs,
                           # argparse lists the choices where there are some, as vLLM's
                           metavar=None if ignored.choices else ignored.metavar,
                           help=f"no effect: {ignored.why}")
    for refusal in refused:
        group.add_argument(*refusal.names, action=Refuse, refusal=refusal)


def add_to(parser: argparse.ArgumentParser) -> None:
    """Add NO_EFFECT, NO_EFFECT_VALUES, REFUSED and -O/-cc (vllm_compilation.add_to) to
    `parser` (aiollm serve's), in a group of their own."""
    refused = ", ".join(r.names[-1] for r in REFUSED)
    group = parser.add_argument_group(
        "vLLM's flags", "`vllm serve` flags of the same meaning are aliases of aiollm's "
        "above (--model, --max-num-seqs, --max-num-batched-tokens, --enforce-eager, "
        "--[no-]enable-prefix-caching, --disable-log-stats, -tp; --dtype half/float, "
        "--tool-call-parser llama3_json). Those below ask for what aiollm always does and "
        "change nothing, but -O, -cc and the CUDA-graph sizes, read as aiollm's CUDA graphs, "
        "--performance-mode throughput, and --structured-outputs-config, read as "
        "--grammar-backend and --reasoning-parser; a JSON flag's keys may be given one by "
        "one, as vLLM reads them (-cc.mode 3, --structured-outputs-config.backend "
        "xgrammar). Refused, each with what to use instead (--help=NAME says it; a value "
        f"asking for aiollm's own behaviour, such as -pp 1, is taken): {refused}.")
    add_tables(group, NO_EFFECT, NO_EFFECT_VALUES, REFUSED)
    vllm_compilation.add_to(group)
    vllm_graph_flags.add_to(group)
    vllm_structured_config.add_to(group)
