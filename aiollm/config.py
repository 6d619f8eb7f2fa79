"""EngineConfig: every option of the engine, with defaults and checks in one place."""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass, fields


CPU_KV_CONTEXTS = 4  # full contexts the default CPU KV pool holds
CPU_KV_MAX_TOKENS = 65536
# request-table slots: 160 bytes each (160 MiB at this), slot ids are int32; 2**31 slots got
# past the checks and then failed after loading. A million queued requests is already far
# past what one process serves (max_waiting_requests: 4096 by default)
MAX_TABLE_CAPACITY = 2**20
# KV slot ids are int32 (req_to_token, the kernels' indices); one more slot is the scratch
# slot CUDA-graph padding writes to
MAX_KV_TOKENS = 2**31 - 2
# --reasoning-parser's choices (aiollm/api/reasoning.py); here so the config need not import the API
REASONING_PARSERS = ("deepseek_r1", "qwen3")
# --tool-call-parser's choices (aiollm/api/tool_parsers.py)
TOOL_CALL_PARSERS = ("hermes", "llama3", "mistral", "mistral_v11")
# --chat-template-content-format's choices (aiollm/engine/content_format.py): the form of
# message content a chat template is given
CONTENT_FORMATS = ("auto", "string", "openai")
# --logprobs-mode's choices, vLLM's names (aiollm/model/sampler.py says what each reports)
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
# --grammar-backend's choices: the grammar library, or "none", structured output off (SGLang's
# --grammar-backend none, LightLLM's --output_constraint_mode none)
GRAMMAR_BACKENDS = ("xgrammar", "none")
# the KV pool's share of the GPU memory free after loading, by default; the rest is the
# headroom for activations, CUDA graphs and sampling (gpu_memory_utilization keeps it too)
KV_MEMORY_FRACTION = 0.85
# the responses /v1/responses keeps (--max-stored-responses; api/response_store.py): enough
# for many clients' conversations at once; each holds about a context's worth of text at
# most (its conversation had to fit the context)
MAX_STORED_RESPONSES = 1000
# ... and the bytes of memory they may hold in all (--max-stored-response-bytes): 1 GiB, a
# small share of a GPU server's memory; the count alone let clients fill 16 GB (1000
# responses of a 16 MiB body each)
MAX_STORED_RESPONSE_BYTES = 2**30
# the options that size the GPU's KV pool as a share of its memory, one at most: what each is
# a share of (aiollm/model/kv_pool_size.py)
MEMORY_SHARES = {
    "gpu_memory_utilization": "vLLM's: the whole process's share of the GPU's memory",
    "kv_memory_fraction": "the KV pool's share of the memory free after loading",
    "mem_fraction_static": "SGLang's: the weights' and KV pool's share of the memory free "
                           "at start",
    "mem_fraction": "LightLLM's: the share of the GPU's memory in use once the KV pool is "
                    "allocated",
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# vLLM's --kv-cache-dtype values aiollm can honour: auto, or the dtype the model runs in
# (vLLM's float16 and bfloat16; float32 too, the CPU's)
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_kv_cache_dtype(kv_cache_dtype: str, dtype: str, why: str = "") -> None:
    """Raise ValueError unless `kv_cache_dtype` (one of KV_CACHE_DTYPES) is auto or the name
    of `dtype`, the dtype the model runs in (float32, bfloat16 or float16): the KV cache is
    kept in that dtype, as vLLM's auto keeps it. `why`: how dtype came to be (dtype auto's
    resolution), for the message."""
    if kv_cache_dtype in ("auto", dtype):
        return
    raise ValueError(f"kv_cache_dtype {kv_cache_dtype} differs from dtype {dtype}{why}: the "
                     f"KV cache is kept in the dtype the model runs in; give kv_cache_dtype "
                     f"(--kv-cache-dtype) auto or {dtype}, or dtype (--dtype) {kv_cache_dtype}")


def check_shutdown_timeout(timeout: float, name: str = "shutdown() timeout") -> None:
    """ValueError naming `name` and the value unless `timeout` is a number of seconds >= 0
    (any real number, numpy's too, not a bool; inf: no limit): checked before a shutdown
    changes anything, which a TypeError inside its wait left refusing every request."""
    if (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
            or not timeout >= 0):
        raise ValueError(f"{name} must be a number of seconds >= 0 (inf: no limit), "
                         f"got {timeout!r}")


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # HF directory or .gguf file; None: the default SmolLM2-135M
    dtype: str = "auto"  # auto: the checkpoint's fp16/bf16 on CUDA (else bf16), fp32 on CPU
    # vLLM's --kv-cache-dtype: the KV cache is kept in the dtype the model runs in, so auto or
    # that dtype's name (check_kv_cache_dtype; with dtype auto, checked once it is resolved)
    kv_cache_dtype: str = "auto"
    device: str = "auto"  # auto: cuda if available, else cpu
    # auto | safetensors | gguf (vLLM's names: the model must be of that kind) | dummy (random
    # weights of the config's shape)
    load_format: str = "auto"
    tokenizer: str | None = None  # default: the model's own (the default model's if it has none)
    max_model_len: int | None = None  # default: the model's own limit
    # KV pool size in tokens; overrides kv_memory_fraction and gpu_memory_utilization (and
    # the other shares), not with kv_cache_memory_bytes
    kv_tokens: int | None = None
    # vLLM's --kv-cache-memory-bytes: KV pool size in bytes per GPU (a rank's K and V),
    # overriding the memory shares as kv_tokens does, not with it; on the CPU too
    # (aiollm/model/kv_pool_size.py)
    kv_cache_memory_bytes: int | None = None
    # SGLang's --max-total-tokens: an upper bound of the KV pool's tokens, the pool being the
    # smaller of it and what the memory gives (on the CPU, cpu_pool_tokens); not with kv_tokens
    max_total_tokens: int | None = None
    # of free GPU memory after loading, for the KV pool; None: KV_MEMORY_FRACTION, unless
    # gpu_memory_utilization is given (one or the other: aiollm/model/kv_pool_size.py)
    kv_memory_fraction: float | None = None
    # vLLM's --gpu-memory-utilization: this process's GPU memory (weights, KV pool, the
    # headroom for activations) stays within this share of the GPU's total; no effect on the CPU
    gpu_memory_utilization: float | None = None
    # SGLang's --mem-fraction-static: this process's weights and KV pool within this share of
    # the GPU memory free when it started, the rest kept for activations and CUDA graphs;
    # LightLLM's --mem_fraction (mem_fraction): the GPU's memory in use once the pool is
    # allocated, every process's, within this share of its total. No effect on the CPU
    # (aiollm/model/kv_pool.py, static_pool_tokens)
    mem_fraction_static: float | None = None
    mem_fraction: float | None = None
    # KV pool size on the CPU when kv_tokens is not given; None: cpu_pool_tokens() sizes it
    # from the model's context. No CLI flag: on the command line the device is known, and
    # --kv-tokens sizes the pool on it; this only lets Python code with device="auto" size
    # the CPU's pool apart from the GPU's kv_memory_fraction
    cpu_kv_tokens: int | None = None
    max_running_requests: int = 256
    # token budget of one step (prefill chunks + decodes); 2048 on the 8B LightLLM workload
    # (H200, prefill graphs on, bench/README.md "Serving on the H200"): ITL p99 45 ms against
    # 56-60 ms at 4096 (a burst's 3,072-prompt-token steps), output tok/s the same within the
    # passes' spread; every step then fits the prefill graphs (MAX_TOKENS)
    max_prefill_tokens: int = 2048
    # most prompt tokens in a step that also decodes, while no more prompts are in line than
    # streams decode (None: max_prefill_tokens): such a step delays every running stream's
    # next token, so a smaller cap bounds inter-token latency; 1024 measured on the 8B
    # LightLLM workload (bench/README.md); with prefill graphs a capped step takes up to 31
    # more, the padding rows of its graph bucket (Planner.fill_to)
    mixed_prefill_tokens: int | None = 1024
    # requests waiting beyond the running batch's free places (Planner.waiting_beyond_batch):
    # past them a request gets Overloaded (503); a burst the idle batch takes is not refused
    max_waiting_requests: int = 4096
    queue_timeout: float | None = None  # seconds a request may wait before admission
    # seconds a request's grammar may compile before the request fails (400; as long queued
    # for a compile thread: 503); legitimate large schemas took up to ~30 s on a 2-core CPU,
    # pathological ones minutes (aiollm/engine/grammar_compile.py)
    grammar_compile_timeout: float = 60.0
    # one of GRAMMAR_BACKENDS: "none" turns structured output off, as SGLang's and LightLLM's
    # "none" do: a request that asks for a grammar (a response format, a regex, tool_choice
    # "required"...) gets 400 naming its field, as SGLang answers it, and xgrammar is never
    # imported (aiollm/engine/grammar.py)
    grammar_backend: str = "xgrammar"
    # request table slots (running + waiting + paused): a request past them gets Overloaded
    table_capacity: int = 8192
    # aggressive | past_future | conservative; aggressive matched or beat Past-Future's goodput
    # in every setting measured (bench/README.md, "Past-Future in the paper's setting")
    scheduler: str = "aggressive"
    past_future_estimator: str = "quantile"  # quantile | paper (aiollm.scheduler.config)
    # benchmarks: the scheduler sees ignore_eos requests as capped at this many new tokens
    scheduler_blind_cap: int | None = None
    served_model_name: str | None = None
    seed: int = 0
    # the sampling defaults of requests that leave a field out: auto, the model's
    # generation_config.json; vllm, SamplingParams' own; or a folder holding a
    # generation_config.json (vLLM's --generation-config; aiollm/model/generation_defaults.py)
    generation_config: str = "auto"
    # what the logprobs of sampled tokens report (vLLM's --logprobs-mode, one of
    # LOGPROBS_MODES): raw_logprobs, the model's distribution before penalties, bans, biases,
    # grammars, temperature and truncation; processed_logprobs, the one the token was drawn
    # from; the *_logits modes report those logits themselves (aiollm/model/sampler.py)
    logprobs_mode: str = "raw_logprobs"
    # on a GPU, decode steps replay CUDA graphs and eager steps graph segments around their
    # attention (engine/cuda_graph.py, engine/prefill_graphs.py)
    cuda_graph: bool = True
    cuda_graph_max_batch: int = 256  # largest decode batch replayed as a graph (SGLang's max bs)
    # on a GPU, launch the prefill, mixed and sampling step shapes once at start-up, so their
    # kernels compile before serving rather than stalling the first streams
    warm_up: bool = True
    # how /v1/chat/completions reads tool calls: hermes | llama3 | mistral | mistral_v11
    # (None: from the chat template; see aiollm/api/tool_parsers.py)
    tool_call_parser: str | None = None
    # how /v1/chat/completions splits <think>...</think> into reasoning_content: deepseek_r1 |
    # qwen3 (None: no split, the output is all content; see aiollm/api/reasoning.py)
    reasoning_parser: str | None = None
    # chat: tool_choice "none" leaves the request's tools out of the prompt (vLLM's
    # --exclude-tools-when-tool-choice-none); by default the model sees them, as vLLM and
    # OpenAI show them, and no call is read from its output
    exclude_tools_when_tool_choice_none: bool = False
    # the chat template every chat is rendered with, in place of the tokenizer's: a Jinja
    # template, or the path of a file holding one, as vLLM's --chat-template reads it
    # (aiollm/model/chat_template_source.read_chat_template); once checked, the template's
    # text. None: the tokenizer's own
    chat_template: str | None = None
    # chat: control-token text inside message content becomes real control tokens (by
    # default it is plain text, so a user cannot forge a turn; aiollm/engine/chat_template.py)
    special_tokens_in_content: bool = False
    # reuse the KV of repeated prompt prefixes (aiollm/engine/prefix_cache.py)
    prefix_cache: bool = True
    # tensor parallelism (aiollm.distributed): ranks in all, over nnodes nodes; node_rank 0
    # serves HTTP; dist_init_addr HOST:PORT of the TCP rendezvous (default on one node: a
    # free port of 127.0.0.1)
    tensor_parallel_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be auto, float32, bfloat16 or float16, "
                             f"got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be auto or the dtype the model runs in "
                             f"(float32, bfloat16 or float16): the KV cache is kept in the "
                             f"model's dtype, there is no fp8 or other quantized KV cache; got "
                             f"{self.kv_cache_dtype!r}")
        if self.dtype != "auto":
            check_kv_cache_dtype(self.kv_cache_dtype, self.dtype)
        if not isinstance(self.device, str):  # a torch.device, as the Python API took before
            self.device = str(self.device)
        for name in ("model", "tokenizer", "generation_config", "chat_template"):  # a Path too
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self._check_types()
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        from aiollm.model.paths import LOAD_FORMATS

        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)} (aiollm "
                             "reads Hugging Face safetensors directories and GGUF files), "
                             f"got {self.load_format!r}")
        from aiollm.model.generation_defaults import check_mode
        check_mode(self.generation_config)
        if self.grammar_backend not in GRAMMAR_BACKENDS:
            raise ValueError(f"grammar_backend must be one of {', '.join(GRAMMAR_BACKENDS)} "
                             f"(none: structured output off), got {self.grammar_backend!r}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got "
                             f"{self.logprobs_mode!r}")
        from aiollm.scheduler import SCHEDULERS
        from aiollm.scheduler.config import ESTIMATORS

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, "
                             f"got {self.scheduler!r}")
        # SchedulerConfig checks them too, under its own names (estimator, blind_cap), when
        # the engine makes it: here they are named as the options are
        if self.past_future_estimator not in ESTIMATORS:
            raise ValueError(f"past_future_estimator must be one of {', '.join(ESTIMATORS)}, "
                             f"got {self.past_future_estimator!r}")
        # at most the largest pool's tokens: past int64, every step failed converting it
        cap = self.scheduler_blind_cap
        if cap is not None and not 1 <= cap <= MAX_KV_TOKENS:
            raise ValueError(f"scheduler_blind_cap must be an integer in [1, {MAX_KV_TOKENS}] "
                             f"(or None), got {cap}")
        for name in ("max_running_requests", "max_prefill_tokens", "max_waiting_requests",
                     "table_capacity", "cuda_graph_max_batch"):
            v = getattr(self, name)
            if v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.table_capacity > MAX_TABLE_CAPACITY:
            raise ValueError(f"table_capacity must be at most {MAX_TABLE_CAPACITY}, got "
                             f"{self.table_capacity}")
        if self.cpu_kv_tokens is not None and not 1 <= self.cpu_kv_tokens <= MAX_KV_TOKENS:
            raise ValueError(f"cpu_kv_tokens must be in [1, {MAX_KV_TOKENS}], got "
                             f"{self.cpu_kv_tokens}")
        if self.mixed_prefill_tokens == 0:  # --mixed-prefill-tokens 0: no cap, here too
            self.mixed_prefill_tokens = None
        if self.mixed_prefill_tokens is not None and self.mixed_prefill_tokens < 0:
            raise ValueError(f"mixed_prefill_tokens must be >= 0 (0 or None: no cap), got "
                             f"{self.mixed_prefill_tokens}")
        if self.kv_tokens is not None and not 1 <= self.kv_tokens <= MAX_KV_TOKENS:
            raise ValueError(f"kv_tokens must be in [1, {MAX_KV_TOKENS}], got {self.kv_tokens}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        self._check_kv_cache_memory_bytes()
        self._check_max_total_tokens()
        if (self.kv_tokens is not None and self.max_model_len is not None
                and self.kv_tokens < self.max_model_len):
            # as vLLM refuses to start when its KV cache cannot hold one request of
            # max_model_len: such a request would wait forever, or be cut short
            raise ValueError(f"kv_tokens {self.kv_tokens} is less than max_model_len "
                             f"{self.max_model_len}: the KV cache must hold one request of "
                             f"max_model_len tokens; give kv_tokens (--kv-tokens) at least "
                             f"{self.max_model_len}, or max_model_len (--max-model-len) at "
                             f"most {self.kv_tokens} (left out: the longest that fits)")
        if self.kv_memory_fraction is not None and not 0 < self.kv_memory_fraction < 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1), got {self.kv_memory_fraction}")
        for name in ("gpu_memory_utilization", "mem_fraction_static", "mem_fraction"):
            share = getattr(self, name)
            if share is not None and not 0 < share <= 1:  # NaN too
                raise ValueError(f"{name} must be in (0, 1], got {share}")
        given = [name for name in MEMORY_SHARES if getattr(self, name) is not None]
        if len(given) > 1:  # shares of different wholes
            raise ValueError(f"give one of {given[0]} ({MEMORY_SHARES[given[0]]}) and "
                             f"{given[1]} ({MEMORY_SHARES[given[1]]}), got "
                             f"{getattr(self, given[0])} and {getattr(self, given[1])}")
        for name in ("tensor_parallel_size", "nnodes"):  # one message each: the CLI names it
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tensor_parallel_size % self.nnodes:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} is not a multiple "
                             f"of nnodes {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("more than one node needs dist_init_addr HOST:PORT (a port of "
                             "node 0 that every node can reach)")
        if self.dist_init_addr is not None:
            host, _, port = self.dist_init_addr.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"dist_init_addr must be HOST:PORT with a port in [1, 65535], "
                                 f"got {self.dist_init_addr!r}")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError("served_model_name must not be empty (left out, the model's own "
                             f"name is served), got {self.served_model_name!r}")
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"tool_call_parser must be one of {', '.join(TOOL_CALL_PARSERS)} "
                             f"(or None), got {self.tool_call_parser!r}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser must be one of {', '.join(REASONING_PARSERS)} "
                             f"(or None), got {self.reasoning_parser!r}")
        if self.queue_timeout is not None and not self.queue_timeout > 0:  # NaN too
            raise ValueError(f"queue_timeout must be > 0 seconds, got {self.queue_timeout}")
        if self.chat_template is not None:
            from aiollm.model.chat_template_source import read_chat_template
            self.chat_template = read_chat_template(self.chat_template)
        t = self.grammar_compile_timeout
        if not (isinstance(t, numbers.Real) and not isinstance(t, bool)
                and 0 < t < float("inf")):  # NaN too
            raise ValueError(f"grammar_compile_timeout must be a finite number of seconds > 0, "
                             f"got {t!r}")

    def _check_types(self) -> None:
        """Each field of the kind its annotation names (None where it allows None), before
        the ranges are checked: the Python API's callers pass what they like ("100" from an
        environment variable raised TypeError naming no field; 1.5 tokens, "no" for a flag
        and 5 for a path were taken). numpy's integers count as integers and become ints."""
        kinds = {"int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
                         "an integer"),
                 "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
                           "a number"),
                 "bool": (lambda v: isinstance(v, bool), "True or False"),
                 "str": (lambda v: isinstance(v, str), "a string")}
        for f in fields(self):
            v = getattr(self, f.name)
            optional = "None" in f.type
            if v is None and optional:
                continue
            ok, what = kinds[f.type.split(" | ")[0]]
            if not ok(v):
                raise ValueError(f"{f.name} must be {what}{' or None' if optional else ''}, "
                                 f"got {v!r}")
            if f.type.startswith("int"):
                setattr(self, f.name, int(v))  # a numpy int too: the request table takes an int

    def _check_kv_cache_memory_bytes(self) -> None:
        """kv_cache_memory_bytes (vLLM's KV pool size in bytes) >= 1, and not with kv_tokens
        (a size in tokens: which would size the pool?): ValueError naming it otherwise.
        Whether the bytes hold one request of max_model_len depends on the model's bytes a
        token, checked before the weights load (aiollm/engine/kv_plan.py)."""
        kv_bytes = self.kv_cache_memory_bytes
        if kv_bytes is None:
            return
        if kv_bytes < 1:  # vLLM reads 0 as not given: say so rather than guess
            raise ValueError(f"kv_cache_memory_bytes must be an integer >= 1 (bytes of KV "
                             f"cache per GPU), got {kv_bytes}; leave it out to size the cache "
                             "from the memory (what vLLM does with 0)")
        if self.kv_tokens is not None:
            raise ValueError(f"give one of kv_tokens (the KV pool's size in tokens) and "
                             f"kv_cache_memory_bytes (vLLM's: its size in bytes), got "
                             f"{self.kv_tokens} and {kv_bytes}")

    def _check_max_total_tokens(self) -> None:
        """max_total_tokens (SGLang's bound of the pool) in [1, MAX_KV_TOKENS], not with
        kv_tokens (a size, bounded by nothing), and holding one request of max_model_len:
        ValueError naming it otherwise."""
        cap = self.max_total_tokens
        if cap is None:
            return
        if not 1 <= cap <= MAX_KV_TOKENS:
            raise ValueError(f"max_total_tokens must be in [1, {MAX_KV_TOKENS}], got {cap}")
        if self.kv_tokens is not None:
            raise ValueError(f"give one of kv_tokens (the KV pool's size) and max_total_tokens "
                             f"(SGLang's: a bound of the size the memory gives), got "
                             f"{self.kv_tokens} and {cap}")
        if self.max_model_len is not None and cap < self.max_model_len:
            raise ValueError(f"max_total_tokens {cap} is less than max_model_len "
                             f"{self.max_model_len}: the KV cache must hold one request of "
                             f"max_model_len tokens; give max_total_tokens (--max-total-tokens) "
                             f"at least {self.max_model_len}, or max_model_len "
                             f"(--max-model-len) at most {cap}")

    def cpu_pool_tokens(self, context_len: int) -> int:
        """KV pool tokens on the CPU: cpu_kv_tokens, or CPU_KV_CONTEXTS full contexts of
        context_len tokens, at most CPU_KV_MAX_TOKENS (which then bounds the context: a fixed
        65,536 gave a 135M model with 8k contexts 2.8 GiB of KV it never used), but never
        less than one context when max_model_len is given: a pool that cannot hold one
        request of max_model_len stops the start (aiollm/engine/loading.py), and here no
        one asked for a smaller one."""
        if self.cpu_kv_tokens is not None:
            return self.cpu_kv_tokens
        tokens = min(CPU_KV_CONTEXTS * context_len, CPU_KV_MAX_TOKENS)
        return max(tokens, context_len) if self.max_model_len is not None else tokens
