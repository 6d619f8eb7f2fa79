"""Where each rank of a tensor-parallel group runs and how it joins the group: node k of
--nnodes holds ranks [k N / nnodes, (k + 1) N / nnodes) of N = --tensor-parallel-size, and
rank r uses its node's GPU r mod (N / nnodes) (or the CPU); `join` makes the group over the
rendezvous (rendezvous.py): a device group (NCCL on GPUs, gloo on the CPU) for the model's
collectives, and a gloo group of its own for rank 0's step messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from aiollm.config import EngineConfig
from aiollm.distributed.group import TensorParallel
from aiollm.distributed.rendezvous import Rendezvous
from aiollm.model import parallel

# the host group's (step messages, start-up checkpoints): how long a follower waits for rank
# 0's next step message, and a rank at a start-up checkpoint for the others (torch's default
# for a gloo group)
HOST_GROUP_TIMEOUT = timedelta(minutes=30)


def node_ranks(cfg: EngineConfig) -> range:
    """The ranks of node cfg.node_rank, its own process's first."""
    per = cfg.tensor_parallel_size // cfg.nnodes
    return range(cfg.node_rank * per, (cfg.node_rank + 1) * per)


def rank_device(cfg: EngineConfig, rank: int) -> torch.device:
    """The device of `rank` on its node: CUDA GPU rank mod ranks-per-node, or the CPU."""
    kind = cfg.device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", rank % len(node_ranks(cfg)))


def check_devices(cfg: EngineConfig) -> None:
    """Raise ValueError unless this node sees a GPU for each of its ranks (on CUDA)."""
    if rank_device(cfg, 0).type != "cuda":
        return
    need, have = len(node_ranks(cfg)), torch.cuda.device_count()
    if have < need:
        raise ValueError(
            f"a tensor parallel size (--tensor-parallel-size) of {cfg.tensor_parallel_size} "
            f"over {cfg.nnodes} node(s) needs "
            f"{need} GPUs on this node, but {have} are visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def join(cfg: EngineConfig, rank: int, init_addr: str, timeout: timedelta,
         joining: Callable[[], None] | None = None, rendezvous: Rendezvous | None = None,
         check: Callable[[], None] | None = None) -> TensorParallel:
    """Join the group as `rank`: the rendezvous at `init_addr` (`rendezvous`, when its
    caller made it), the device and gloo groups, and the model's shard plan, waiting up to
    `timeout` (launch.INIT_TIMEOUT) in the rendezvous and in a collective of start-up
    (init_process_group's timeout). `joining` is called once the rank's device is set,
    just before the rendezvous; `check` at each look of the rendezvous' wait
    (Rendezvous.meet: what it raises ends the wait)."""
    device = rank_device(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if joining is not None:
        joining()
    rendezvous = rendezvous or Rendezvous(init_addr, rank, cfg.tensor_parallel_size,
                                          cfg.nnodes, timeout)
    store = rendezvous.meet(check)
    backend = "nccl" if device.type == "cuda" else "gloo"
    _reset_group_names()
    dist.init_process_group(backend, store=store, rank=rank,
                            world_size=cfg.tensor_parallel_size, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    # its own group even on the CPU: a step message must never pair with a collective of the
    # model (a constrained step's ids are broadcast after rank 0 may have sent the next step)
    cpu_group = dist.new_group(backend="gloo", timeout=HOST_GROUP_TIMEOUT)
    tp = TensorParallel(rank, cfg.tensor_parallel_size, device, cpu_group)
    parallel.set_current(tp)
    return tp


def _reset_group_names() -> None:
    """Number this process's groups from 0 again, as a fresh rank does: torch names a group
    (its keys in the store) by a per-process count, which destroy_process_group resets only
    where the default group was made. An init_process_group that failed (a rank lost while
    the group was made) left it advanced on rank 0, so that the next start-up in the process
    (an offline LLM made again) named its groups unlike its new ranks, and waited out
    INIT_TIMEOUT for keys no rank set. No group exists here: nothing else uses the count."""
    world = getattr(dist.distributed_c10d, "_world", None)  # (private: torch 2.11's)
    if not dist.is_initialized() and hasattr(world, "group_count"):
        world.group_count = 0
