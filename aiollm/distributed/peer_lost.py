"""What a node says when a collective failed once the group was made: whether the error is
a peer's process that ended (gloo's "Connection closed by peer", NCCL's remote error, the
store's DistError) or this rank's own (a device error, which torch raises as a plain
RuntimeError, or from NCCL as a DistBackendError: "unhandled cuda error"), and the message
naming the other node that ended.

A rank of this node that failed only because the other node ended ("collateral": it
exited 1 with such an error) is not the one to blame: the other node is.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import torch.distributed as dist

from aiollm.config import EngineConfig

# torch's exception types of a failed store or its connection, by name (a rank's error file
# holds "Type: message"): node 0's store gone
STORE_ERRORS = ("DistError", "DistNetworkError", "DistStoreError")
# a collective's words for a peer gone: gloo's for a socket closed under it, its read
# ("Connection closed by peer") and its write (the OS's "Connection reset by peer", "Broken
# pipe"); NCCL's ncclRemoteError ("remote process exited or there was a network error").
# NCCL's other errors (DistBackendError too) are this rank's own: "unhandled cuda error"
PEER_CLOSED = ("by peer", "Broken pipe", "remote process exited", "ncclRemoteError")


def peer_ended(kind: str, text: str) -> bool:
    """Whether an error of type `kind` (its name) and message `text` is a collective's that
    failed because a peer's process ended: the store's errors, and a collective's (a plain
    RuntimeError from gloo, a DistBackendError) only with the words of PEER_CLOSED (a
    device error is this rank's own, and either type too)."""
    if kind in STORE_ERRORS:
        return True
    return (kind in ("RuntimeError", "DistBackendError")
            and any(w in text for w in PEER_CLOSED))


def peer_ended_error(error: BaseException) -> bool:
    """peer_ended for an exception."""
    if type(error) is RuntimeError or isinstance(error, dist.DistError):
        return peer_ended(type(error).__name__, str(error))
    return False


def only_collateral(procs: dict[int, subprocess.Popen], error_file: Callable[[int], str]) -> bool:
    """Every spawned rank of `procs` (rank: process) that exited failed in a collective on
    a peer that ended (its error file, `error_file(rank)`, says so, and it exited 1): the
    rank lost is another node's. A rank killed, or one that failed on its own, is not so:
    its exit, or its error, is the cause."""
    for rank, p in procs.items():
        code = p.poll()
        if code is None:
            continue
        try:
            with open(error_file(rank)) as f:
                kind, _, text = f.read().partition(":")
        except OSError:
            return False
        if code != 1 or not peer_ended(kind, text):
            return False
    return True


def other_node_lost(cfg: EngineConfig, rdv, error: BaseException | str, when: str) -> str:
    """Why a collective failed `when` ("while this node served") once the group was made,
    when no rank of this node was lost: another node's process ended (killed, or crashed
    in C++). Node 0's is the one whose rendezvous store closed (`rdv`, this node's
    Rendezvous); with two nodes, the other one."""
    others = [k for k in range(cfg.nnodes) if k != cfg.node_rank]
    if cfg.node_rank != 0 and rdv is not None and not rdv.node_0_alive():
        others = [0]
    what = (f"tensor parallel node {others[0]} ({rdv.ranks_of(others[0])})"
            if len(others) == 1 else
            f"a rank of tensor parallel nodes {', '.join(map(str, others))}")
    return (f"{what} ended {when} (killed? see its log): the group cannot go on without "
            f"it; start every node again ({error})")
