"""What every node of a tensor-parallel group must be started with alike: the model and the
flags that shape each rank's model, KV pool, request rows and step collectives. Node 0
posts its own to the rendezvous and every other node compares them before it arrives
(Rendezvous.meet): a node started otherwise made the group, then hung in a collective rank
0 never made (another layer count, warm-up or CUDA graphs), aborted in gloo (another dtype
or width), or wrote past its rows (a longer --max-model-len on node 0). vLLM's users start
every node with the same arguments; the model's path may differ from node to node, its
config may not.
"""

from __future__ import annotations

import hashlib

from aiollm.config import EngineConfig
from aiollm.model.config import ModelConfig


def _flag(on: bool) -> str:
    return "given" if on else "not given"


def start_settings(cfg: EngineConfig, model: ModelConfig) -> dict[str, str]:
    """{setting as the user names it (a flag, or "the model"): its value as shown in the
    error}: what another node must match. The model is told by its shape and a digest of
    its whole config (rope, norms, biases and the rest are not shown but compared)."""
    digest = hashlib.sha256(repr(model).encode()).hexdigest()[:12]
    shown = (f"{model.architecture} ({model.num_layers} layers, hidden size "
             f"{model.hidden_size}, {model.num_heads} heads, {model.num_kv_heads} KV heads, "
             f"vocabulary {model.vocab_size}; config {digest})")
    return {
        "the model": shown,
        "--dtype": cfg.dtype,
        "--kv-cache-dtype": cfg.kv_cache_dtype,
        "--max-model-len": str(cfg.max_model_len) if cfg.max_model_len else "(the model's)",
        "--load-format": cfg.load_format,
        "--device": cfg.device.split(":")[0],
        "--max-running-requests": str(cfg.max_running_requests),
        "--table-capacity": str(cfg.table_capacity),
        "--max-prefill-tokens": str(cfg.max_prefill_tokens),
        "--mixed-prefill-tokens": str(cfg.mixed_prefill_tokens),
        "--cuda-graph-max-batch": str(cfg.cuda_graph_max_batch),
        "--no-cuda-graph": _flag(not cfg.cuda_graph),
        "--no-warm-up": _flag(not cfg.warm_up),
    }
