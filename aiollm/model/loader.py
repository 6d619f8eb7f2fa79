"""load_model: a ready-to-run LlamaForCausalLM from a local checkpoint or from random weights.

Sources: a Hugging Face directory (config.json + safetensors), a .gguf file (dequantized to the
run dtype), either as vLLM's load_format "safetensors" or "gguf" names it, or
load_format="dummy" (random weights of the config's shape, for benchmarks at large shapes;
the config may come from a directory holding only config.json). The model is
built on the meta device and materialised directly on the target device in the run dtype, so
loading never holds a second full copy of the weights. Local files only: nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from aiollm.model import parallel
from aiollm.model.config import ModelConfig
from aiollm.model.derived_cache import GGUFCache
from aiollm.model.granite_scales import fold_into
from aiollm.model.hf_config import load_hf_config
from aiollm.model.llama import LlamaForCausalLM
from aiollm.model.norm import RMSNorm
from aiollm.model.paths import LOAD_FORMATS, check_load_format, resolve_model_path
from aiollm.model.weights import WeightFiller
from aiollm.model.weights_layout import fused_source_name, to_llama_layout

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    model: LlamaForCausalLM
    config: ModelConfig
    path: str  # the .gguf file or the HF directory
    max_model_len: int  # positions the rotary cache covers

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def kv_heads(self) -> int:
        """KV heads this rank's KV pool holds (all of them without tensor parallelism)."""
        return self.model.shard_config.num_kv_heads

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def read_config(path: str | None) -> ModelConfig:
    """The ModelConfig of a model path (None: the default model), without its weights."""
    model_dir, gguf_name = resolve_model_path(path)
    if gguf_name is not None:
        return _gguf_config(os.path.join(model_dir, gguf_name), GGUFCache(
            os.path.join(model_dir, gguf_name)), need_reader=False)[0]
    return load_hf_config(model_dir)


def _gguf_config(path: str, cache: GGUFCache, need_reader: bool, warn: bool = False):
    """(config, parsed file or None) of a GGUF file: the config from the cache when it is
    there, the file parsed only when the config or (need_reader) the weights are not. With
    `warn`, logs what deriving the config warned of (metadata ignored: config_from_gguf),
    stored with it, so that every load of the file says it, not only the first."""
    cached = cache.load_config()
    if cached is not None and not need_reader:
        config, warnings, gguf = *cached, None
    else:
        from aiollm.model.weights_gguf import read_gguf

        gguf = read_gguf(path)
        config, warnings = gguf.config, gguf.warnings
        if cached is None:
            cache.store_config(config, warnings)
    for message in warnings if warn else ():
        log.warning("%s", message)
    return config, gguf


def _empty_model(config: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device):
    with torch.device("meta"):
        model = LlamaForCausalLM(config, max_len).to(dtype)
        if config.rms_norm_unit_offset:  # 1 + w stays float32 (ModelConfig says why)
            for module in model.modules():
                if isinstance(module, RMSNorm):
                    module.float()
    # Module.to_empty would do this through torch.empty_like, whose meta-tensor path imports
    # sympy (about a second of start-up) to compute strides a fresh tensor does not need.
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    model.init_rope()  # the rotary cache is uninitialised memory until now (and stays float32)
    return model.eval().requires_grad_(False)


def _init_dummy(model: LlamaForCausalLM, seed: int = 0) -> None:
    gen = torch.Generator(device=model.cos_sin_cache.device).manual_seed(seed)
    for name, p in model.named_parameters():
        _init_random(name, p.data, gen)
    # as WeightFiller scales what it copies: a tensor-parallel dummy model is the same model
    fold_into(model, model.config)


def _init_random(name: str, t: torch.Tensor, gen: torch.Generator) -> None:
    if name.endswith("norm.weight"):
        t.fill_(1.0)
    elif name.endswith(".bias"):
        t.zero_()
    else:
        # std 0.02 (the usual init) keeps activations finite through any depth.
        t.normal_(0.0, 0.02, generator=gen)


