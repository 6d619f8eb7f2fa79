"""Start-up of a rank's model side: device and dtype, weights, tokenizer, KV pool, model runner.

`load()` builds what rank 0's Engine serves with; `build_rank_model()` is the part every
tensor-parallel rank builds alike (rank 0 through `load()`, the others in
aiollm/distributed/follower.py), so that their pools hold the same token slots and their
collectives pair up in the same order: the pool size agreed, the graph captures, the warm-up.
The loop's own parts (scheduler, planner, grammars, metrics) stay with the Engine.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aiollm.byte_size import byte_size
from aiollm.config import KV_MEMORY_FRACTION, EngineConfig, check_kv_cache_dtype
from aiollm.engine.kv_plan import check_kv_plan, memory_share, pool_short, pool_sizer
from aiollm.engine.model_runner import ModelRunner
from aiollm.engine.token_floor import floor_of
from aiollm.engine.warm_up import warm_up
from aiollm.model.config import ModelConfig
from aiollm.model.generation_defaults import folder_eos_ids, log_defaults, sampling_defaults
from aiollm.model.kv_pool import KVPool, ReqToTokenTable
from aiollm.model.kv_pool_size import SIZES, named, pool_tokens
from aiollm.model.paths import check_load_format
from aiollm.model.tokenizer_files import check_tokenizer_path
from aiollm.native import RequestTable

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """EngineConfig.device as a torch device: "auto" is cuda when a GPU is visible, else cpu.
    Raises ValueError for a CUDA device this process does not see."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= seen:
            raise ValueError(f"device {name} is not available: this process sees {seen} CUDA "
                             f"GPU(s) (torch {torch.__version__}); use --device cpu or auto")
    return device


def resolve_dtype(name: str) -> torch.dtype | None:
    """EngineConfig.dtype as a torch dtype, or None for "auto", which load_model resolves
    from the checkpoint (aiollm.model.loader.auto_dtype)."""
    return None if name == "auto" else getattr(torch, name)


@dataclass(slots=True)
class RankModel:
    """One rank's model side: the runner and the KV memory it reads and writes.

    kv_tokens: token slots in the pool (the same on every rank); max_model_len: tokens of
    prompt and output one request may hold (model limit, config limit and pool, the least);
    kv_bytes_per_token: pool bytes one token slot takes on this rank, K and V of all layers."""

    runner: ModelRunner
    kv_pool: KVPool
    req_to_token: ReqToTokenTable
    kv_tokens: int
    max_model_len: int
    kv_bytes_per_token: int


def build_rank_model(cfg: EngineConfig, loaded, device: torch.device, dtype: torch.dtype,
                     tp=None, eos_ids: list[int] | tuple[int, ...] = ()) -> RankModel:
    """Size and allocate the KV pool for a loaded model (aiollm.model.LoadedModel), then build
    its ModelRunner and, on a GPU with cfg.warm_up, launch each step shape once.

    tp: this rank's aiollm.distributed.TensorParallel, or None on one rank; with it the pool
    size is the least any rank can hold, and its two start-up checkpoints are passed here
    (collectives: every rank calls this in step; a rank whose start-up failed meets them,
    TensorParallel.start_failed, and the others raise RankLost naming it).
    eos_ids: token ids that end a request (rank 0 samples; followers pass none).
    """
    mc = loaded.config
    per_token = KVPool.bytes_per_token(mc.num_layers, loaded.kv_heads, mc.head_dim, dtype)
    kv_tokens = pool_tokens(cfg, device, per_token, mc.max_position)
    if tp is not None:  # every rank's pool holds the same token slots
        kv_tokens = tp.start_check(kv_tokens)
    if cfg.max_model_len is not None and kv_tokens < cfg.max_model_len:
        # every rank meets this alike (the agreed size), before the last checkpoint; where
        # this rank's free memory (less the headroom gpu_memory_utilization always keeps:
        # utilization_pool_tokens) cannot hold it either, no share can help
        most = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        if cfg.gpu_memory_utilization is not None:
            most = int(most * KV_MEMORY_FRACTION)
        free_bound = device.type == "cuda" and most // per_token < cfg.max_model_len
        raise ValueError(pool_short(cfg, device, kv_tokens, per_token, free_bound=free_bound))
    max_len = min(x for x in (mc.max_position, cfg.max_model_len, kv_tokens) if x)
    kv_pool = KVPool(mc.num_layers, loaded.kv_heads, mc.head_dim, kv_tokens, dtype, device,
                     sized_by=pool_sizer(cfg, device, kv_tokens))
    # the planner never runs more requests than there are req_to_token rows
    rows = min(cfg.max_running_requests, cfg.table_capacity)
    r2t = ReqToTokenTable(rows, max_len, device)
    if tp is not None:  # every rank's pool fits: the model's collectives may begin (graphs)
        tp.start_check(last=True)
    runner = ModelRunner(loaded.model, mc, kv_pool, r2t, device, eos_ids=list(eos_ids),
                         cuda_graph=cfg.cuda_graph and device.type == "cuda",
                         cuda_graph_max_batch=cfg.cuda_graph_max_batch, dist=tp,
                         logprobs_mode=cfg.logprobs_mode)
    if cfg.warm_up and device.type == "cuda":
        warm_up(runner, max_prefill=cfg.max_prefill_tokens,
                max_mixed=cfg.mixed_prefill_tokens or cfg.max_prefill_tokens, max_batch=rows,
                grammars=cfg.grammar_backend != "none")
    return RankModel(runner, kv_pool, r2t, kv_tokens, max_len, per_token)


