"""What every node of a tensor-parallel group must be started with alike: the model and the
flags that shape each rank's model, KV pool, request rows and step collectives. Node 0
posts its own to the rendezvous and every other node compares them before it arrives
(Rendezvous.meet): a node started otherwise made the group, then hung in a collective rank
0 never made (another layer count, warm-up or CUDA graphs), aborted in gloo (another dtype
or width), or wrote past its rows (a longer --max-model-len on node 0). vLLM's users start
every node with the same arguments; the model's path may differ from node to node, its
config may not. Before them, every rank compares rank 0's --tensor-parallel-size and
--nnodes (the shape rank 0 posts as it hosts the store): a rank of another shape would be
counted as another node's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch.distributed as dist

from aiollm.config import EngineConfig
from aiollm.model.config import ModelConfig

if TYPE_CHECKING:
    from aiollm.distributed.rendezvous import Rendezvous


# a value that `auto` resolved to is shown with this mark, and is the same setting as that
# value given (a node given --dtype auto runs alike with one given the checkpoint's dtype)
AUTO = " (auto)"


def _flag(on: bool) -> str:
    return "given" if on else "not given"


def _resolved(given: str, value: str) -> str:
    return value + AUTO if given == "auto" else value


def start_settings(cfg: EngineConfig, model: ModelConfig) -> dict[str, str]:
    """{setting as the user names it (a flag, or "the model"): its value as shown in the
    error}: what another node must match. The model is told by its shape and a digest of
    its whole config (rope, norms, biases and the rest are not shown but compared); --dtype,
    --kv-cache-dtype and --device auto by what they resolve to on this node (marked AUTO)."""
    from aiollm.distributed.placement import rank_device
    from aiollm.model.loader import auto_dtype

    device = rank_device(cfg, 0)
    dtype = (cfg.dtype if cfg.dtype != "auto"
             else str(auto_dtype(model, device)).removeprefix("torch."))
    kv_dtype = dtype if cfg.kv_cache_dtype == "auto" else cfg.kv_cache_dtype
    digest = hashlib.sha256(repr(model).encode()).hexdigest()[:12]
    shown = (f"{model.architecture} ({model.num_layers} layers, hidden size "
             f"{model.hidden_size}, {model.num_heads} heads, {model.num_kv_heads} KV heads, "
             f"vocabulary {model.vocab_size}; config {digest})")
    return {
        "the model": shown,
        "--dtype": _resolved(cfg.dtype, dtype),
        "--kv-cache-dtype": _resolved(cfg.kv_cache_dtype, kv_dtype),
        "--max-model-len": str(cfg.max_model_len) if cfg.max_model_len else "(the model's)",
        "--load-format": cfg.load_format,
        "--device": _resolved(cfg.device, device.type),
        "--max-running-requests": str(cfg.max_running_requests),
        "--table-capacity": str(cfg.table_capacity),
        "--max-prefill-tokens": str(cfg.max_prefill_tokens),
        "--mixed-prefill-tokens": str(cfg.mixed_prefill_tokens),
        "--cuda-graph-max-batch": str(cfg.cuda_graph_max_batch),
        "--no-cuda-graph": _flag(not cfg.cuda_graph),
        "--no-warm-up": _flag(not cfg.warm_up),
    }


def differing(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The settings of `ours` that `theirs` (start_settings of two nodes) do not match: a
    value auto resolved to matches that value given."""
    return [k for k, v in ours.items()
            if theirs.get(k, "").removesuffix(AUTO) != v.removesuffix(AUTO)]


def shape(rdv: Rendezvous) -> str:
    """The flags that shape the group, as rank 0 posts them as it hosts the store: each
    "name (--flag)", which a message's rewriting names as the user typed it."""
    return (f"tensor parallel size {rdv.size} (--tensor-parallel-size) over {rdv.nnodes} "
            f"node(s) (--nnodes)")


def check_shape(rdv: Rendezvous, store: dist.TCPStore) -> None:
    """ValueError when rank 0 was started with another --tensor-parallel-size or
    --nnodes than rank `rdv.rank`: its ranks would be counted as another node's."""
    from aiollm.distributed.rendezvous import PREFIX

    if rdv.rank == 0:
        return
    theirs = store.get(f"{PREFIX}shape").decode(errors="replace")  # set as it was hosted
    if theirs != shape(rdv):
        raise ValueError(
            f"this node was started with a {shape(rdv)}, node 0 (the rendezvous at "
            f"{rdv.addr}) with a {theirs}: start every node with the same")


def check_settings(rdv: Rendezvous, store: dist.TCPStore, check: Callable[[], None] | None,
                   deadline: float) -> None:
    """Rank 0: post its settings (rdv.settings). Another rank given settings: wait for
    rank 0's (it posts them as it arrives; Ctrl-C, `check`, another node's failure
    (Rendezvous._check_failed) and the timeout end the wait), then ValueError naming those
    that differ. Before this rank arrives:
    a rank refused once counted, rank 0 met it and waited for it to make the group."""
    from aiollm.distributed.rendezvous import POLL_S, PREFIX

    key = f"{PREFIX}settings"
    if rdv.rank == 0:
        store.set(key, json.dumps(rdv.settings or {}))
        return
    if not rdv.settings:
        return
    while not store.check([key]):
        rdv._check_failed(store)
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank 0 (node 0) did not reach the tensor parallel rendezvous at "
                f"{rdv.addr} within {rdv.timeout}, though it hosts it: see node 0's log")
        time.sleep(POLL_S)
    theirs = json.loads(store.get(key))
    differ = differing(rdv.settings, theirs)
    if differ:
        node = rdv.node_of(rdv.rank)
        raise ValueError(
            f"node {node} was started with {settings_said(rdv.settings, differ)}, node 0 "
            f"(the rendezvous at {rdv.addr}) with {settings_said(theirs, differ)}: start "
            f"every node with the same model and flags (the model's path may differ, not "
            f"its files)")


def settings_said(settings: dict[str, str], names: list[str]) -> str:
    """The settings `names` of `settings` (start_settings') in words: an option's as "name
    value (--flag)" ("max_model_len 64 (--max-model-len)"), the form a message's flags are
    rewritten in as the user typed them (cli/log_config.py: SGLang's --context-length); a
    switch's ("--no-cuda-graph given") and the model's as they are."""
    def said(name: str) -> str:
        value = settings.get(name, "(none)")
        if name.startswith("--no-") or not name.startswith("--"):
            return f"{name} {value}"
        return f"{name[2:].replace('-', '_')} {value} ({name})"

    return ", ".join(map(said, names))