def _dummy_checkpoint(config: ModelConfig, dtype: torch.dtype, device: torch.device,
                      seed: int = 0):
    """(transformers name, tensor) of the random weights _init_dummy gives the whole model,
    one tensor at a time: a tensor-parallel rank keeps its part of each, so every rank count
    serves the same random model."""
    tp = parallel.current()
    parallel.set_current(None)
    try:
        with torch.device("meta"):
            full = LlamaForCausalLM(config, 1)
    finally:
        parallel.set_current(tp)
    gen = torch.Generator(device=device).manual_seed(seed)
    q, kv = config.q_size, config.kv_size
    # gate/up in halves: a shared expert's are of its own width, not intermediate_size
    fused = {"qkv_proj": (("q_proj", "k_proj", "v_proj"), (q, kv, kv)),
             "gate_up_proj": (("gate_proj", "up_proj"), None)}
    for name, p in full.named_parameters():
        t = torch.empty(p.shape, dtype=dtype, device=device)
        _init_random(name, t, gen)
        if config.rms_norm_unit_offset and name.endswith("norm.weight"):
            t.zero_()  # a checkpoint's w of Gemma's 1 + w: the filler adds the 1
        module = name.split(".")[-2] if "." in name else ""
        if module in fused:
            parts, sizes = fused[module]
            pieces = t.split(sizes) if sizes else t.chunk(2)
            for part, piece in zip(parts, pieces):
                yield name.replace(module, part), piece
        else:
            yield name, t


def load_model(
    path: str | None,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str,
    load_format: str = "auto",
    max_model_len: int | None = None,
    config: ModelConfig | None = None,
) -> LoadedModel:
    """Build the model of `path` (None: the default model) in `dtype` on `device`.

    dtype None is "auto" (`auto_dtype`): the checkpoint's float16 or bfloat16 on a GPU, else
    bfloat16 there and float32 on the CPU; LoadedModel.dtype says which was taken.
    max_model_len bounds the positions the rotary cache covers (default: the model's own
    context); load_format="dummy" fills the weights with random numbers instead of reading them;
    "safetensors" and "gguf" (vLLM's names) read them as "auto" does, from a path of that
    kind (else ValueError: paths.check_load_format). `config`: the path's ModelConfig as
    read_config gave it, which is then not read again (a spawned rank: its lead's).
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    check_load_format(load_format, path)
    device = torch.device(device)
    model_dir, gguf_name = resolve_model_path(path)
    full_path = os.path.join(model_dir, gguf_name) if gguf_name else model_dir
    if gguf_name is not None:
        cache = GGUFCache(full_path)
        if config is None:
            config = _gguf_config(full_path, cache, need_reader=False, warn=True)[0]
    elif config is None:
        config = load_hf_config(model_dir)
    check_checkpoint(path, load_format, max_model_len, config)
    max_len = max_model_len or config.max_position
    if dtype is None:
        dtype = auto_dtype(config, device)
    if gguf_name is None and load_format != "dummy":
        config, tensors, total, source_name = _hf_checkpoint(model_dir, config, device)
    model = _empty_model(config, max_len, dtype, device)

    if load_format == "dummy" and parallel.current() is not None:
        _fill(model, _dummy_checkpoint(config, dtype, device), None, "random weights")
    elif load_format == "dummy":
        _init_dummy(model)
    elif gguf_name is not None:
        _load_gguf(model, config, full_path, cache, dtype, device)
    else:
        _fill(model, tensors, total, os.path.basename(os.path.normpath(model_dir)),
              source_name)
    log.info("loaded %s (%s, %.1fM params, %s on %s, max_model_len %d)", full_path,
             config.architecture, config.num_params() / 1e6, dtype, device, max_len)
    return LoadedModel(model=model, config=config, path=full_path, max_model_len=max_len)


def check_checkpoint(path: str | None, load_format: str, max_model_len: int | None,
                     config: ModelConfig) -> None:
    """What load_model refuses of the model at `path` (None: the default model), its
    config read, before any weight: a max_model_len past the model's context (ValueError),
    an HF directory with no weights to read where load_format is not "dummy"
    (FileNotFoundError / ValueError: weights_hf.safetensors_files). The engine's start
    checks it before its KV plan (aiollm/engine/loading.py), so that an error in what was
    asked comes before one of the memory it would take."""
    if max_model_len is not None and max_model_len > config.max_position:
        raise ValueError(f"max_model_len {max_model_len} exceeds the model's context of "
                         f"{config.max_position}: set max_model_len (--max-model-len) to "
                         f"at most {config.max_position}")
    model_dir, gguf_name = resolve_model_path(path)
    if gguf_name is None and load_format != "dummy":
        from aiollm.model.weights_hf import safetensors_files

        safetensors_files(model_dir)


def auto_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype --dtype auto runs `config`'s model in on `device`: float32 on the CPU (the
    reference path, whose greedy ids must equal transformers' in fp32); on a GPU, the
    checkpoint's own float16 or bfloat16 (config.json's dtype / torch_dtype), else bfloat16
    (float32 checkpoints, GGUF files, configs that name none), as vLLM's auto keeps a float16
    checkpoint in float16."""
    if device.type == "cpu":
        return torch.float32
    if config.torch_dtype in (torch.float16, torch.bfloat16):
        return config.torch_dtype
    return torch.bfloat16