@dataclass(slots=True)
class Loaded:
    """What rank 0's Engine serves with, built by load().

    eos_ids: int32 token ids that end a request (the tokenizer's eos and the model config's,
    or for an HF directory given a folder's generation config, that folder's);
    table: the request table, page-locked on a GPU so batch metadata copies asynchronously;
    sampling_defaults: SamplingParams' fields a request leaves out take these values
    (aiollm/model/generation_defaults.py)."""

    device: torch.device
    dtype: torch.dtype
    model_config: ModelConfig
    model_path: str
    model_name: str
    tokenizer: object
    eos_ids: np.ndarray
    table: RequestTable
    rank: RankModel
    sampling_defaults: dict


def load(cfg: EngineConfig, device: torch.device, tp=None) -> Loaded:
    """Load rank 0's weights and tokenizer onto `device`, then build its KV pool, request
    table and model runner. Takes seconds to minutes: call it off the event loop.

    Raises what loading raises: OSError / ValueError for a missing or unreadable model or
    tokenizer or a KV pool that does not fit (naming kv_tokens or the option that sizes it;
    what the config and the device's memory tell, before the weights load: kv_plan.py),
    torch.OutOfMemoryError when the weights do not fit."""
    from aiollm.model import load_model

    t0 = time.monotonic()
    # the tokenizer before the weights where it is known (seconds at most): a missing or
    # damaged one fails in a moment, not after minutes of loading
    tokenizer = None
    if cfg.tokenizer is not None:
        try:
            check_tokenizer_path(cfg.tokenizer)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"tokenizer path {e}") from None  # not the model's
        tokenizer = tokenizer_for(cfg, cfg.tokenizer)
    elif (cfg.model is not None and cfg.load_format != "dummy"
          and os.path.isdir(os.path.expanduser(cfg.model))):
        try:
            check_tokenizer_path(cfg.model)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"model path {e}; give one with --tokenizer "
                                    "(Engine's and LLM's tokenizer=)") from None
        # transformers' AutoTokenizer reads config.json too: a damaged one is named as the
        # model's config (read_config's ValueError), not as an unreadable tokenizer
        from aiollm.model.loader import read_config

        read_config(cfg.model)
        tokenizer = tokenizer_for(cfg, os.path.expanduser(cfg.model))
    # before the weights: a bad value in the file fails in a moment, not after minutes
    defaults = sampling_defaults(cfg.generation_config, cfg.model or "")
    folder_eos = folder_eos_ids(cfg.generation_config)
    if cfg.kv_cache_dtype != "auto" and cfg.dtype == "auto":  # EngineConfig checked the rest
        _check_auto_kv_cache_dtype(cfg, device)
    # what was asked of the model (its kind, its weights, its context), then a KV pool that
    # cannot work on this device: refused now, not after the weights, in that order (a
    # plan's error may go once the argument's is fixed)
    from aiollm.model.loader import auto_dtype, check_checkpoint, read_config

    check_load_format(cfg.load_format, cfg.model)
    config = read_config(cfg.model)
    check_checkpoint(cfg.model, cfg.load_format, cfg.max_model_len, config)
    check_kv_plan(cfg, config, device, resolve_dtype(cfg.dtype) or auto_dtype(config, device), tp)
    loaded = load_model(cfg.model, dtype=resolve_dtype(cfg.dtype), device=device,
                        load_format=cfg.load_format, max_model_len=cfg.max_model_len)
    dtype = loaded.dtype
    if tokenizer is None:  # the default model's, a .gguf file's, dummy weights'
        tokenizer = tokenizer_for(cfg, loaded.path)
    # the fewest tokens a text can be, read off the vocabulary here (a worker thread, tens
    # of ms) rather than by the first long prompt, which may be checked on the event loop
    floor_of(tokenizer)
    if cfg.chat_template is not None:  # every chat renders with it (checked: it compiles)
        tokenizer.chat_template = cfg.chat_template
        log.info("chats are rendered with the chat template given (chat_template, "
                 "--chat-template), not the tokenizer's own")
    mc = loaded.config
    model_name = cfg.served_model_name or model_name_of(loaded.path, cfg.model)
    log.info("weights and tokenizer loaded in %.1fs", time.monotonic() - t0)
    if len(tokenizer) > mc.vocab_size:
        # e.g. dummy weights of a config-only directory, served with the default model's
        # tokenizer: a prompt is refused only when one of its tokens falls past the vocabulary
        log.warning("the tokenizer has %d tokens, more than the model's vocabulary of %d: a "
                    "prompt holding a token id of %d or more is refused; serve the model's own "
                    "tokenizer (--tokenizer)", len(tokenizer), mc.vocab_size, mc.vocab_size)
    # a folder's generation config (--generation-config PATH) replaces an HF directory's
    # own (vLLM reads one); a GGUF file's ids are its vocabulary's (llama.cpp's end of
    # generation), kept as the tokenizer's eos is
    own = mc.eos_token_ids if folder_eos is None or os.path.isfile(loaded.path) else []
    eos = set(own) | set(folder_eos or ())
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    if outside := sorted(t for t in eos if not 0 <= t < mc.vocab_size):
        # never sampled, and an index past the logits in min_tokens' ban (the step failed)
        log.warning("end-of-sequence ids %s are outside the model's vocabulary of %d (a "
                    "config's or the tokenizer's eos): ignored", outside, mc.vocab_size)
        eos.difference_update(outside)
    eos_ids = np.array(sorted(eos), dtype=np.int32)
    log.info("requests end at token ids %s (the tokenizer's eos and the model's end ids)",
             eos_ids.tolist())
    rank = build_rank_model(cfg, loaded, device, dtype, tp, eos_ids.tolist())
    table = RequestTable(cfg.table_capacity, pin_memory=device.type == "cuda")
    log.info("model %s (%s) dtype %s device %s: loaded in %.1fs", model_name, mc.architecture,
             str(dtype).removeprefix("torch."), device, time.monotonic() - t0)
    log.info("KV pool: %d tokens (%s), max model len %d, %s scheduler, prefix cache %s",
             rank.kv_tokens, byte_size(rank.kv_tokens * rank.kv_bytes_per_token),
             rank.max_model_len, cfg.scheduler, "on" if cfg.prefix_cache else "off")
    if rank.max_model_len < mc.max_position and cfg.max_model_len is None:
        # the pool, not the model's context, is the limit: max_model_len left out is the
        # longest that fits, as vLLM's --max-model-len auto (one given is held or refused)
        # what sized the pool: SGLang's bound where it binds, LLM's cpu_kv_tokens (no flag),
        # vLLM's kv_cache_memory_bytes
        sizer = pool_sizer(cfg, device, rank.kv_tokens)
        raise_ = (named(sizer) if sizer in SIZES
                  else f"kv_tokens (--kv-tokens) or, on a GPU, {named(memory_share(cfg))}")
        log.warning("the KV cache holds %d tokens, less than the model's context of %d: a "
                    "request's prompt and output are limited to %d tokens; raise %s, or give "
                    "max_model_len (--max-model-len) of at most %d to silence this warning",
                    rank.kv_tokens, mc.max_position, rank.max_model_len, raise_,
                    rank.max_model_len)
    log_defaults(defaults, cfg.generation_config)
    return Loaded(device, dtype, mc, loaded.path, model_name, tokenizer, eos_ids, table, rank,
                  defaults)


