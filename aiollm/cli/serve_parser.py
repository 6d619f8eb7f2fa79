"""`aiollm serve`'s parser: its positional MODEL and aiollm's flags by group (server,
model, engine, tensor parallelism), then vLLM's (vllm_flags.py), SGLang's (sglang_flags.py)
and LightLLM's (lightllm_flags.py); ENGINE_OPTIONS, the flags that are EngineConfig's
fields. What the flags give is checked after parsing in serve_checks.py."""

from __future__ import annotations

import argparse
import json

from aiollm import vllm_flags
from aiollm.cli import config_file, lightllm_flags, sglang_flags, token_counts
from aiollm.cli.flag_alias import Alias, ModelFlag
from aiollm.cli.help_format import HelpFormatter
from aiollm.config import (CONTENT_FORMATS, KV_MEMORY_FRACTION, LOGPROBS_MODES,
                           MAX_STORED_RESPONSE_BYTES, MAX_STORED_RESPONSES, REASONING_PARSERS,
                           TOOL_CALL_PARSERS, EngineConfig)
from aiollm.model.paths import LOAD_FORMATS


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`serve`'s parser, added to the subcommands `sub`: aiollm's flags by group, then
    vLLM's, SGLang's and LightLLM's (vllm_flags, sglang_flags, lightllm_flags, add_to).
    The parser is also in its namespace (command_parser), for the checks after parsing to
    report through."""
    d = EngineConfig()  # the engine's defaults, shown in --help
    s = sub.add_parser("serve", help="serve a model over HTTP",
                       formatter_class=HelpFormatter,
                       short_usage="aiollm serve [-h] [MODEL] [options]",
                       description="Serve MODEL over HTTP: /v1/completions, "
                       "/v1/chat/completions, /v1/responses, /v1/responses/{response_id}, "
                       "/v1/responses/{response_id}/input_items, "
                       "/v1/responses/{response_id}/cancel, /v1/models, "
                       "/v1/models/{model}, "
                       "/generate, "
                       "/generate_stream, /health, /healthz, /ping, /load, /metrics, /version, "
                       "/tokenize, /detokenize, /flush_cache, and LightLLM's /liveness, "
                       "/readiness, /get_model_name, /tokens, /token_load, POST /, and "
                       "/get_score, a reward model's route: a 404 saying none is served. "
                       "OpenAI's routes of stored chat completions answer as a store "
                       "that keeps none: GET /v1/chat/completions lists none, and these "
                       "answer a 404: /v1/chat/completions/{completion_id}, "
                       "/v1/chat/completions/{completion_id}/messages. These answer a 404 "
                       "saying what serves the need instead: OpenAI's "
                       "/v1/responses/input_tokens, /v1/responses/compact.")
    s.set_defaults(model=None)  # before the two ways to name it, which set only what is given
    s.add_argument("model", nargs="?", default=argparse.SUPPRESS, action=ModelFlag,
                   metavar="MODEL",
                   help="a Hugging Face model directory or a .gguf file "
                        "(default: the bundled SmolLM2-135M-Instruct)")
    s.add_argument("--model", dest="model", default=argparse.SUPPRESS, action=ModelFlag,
                   metavar="MODEL", help="MODEL given as a flag (vLLM's --model)")
    config_file.add_to(s)
    net = s.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (0.0.0.0: every IPv4 interface; ::, as in "
                          "vLLM: every interface, IPv4 too)")
    net.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    net.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                     action=Alias,
                     help="the model name clients send and see (default: the model's name); "
                          "several, as in vLLM: responses report the first, requests may "
                          "send any, /v1/models lists all")
    net.add_argument("--tool-call-parser", default=None, choices=list(TOOL_CALL_PARSERS),
                     type=sglang_flags.tool_call_parser_name,
                     help="the format of the model's tool calls (vLLM's llama3_json: llama3; "
                          "SGLang's and LightLLM's qwen25, and SGLang's qwen: hermes; "
                          "default: from its chat template)")
    net.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                     help="chat: render conversations with this Jinja chat template in place "
                          "of the tokenizer's: the path of a file holding it, or the template "
                          "itself (as vLLM's --chat-template; checked at start)")
    net.add_argument("--chat-template-content-format", default="auto",
                     choices=list(CONTENT_FORMATS),
                     help="chat, the Responses API and /tokenize: the form of message "
                          "content the chat template is given, as vLLM's flag: string (text "
                          "parts joined by newlines into one string), openai (a list of "
                          "{\"type\": \"text\", \"text\": ...} parts; a string as one part) "
                          "or auto (whichever the "
                          "template reads: openai where it loops over a message's content, or "
                          "indexes it outside a test that it is a string; else string)")
    net.add_argument("--trust-request-chat-template", action="store_true",
                     help="chat and /tokenize: render a request's messages with the chat "
                          "template it sends (chat_template, or chat_template_kwargs' "
                          "chat_template), as vLLM's flag allows; without it such a request "
                          "gets 400")
    net.add_argument("--response-role", default="assistant", metavar="ROLE",
                     help="chat: the role of an answer to a prompt that opens a new turn, as "
                          "vLLM's (with add_generation_prompt false: the last message's)")
    net.add_argument("--return-tokens-as-token-ids", action=argparse.BooleanOptionalAction,
                     default=False,
                     help="logprobs name each token \"token_id:N\" rather than by its text, "
                          "as vLLM's flag: for every request that does not send "
                          "return_tokens_as_token_ids")
    net.add_argument("--max-stored-responses", type=int, default=MAX_STORED_RESPONSES,
                     metavar="N",
                     help="the Responses API: keep the N most recent responses made with store "
                          "true (or store left out), in memory, for previous_response_id and "
                          "GET/DELETE /v1/responses/{id}; the oldest is dropped first (lost at "
                          "a restart); 0 keeps none: each is answered with store false, as "
                          f"vLLM without its store (default: {MAX_STORED_RESPONSES})")
    net.add_argument("--max-stored-response-bytes", type=int,
                     default=MAX_STORED_RESPONSE_BYTES, metavar="N",
                     help="the Responses API: the kept responses hold at most N bytes of "
                          "memory in all (each turn of a conversation counted once), the oldest "
                          "dropped first, so that clients cannot fill the server's memory; "
                          "one larger than N is not kept; 0 keeps none "
                          f"(default: {MAX_STORED_RESPONSE_BYTES}, 1 GiB)")
    net.add_argument("--reasoning-parser", default=None, choices=list(REASONING_PARSERS),
                     type=sglang_flags.reasoning_parser_name,
                     help="chat: put the model's <think>...</think> text in reasoning_content "
                          "and the rest in content (deepseek_r1: the output starts inside the "
                          "reasoning, SGLang's deepseek-r1 and qwen3-thinking; qwen3: only where "
                          "the output or prompt opens <think>); "
                          "default: none, the output is all content")
    net.add_argument("--exclude-tools-when-tool-choice-none", action="store_true",
                     help="chat: leave a request's tools out of the prompt when its "
                          "tool_choice is \"none\" (by default the model sees them and no "
                          "call is read from its output, as in vLLM)")
    net.add_argument("--special-tokens-in-content", action="store_true",
                     help="chat: let control-token text in message content (<|im_start|>...) "
                          "become control tokens; by default it is plain text, so a user "
                          "cannot forge a system turn")
    net.add_argument("--api-key", nargs="+", default=None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health, "
                          "/healthz, /ping, /load, /liveness, /readiness, /metrics and "
                          "/version; several, as in vLLM: any of them is let in (if not "
                          "given: $AIOLLM_API_KEY, else vLLM's $VLLM_API_KEY, one key each; "
                          "neither: no auth)")
    net.add_argument("--allowed-origins", type=_string_list, default=None, metavar="LIST",
                     help="let web pages of these origins call the server from a browser "
                          "(CORS), as a JSON list ('[\"http://localhost:3000\"]', '[\"*\"]' "
                          "for any page) or comma-separated; default: none, CORS off, so a web "
                          "page the user visits cannot drive the server")
    net.add_argument("--allowed-methods", type=_string_list, default=None, metavar="LIST",
                     help="with --allowed-origins: the methods those pages may use (default: "
                          "any)")
    net.add_argument("--allowed-headers", type=_string_list, default=None, metavar="LIST",
                     help="with --allowed-origins: the request headers those pages may send "
                          "(default: any; Accept, Accept-Language, Content-Language and "
                          "Content-Type always)")
    net.add_argument("--allow-credentials", action="store_true",
                     help="with --allowed-origins: let those pages send the browser's "
                          "credentials (cookies, HTTP auth)")
    net.add_argument("--shutdown-timeout", type=float, default=30.0,
                     help="seconds in-flight requests may take to finish on SIGINT/SIGTERM "
                          "before they are aborted")
    net.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error", "critical"],
                     help="logging level (debug also logs every HTTP request)")
    net.add_argument("--disable-log-stats", dest="log_stats", action="store_false",
                     help="do not log the periodic statistics (the prefix cache's hit rate, "
                          "once a minute); /metrics keeps them")
    m = s.add_argument_group("model")
    m.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   type=vllm_flags.dtype_name, action=Alias,
                   help="weights and KV cache dtype (auto: on CUDA the checkpoint's float16 or "
                        "bfloat16, else bfloat16; float32 on CPU; "
                        "vLLM's half and float: float16 and float32)")
    m.add_argument("--kv-cache-dtype", default=d.kv_cache_dtype, metavar="DTYPE",
                   type=sglang_flags.kv_cache_dtype_name,
                   help="vLLM's: the KV cache's dtype, which is always the dtype the model "
                        "runs in (--dtype): auto, or that dtype's name (bfloat16, SGLang's "
                        "bf16, float16, float32); no fp8")
    m.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    m.add_argument("--tokenizer", default=d.tokenizer, action=Alias,
                   help="tokenizer path (HF directory or .gguf; default: the model's own)")
    m.add_argument("--load-format", default=d.load_format, choices=list(LOAD_FORMATS),
                   help="auto: what MODEL is; safetensors or gguf, as vLLM's: MODEL must be "
                        "a Hugging Face directory or a GGUF file; dummy: random weights of "
                        "the model's shape (benchmarks)")
    m.add_argument("--max-model-len", type=token_counts.max_model_len,
                   default=d.max_model_len, action=Alias,
                   help="longest prompt + output in tokens, as vLLM takes it: 4k is 4000, 4K "
                        "4096; a KV cache that cannot hold one request of it stops the start, "
                        "as in vLLM (default, or auto: the model's own limit, within what the "
                        "KV cache holds)")
    m.add_argument("--generation-config", default=d.generation_config, metavar="{auto,vllm,PATH}",
                   help="what requests that leave temperature, top_p, top_k, min_p, "
                        "repetition_penalty or their length out are sampled with: auto, the "
                        "model's generation_config.json; vllm, the API's own values; PATH, a "
                        "folder holding a generation_config.json")
    m.add_argument("--logprobs-mode", default=d.logprobs_mode, choices=list(LOGPROBS_MODES),
                   help="vLLM's: what the logprobs of sampled tokens report: raw_logprobs, "
                        "the model's own distribution, before penalties, bans, logit_bias, "
                        "grammars, temperature and top-k/top-p/min-p; processed_logprobs, "
                        "the distribution the token was drawn from, after all of them; "
                        "raw_logits and processed_logits, those logits themselves "
                        "(default: %(default)s)")
    m.add_argument("--seed", type=int, default=d.seed, action=Alias,
                   help="seed of the server's sampling when a request gives none")
    e = s.add_argument_group("engine")
    e.add_argument("--kv-tokens", type=int, default=d.kv_tokens, action=Alias,
                   help="KV cache size in tokens, at least --max-model-len when that is "
                        "given (overrides --kv-memory-fraction and "
                        "--gpu-memory-utilization, not with --kv-cache-memory-bytes; default "
                        "on the CPU: 4 full contexts of "
                        "--max-model-len, at most 65536 but at least one)")
    e.add_argument("--kv-cache-memory-bytes", type=token_counts.byte_count,
                   default=d.kv_cache_memory_bytes, metavar="BYTES",
                   help="vLLM's: KV cache size in bytes per GPU (4G is 4 x 2^30, 4g 4 x "
                        "10^9): it holds as many tokens as BYTES has room for, each token "
                        "taking its K and V (a GPU's share of the KV heads under "
                        "--tensor-parallel-size); overrides "
                        "--gpu-memory-utilization and the other shares, not with "
                        "--kv-tokens; sizes the CPU's cache too")
    e.add_argument("--kv-memory-fraction", type=float, default=d.kv_memory_fraction,
                   metavar="F",
                   help="fraction of free GPU memory after loading to give the KV cache "
                        f"(default: {KV_MEMORY_FRACTION})")
    e.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization,
                   metavar="U",
                   help="vLLM's: keep this process's GPU memory (weights, KV cache, "
                        "activations) within U x the GPU's total, in (0, 1]; the KV cache "
                        "gets what is left after the weights and the activations' headroom "
                        "(instead of --kv-memory-fraction; no effect on the CPU)")
    e.add_argument("--max-running-requests", "--max-num-seqs", type=int, action=Alias,
                   metavar="N",
                   default=d.max_running_requests,
                   help="most requests admitted at once (prefilling or decoding)")
    e.add_argument("--max-prefill-tokens", "--max-num-batched-tokens",
                   type=token_counts.token_count, action=Alias, least=True, metavar="N",
                   default=d.max_prefill_tokens,
                   help="token budget of one step (prefill chunks + decodes); 8k is 8000, "
                        "8K 8192; given with SGLang's or LightLLM's bounds of a step, the "
                        "smallest counts")
    e.add_argument("--mixed-prefill-tokens", type=int, default=d.mixed_prefill_tokens,
                   help="most prompt tokens in a step that also decodes (with prefill graphs, "
                        "plus up to 31 that fill the step's graph bucket): caps how long running "
                        "streams wait for a token while prompts are prefilled; lifted while "
                        "more prompts wait than streams decode (a burst); 0: no cap "
                        "(default: %(default)s)")
    e.add_argument("--max-waiting-requests", type=int, action=Alias,
                   default=d.max_waiting_requests,
                   help="requests that may wait beyond the running batch's free places "
                        "(--max-running-requests); past them a request gets 503 (default: "
                        "%(default)s)")
    e.add_argument("--table-capacity", type=int, default=d.table_capacity,
                   help="request-table slots: requests running, waiting and paused together; "
                        "past them a request gets 503 (at most 1048576)")
    e.add_argument("--queue-timeout", type=float, default=d.queue_timeout,
                   help="seconds a request may wait for admission (default: no limit)")
    e.add_argument("--grammar-compile-timeout", type=float, default=d.grammar_compile_timeout,
                   metavar="SECONDS",
                   help="seconds a request's grammar may compile before the request fails "
                        "with 400 (the compilation runs on and is cached); a request that "
                        "waits as long for a compile thread gets 503")
    e.add_argument("--grammar-backend", default=d.grammar_backend, action=Alias,
                   type=sglang_flags.grammar_backend_name, metavar="{xgrammar,none}",
                   help="the grammar library of structured output (response_format, "
                        "guided_*, structured_outputs, tool_choice \"required\" or naming a "
                        "function): xgrammar; none turns structured output off, as SGLang's "
                        "none does, and LightLLM unless given --output_constraint_mode "
                        "xgrammar: a request asking for a grammar gets 400 naming its field, "
                        "and tool calls under tool_choice \"auto\" are read from the output's "
                        "text alone (default: %(default)s)")
    e.add_argument("--scheduler", default=d.scheduler,
                   choices=["past_future", "aggressive", "conservative"],
                   help="admission policy")
    e.add_argument("--past-future-estimator", default=d.past_future_estimator,
                   choices=["quantile", "paper"],
                   help="Past-Future's estimate of the future: a quantile of the history, or "
                        "the paper's sampled peaks (default: %(default)s)")
    e.add_argument("--scheduler-blind-cap", type=int, default=d.scheduler_blind_cap,
                   help="benchmarks: show the scheduler ignore_eos requests as ordinary ones "
                        "capped at this many new tokens, so fixed benchmark lengths stay unknown")
    e.add_argument("--no-cuda-graph", "--enforce-eager", dest="cuda_graph", action="store_false",
                   help="run every step eagerly: no decode CUDA graphs, no graph segments "
                        "for prompt steps")
    e.add_argument("--cuda-graph-max-batch", "--cuda-graph-max-bs", type=int, action=Alias,
                   default=d.cuda_graph_max_batch,
                   help="largest decode batch captured as a CUDA graph (larger ones run "
                        "eagerly; SGLang's --cuda-graph-max-bs)")
    e.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="skip the start-up launch of prefill, mixed and sampling step shapes "
                        "(their kernels then compile at first use, while serving)")
    e.add_argument("--no-prefix-cache", "--no-enable-prefix-caching", dest="prefix_cache",
                   action="store_false",
                   help="compute every prompt in full instead of reusing the KV of prefixes "
                        "seen before")
    e.add_argument("--enable-prefix-caching", dest="prefix_cache", action="store_true",
                   default=argparse.SUPPRESS,
                   help="reuse the KV of prefixes seen before, as without --no-prefix-cache "
                        "(the last of the two given counts)")
    tp = s.add_argument_group("tensor parallelism")
    tp.add_argument("-tp", "--tensor-parallel-size", type=int, action=Alias,
                    default=d.tensor_parallel_size,
                    help="split the model over N ranks (one per GPU; gloo ranks on --device cpu)")
    tp.add_argument("--nnodes", type=int, default=d.nnodes,
                    help="nodes the ranks are spread over (tensor parallel size / nnodes each)")
    tp.add_argument("--node-rank", type=int, default=d.node_rank,
                    help="this node's index; node 0 serves HTTP, the others only compute")
    tp.add_argument("--dist-init-addr", default=d.dist_init_addr, metavar="HOST:PORT",
                    help="TCP rendezvous address on node 0, reachable from every node "
                         "(default on one node: a free port of 127.0.0.1)")
    vllm_flags.add_to(s)
    sglang_flags.add_to(s)
    lightllm_flags.add_to(s)
    # the checks after parsing report through serve's parser, as argparse's own do: its
    # usage line, "aiollm serve: error: ..."
    s.set_defaults(command_parser=s)
    return s


# the flags' destinations that are EngineConfig's fields of the same names
ENGINE_OPTIONS = ("dtype", "kv_cache_dtype", "device", "load_format", "tokenizer",
                  "max_model_len", "seed",
                  "kv_tokens", "kv_cache_memory_bytes", "max_total_tokens",
                  "kv_memory_fraction", "gpu_memory_utilization",
                  "mem_fraction_static", "mem_fraction",
                  "max_running_requests",
                  "max_prefill_tokens", "mixed_prefill_tokens", "max_waiting_requests",
                  "queue_timeout", "grammar_compile_timeout", "grammar_backend", "scheduler",
                  "past_future_estimator", "scheduler_blind_cap", "table_capacity",
                  "cuda_graph", "cuda_graph_max_batch", "warm_up",
                  "served_model_name", "tool_call_parser", "reasoning_parser",
                  "prefix_cache", "tensor_parallel_size", "nnodes", "node_rank",
                  "dist_init_addr", "special_tokens_in_content", "generation_config",
                  "logprobs_mode",
                  "exclude_tools_when_tool_choice_none",
                  "chat_template")


def _string_list(value: str) -> list[str]:
    """A list option: a JSON list of strings (vLLM's form) or comma-separated names."""
    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not a JSON list: {e}") from None
        if not all(isinstance(item, str) for item in items):
            raise argparse.ArgumentTypeError(f"must be a list of strings, got {value}")
    else:
        items = [item.strip() for item in value.split(",")]
    if not items or not all(items):
        raise argparse.ArgumentTypeError(f"must name at least one, without empty names, got "
                                         f"{value!r}")
    return items