def _head_as_embed(hf_name: str) -> str:
    """The checkpoint's name of a tensor when its lm_head.weight is the tied embedding."""
    from aiollm.model.weights_hf import EMBED, LM_HEAD

    return LM_HEAD if hf_name == EMBED else hf_name


def _hf_checkpoint(model_dir: str, config: ModelConfig, device: torch.device):
    """(config, (transformers name, tensor) pairs, their count, WeightFiller's source_name)
    of an HF directory. A config tying the word embeddings is read as transformers reads
    it: untied over a checkpoint holding both with different values (its warning: the
    config is wrong), and an lm_head.weight alone taken for the embedding."""
    from aiollm.model.weights_hf import (
        EMBED,
        LM_HEAD,
        count_tensors,
        iter_safetensors,
        language_model_tensors,
        safetensors_files,
        tied_embedding_source,
    )

    files = safetensors_files(model_dir)
    total = count_tensors(files)  # reads every header: a damaged file is named first
    source = tied_embedding_source(files) if config.tie_word_embeddings else "embed"
    tensors = iter_safetensors(files, device)
    if config.architecture == "gemma3_text":  # a multimodal Gemma 3's language model alone
        tensors = language_model_tensors(tensors)
    if source == "both":
        log.warning("%s ties the word embeddings (tie_word_embeddings), but the checkpoint "
                    "holds an %s that differs from %s: loading them untied, as transformers "
                    "does; set tie_word_embeddings to false there to silence this warning",
                    os.path.join(model_dir, "config.json"), LM_HEAD, EMBED)
        config = replace(config, tie_word_embeddings=False)
    elif source == "lm_head":
        tensors = ((EMBED if name == LM_HEAD else name, t) for name, t in tensors)
        return config, tensors, total, _head_as_embed
    return config, tensors, total, None


def _load_gguf(model: LlamaForCausalLM, config: ModelConfig, path: str, cache: GGUFCache,
               dtype: torch.dtype, device: torch.device) -> None:
    """Fill `model` with a GGUF file's weights, from the cache of an earlier start when it has
    them: a one-rank CPU model maps its stored parameters; others read the dequantized
    tensors; only a miss dequantizes (and stores the result)."""
    tp = parallel.current()
    alone_on_cpu = device.type == "cpu" and tp is None
    if alone_on_cpu and cache.load_params(model, dtype):
        return
    name = os.path.basename(path)
    if (weights := cache.weights_path) is not None:
        from aiollm.model.weights_hf import count_tensors, iter_safetensors

        _fill(model, iter_safetensors([weights], device), count_tensors([weights]), name,
              gguf_name, gguf=True)
    else:
        from aiollm.model.weights_gguf import iter_gguf, num_weight_tensors

        log.info("reading and dequantizing %s (%s)", name, "once: cached for later starts"
                 if cache.dir else "the cache is off: AIOLLM_CACHE_DIR=off")
        gguf = _gguf_config(path, cache, need_reader=True)[1]
        tensors = iter_gguf(gguf)
        if not alone_on_cpu and (tp is None or tp.rank == 0):  # one writer per group
            tensors = cache.recording(tensors, config)
        _fill(model, tensors, num_weight_tensors(gguf), name, gguf_name, gguf=True)
    if alone_on_cpu:
        cache.store_params(model, dtype)


def gguf_name(hf_name: str) -> str:
    """weights_gguf.gguf_name, imported only when a message needs it: a load from the GGUF
    cache must not import the gguf package."""
    from aiollm.model.weights_gguf import gguf_name as name_in_file

    return name_in_file(hf_name)


def _fill(model: LlamaForCausalLM, tensors, total: int | None, label: str,
          source_name=None, *, gguf: bool = False) -> None:
    """Fill `model` from (transformers name, tensor) pairs; source_name, gguf: WeightFiller's.
    Phi-3's fused tensors are split and a partial rotary's q/k rows reordered first
    (weights_layout)."""
    filler = WeightFiller(model, fused_source_name(model.config, source_name), gguf=gguf)
    tensors = to_llama_layout(tensors, model.config, filler.errors.shape_error)
    # disable=None: the bar shows on a terminal and stays silent in logs and tests.
    for name, tensor in tqdm(tensors, total=total, desc=f"loading {label}", unit="tensor",
                             disable=None):
        filler.fill(name, tensor)
    filler.check_complete()