def _check_auto_kv_cache_dtype(cfg: EngineConfig, device: torch.device) -> None:
    """cfg.kv_cache_dtype against the dtype `dtype auto` runs cfg.model in on `device`
    (from its config, before the weights load): ValueError naming both unless equal."""
    from aiollm.model.loader import auto_dtype, read_config

    dtype = str(auto_dtype(read_config(cfg.model), device)).removeprefix("torch.")
    where = "the CPU" if device.type == "cpu" else "this GPU for this checkpoint"
    check_kv_cache_dtype(cfg.kv_cache_dtype, dtype, f" (dtype auto on {where})")


def tokenizer_for(cfg: EngineConfig, model_path: str):
    """The serving tokenizer: cfg.tokenizer when given, else the model's own; a dummy-weights
    model without one (a config-only directory for benchmarks) gets the default model's.

    Raises OSError / ValueError when the tokenizer cannot be read."""
    from aiollm.model import load_serving_tokenizer as load_tokenizer

    if cfg.tokenizer is not None:  # load() has checked that it holds one
        return load_tokenizer(cfg.tokenizer)
    if cfg.load_format == "dummy":
        try:
            check_tokenizer_path(model_path)
        except FileNotFoundError:  # not a damaged one: that is an error, as without dummy
            log.warning("%s has no tokenizer; using the default model's", model_path)
            return load_tokenizer(None)
    return load_tokenizer(model_path)


def model_name_of(path: str | None, given: str | None) -> str:
    """The name the API reports for a model: the file stem of a .gguf, else the directory
    name, of what the user gave (or of the resolved path when they gave none); a relative
    path is read from the working directory ("." is the directory's own name, not "")."""
    if given is None and path is not None:
        given = path
    if given is None:
        return "default"
    p = Path(os.path.abspath(os.path.expanduser(given)))
    return p.stem if p.suffix == ".gguf" else p.name
