"""Rank start-up: the process a user started spawns its node's other ranks, joins the
torch.distributed group over the TCP rendezvous (rendezvous.py: a node that fails before it
joins is named there by every rank, at once) and watches the ranks it spawned.

Ranks: N = --tensor-parallel-size over --nnodes nodes, N / nnodes per node (which ones, on
which device, and how each joins the group: placement.py).
Rank 0 (node 0's own process) serves HTTP; every other rank runs the follower loop
(follower.py). No torchrun: each node's process spawns the rest of its node with
subprocess, each child a `python -m aiollm.distributed.follower` (spawned_ranks.py: the
children, their files, why one ended).

Failure is loud: a watchdog thread polls the spawned ranks; when one exits that should not,
it logs which rank and why (the exception text the rank wrote to its error file, or the
signal that killed it), kills the node's other ranks and exits the process with status 1
(once `on_failure` has failed the requests in flight, and a moment later for their
answers); an offline LLM's ranks (exit_on_failure False) leave the process to its user,
whose calls then raise naming the rank. While the caller still loads (start-up), a lost
rank is raised to it instead, in place of the collective's error rank 0 met (start_failed);
rank 0 enters the rendezvous only once its node's spawned ranks are about to (each writes a
file), so one lost before it (its import, its device) is raised at once, not after the
rendezvous' timeout; one lost once every rank met there, while the group is made (its
peers wait inside init_process_group or new_group for its address in the store, a wait
nothing interrupts), ends node 0's wait at once: the watchdog closes the rendezvous' store
(rank_watchdog.py), and start-up raises the lost rank; one whose load fails meets the
others at their next start-up checkpoint with its error (group.py), so that every rank, on
every node, names it. A caller
that gives up on start-up (abandon: Ctrl-C) ends the ranks from its side. A spawned rank
exits when its parent is gone (follower.py watches it), and one whose rank 0 vanished fails
its next collective.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta

import torch.distributed as dist

from aiollm.config import EngineConfig
from aiollm.distributed.group import STOP, RankLost, TensorParallel
from aiollm.distributed.peer_lost import only_collateral, other_node_lost, peer_ended_error
from aiollm.distributed.placement import check_devices, join, node_ranks
from aiollm.distributed.rank_watchdog import RankWatchdog
from aiollm.distributed.rendezvous import Rendezvous
from aiollm.distributed.spawned_ranks import SpawnedRanks
from aiollm.distributed.start_settings import start_settings
from aiollm.model import parallel

log = logging.getLogger(__name__)

INIT_TIMEOUT = timedelta(minutes=10)  # loading a large model on a slow disk takes minutes
# start-ups given up on in the rendezvous or the load, whose threads still run: they end
# their ranks and leave the process's one group when done, which a new start-up waits for
_LEFT = threading.Condition()
_left_starts: set[NodeRanks] = set()
_GIVEN_UP = "tensor parallel start-up given up by its caller"  # its thread's RuntimeError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_left_starts() -> None:
    """Wait for the start-ups given up on while their threads were in the rendezvous or
    the load (NodeRanks.abandon) to leave the process's one group (up to INIT_TIMEOUT)."""
    with _LEFT:
        if _left_starts:
            log.info("waiting for a tensor parallel start-up given up on to end its ranks")
        _LEFT.wait_for(lambda: not _left_starts, timeout=INIT_TIMEOUT.total_seconds())


class NodeRanks:
    """This node's lead process: the ranks it spawned, their watchdog, and the group."""

    def __init__(self, cfg: EngineConfig, on_failure: Callable[[str], None] | None = None,
                 exit_on_failure: bool = True):
        self.cfg = cfg
        self.on_failure = on_failure
        # a server exits on a lost rank (its supervisor restarts it); an offline LLM's
        # process is its user's: its calls raise instead (lost says why)
        self.exit_on_failure = exit_on_failure
        self.lost: str | None = None  # set by fail(): the group cannot go on
        self.stopping = False
        self.starting = True  # until the caller's load is done: see started(), start_failed()
        self.spawned = SpawnedRanks()
        self.tp: TensorParallel | None = None
        # start-up runs on a thread its caller may give up on (abandon): they meet here
        self._lock = threading.Lock()
        self._abandoned = False
        self._joining = False  # in the rendezvous or past it
        self._loaded = False
        self._ended = False  # by abort()
        # ended and joined by stop() and abort(): its thread holds this object, and so the
        # group; a daemon thread that dropped the last reference while the interpreter
        # exited aborted the process (see RankWatchdog.end)
        self.watchdog = RankWatchdog()
        self.rendezvous: Rendezvous | None = None

    @property
    def procs(self) -> dict[int, subprocess.Popen]:
        """This node's spawned ranks: rank, its process (SpawnedRanks.procs)."""
        return self.spawned.procs

    @procs.setter
    def procs(self, procs: dict[int, subprocess.Popen]) -> None:
        self.spawned.procs = procs

    def start(self) -> TensorParallel:
        """Check this node, spawn its other ranks and join the group as its first rank.
        A failure before the group is made is posted to the rendezvous (Rendezvous.fail),
        so that the other nodes raise RankLost naming this node and why at once."""
        cfg = self.cfg
        _wait_for_left_starts()  # (its rendezvous' port is closed by then)
        addr = cfg.dist_init_addr or f"127.0.0.1:{_free_port()}"
        self.rendezvous = Rendezvous(addr, node_ranks(cfg)[0], cfg.tensor_parallel_size,
                                     cfg.nnodes, INIT_TIMEOUT)
        try:
            if cfg.node_rank == 0:  # hosted from the first: the other nodes may come first
                self.rendezvous.open()
            return self._start(addr)
        except BaseException as e:
            # rank 0 interrupted needs no word: its store closes with it, as every rank sees
            if cfg.node_rank > 0 or not (self._abandoned or isinstance(e, KeyboardInterrupt)):
                self.rendezvous.fail(cfg.node_rank, e, self._check_given_up)
            raise

    def _start(self, addr: str) -> TensorParallel:
        cfg = self.cfg
        check_devices(cfg)
        from aiollm.model.loader import read_config

        model = read_config(cfg.model)
        parallel.check_divisible(model, cfg.tensor_parallel_size)
        self.rendezvous.settings = start_settings(cfg, model)
        ranks = node_ranks(cfg)
        config_json = json.dumps(asdict(cfg))
        with self._lock:  # (abandon kills what was spawned)
            for rank in ranks[1:]:
                if self._abandoned:
                    raise RuntimeError(_GIVEN_UP)
                self.spawned.spawn(rank, addr, config_json, model)
        log.info("tensor parallel: %d ranks over %d node(s); this node runs ranks %d-%d, "
                 "rendezvous at %s", cfg.tensor_parallel_size, cfg.nnodes, ranks[0],
                 ranks[-1], addr)
        self.watchdog.start(self)
        self._wait_for_joining()
        with self._lock:
            if self._abandoned:
                raise RuntimeError(_GIVEN_UP)
            self._joining = True
        self.tp = join(cfg, ranks[0], addr, INIT_TIMEOUT, rendezvous=self.rendezvous,
                       check=self._check_start)
        return self.tp

    def _check_start(self) -> None:
        """While start-up waits for other ranks: RankLost naming a rank it spawned that was
        lost (its import, its device or its config failed), RuntimeError when its caller
        gave up on it (abandon)."""
        if (lost := self._lost_rank()) is not None:
            raise RankLost(lost)
        self._check_given_up()

    def _check_given_up(self) -> None:
        if self._abandoned:
            raise RuntimeError(_GIVEN_UP)

    def _wait_for_joining(self) -> None:
        """Return once each rank spawned is about to join the rendezvous; RuntimeError
        RankLost naming a rank lost before (its import, its device or its config failed),
        which rank 0 would wait for in the rendezvous until INIT_TIMEOUT, or another node
        that posted its failure to the rendezvous (node 0, whose store is up: else it
        learnt it only once its slowest rank had started); TimeoutError past it."""
        deadline = time.monotonic() + INIT_TIMEOUT.total_seconds()
        while waiting := self.spawned.not_joining():
            self._check_start()
            if self.rendezvous is not None:
                self.rendezvous.check_failed()
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensor parallel ranks did not start within "
                                   f"{INIT_TIMEOUT}: {', '.join(waiting)} not written")
            time.sleep(0.02)

    def _lost_rank(self) -> str | None:
        if (exited := self.spawned.exited()) is not None:
            rank, code = exited
            cause = self.spawned.cause(rank, code)
            if (self.cfg.nnodes > 1 and not self.starting
                    and only_collateral(self.procs, self.spawned.error_file)):
                # it failed only as rank 0 would: on another node's closed sockets
                return self.other_node_lost(cause.removeprefix("failed: "),
                                            "while this node served")
            return f"tensor parallel rank {rank} {cause}"
        # a rank whose start-up failed waits at the next start-up checkpoint for the
        # others (TensorParallel.start_failed) with its error file written: on one node,
        # where every rank is this process's, that is failure enough (rank 0 may load
        # for minutes before it reaches the checkpoint)
        if self.cfg.nnodes == 1 and (rank := self.spawned.erred()) is not None:
            return f"tensor parallel rank {rank} {self.spawned.cause(rank, 1)}"
        return None

    def lost_rank(self, wait: float = 0.0) -> str | None:
        """Which spawned rank exited and why (as the watchdog logs it), looking for up to
        `wait` seconds; None when all are alive. A collective that failed on rank 0 usually
        means a rank died: its peers see its sockets close a moment before it can be reaped.
        Serving over nodes, ranks that exited only on another node's closed sockets name
        that node (peer_lost.only_collateral). A node that spawned no rank (one rank a
        node) has none to lose: no wait."""
        if not self.spawned.procs:
            return None
        deadline = time.monotonic() + wait
        while (lost := self._lost_rank()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return lost

    def started(self) -> None:
        """The caller's load is done: a rank lost from now on ends the process (fail)."""
        self.starting = False

    def loaded(self) -> None:
        """Start-up's thread: the caller's load is done. When the caller gave up on it
        meanwhile (abandon), end the ranks and raise RuntimeError: nobody takes them."""
        with self._lock:
            self._loaded = True
            abandoned = self._abandoned
        if abandoned:
            self.abort()
            raise RuntimeError(_GIVEN_UP)

    def abandon(self) -> None:
        """The caller gave up on start-up (Ctrl-C, a cancelled start()), which may still
        run on its thread. Done (loaded): end the ranks now. Before the rendezvous: kill
        the spawned ranks, so that start-up's wait for them fails at once and its own path
        (start_failed) ends. In the rendezvous or the load: leave them to the thread, which
        ends them and leaves the group when done (a rank killed in the rendezvous left it
        waiting there for the group's timeout); a new start-up waits for that
        (_wait_for_left_starts). Left to a callback of the caller's event loop, which may
        end first (an LLM's at Ctrl-C), the ranks and the group outlived the LLM, and the
        next LLM could not make a group of its own. From any thread."""
        with self._lock:
            if self._ended:  # start-up failed on its own (start_failed): nothing is left
                return
            self._abandoned = True
            self.stopping = True
            done, joining = self._loaded, self._joining
            if joining and not done:
                with _LEFT:
                    _left_starts.add(self)
        if done:
            self.abort()
        elif not joining:
            self.spawned.kill()

    def start_failed(self, exc: BaseException) -> RankLost | None:
        """Start-up (the group's join or the caller's load) failed on this rank with `exc`:
        tell the other nodes' ranks at the next start-up checkpoint (they learn it only
        through the group; on one node the ranks are this process's and end at once), end
        the ranks (abort) and return the error to raise from `exc` when it is a
        collective's (gloo's "Connection closed by peer": a plain RuntimeError or a
        DistError) and a rank was lost: RankLost, with that rank's own exception type and
        message; else None (this rank's own error, such as a shape check every rank makes,
        or RankLost, says it). The watchdog leaves a lost rank to this path while starting."""
        if self.tp is not None and (self.tp.rank != 0 or self.cfg.nnodes > 1):
            self.tp.start_failed(exc)
        collective = type(exc) is RuntimeError or isinstance(exc, dist.DistError)
        # (the watchdog may have failed the group meanwhile, its ranks' files removed)
        lost = (self.lost or self.lost_rank(wait=1.0)) if collective else None
        if (self.cfg.nnodes > 1 and peer_ended_error(exc)
                and (lost is None or only_collateral(self.procs, self.spawned.error_file))):
            # (no group yet: node 0 stopped hosting the store, its rank lost meanwhile)
            lost = self.other_node_lost(exc, "during start-up, after the group was made"
                                        if self.tp is not None else "while the group was made")
        self.abort()
        return RankLost(lost) if lost is not None else None

    def other_node_lost(self, exc: BaseException | str, when: str) -> str:
        """Why a collective failed `when` (while the group was made or after), no rank of
        this node lost: the other node ended (peer_lost.other_node_lost)."""
        return other_node_lost(self.cfg, self.rendezvous, exc, when)

    def fail(self, message: str) -> None:
        """A rank is lost: the group cannot go on. Log why, stop every rank of this node,
        let on_failure fail what is in flight, and exit with status 1 (on a thread of its
        own: on_failure may need the caller's event loop); without exit_on_failure, set
        `lost` to why and leave the process to its user."""
        if self.stopping:
            return
        self.stopping = True
        self.lost = message  # before any request in flight fails: a call after it sees it
        threading.Thread(target=self._fail, args=(message,), name="aiollm-tp-fail").start()

    def _fail(self, message: str) -> None:
        # a collective that failed on this rank usually means a rank died: name that one
        time.sleep(0.2)
        message = self.lost = self._lost_rank() or message
        log.error("%s: %s", message,
                  "stopping the server" if self.exit_on_failure else "the engine cannot go on")
        self.spawned.kill()
        self.spawned.remove_files()
        if self.on_failure is not None:
            try:
                self.on_failure(message)  # returns once the requests in flight failed
                time.sleep(0.5)  # their handlers write the answers
            except Exception:
                log.exception("while failing the requests in flight")
        if self.exit_on_failure:
            logging.shutdown()
            os._exit(1)

    def end_spawned(self) -> None:
        """End the watchdog, then kill the ranks this node spawned and remove their files:
        this process failed on its own (they may wait for it in a collective)."""
        self.stopping = True
        self.watchdog.end()
        self.spawned.kill()
        self.spawned.remove_files()

    def abort(self) -> None:
        """Rank 0 failed to start: end this node's ranks and leave the group."""
        with self._lock:
            self._ended = True
        self.end_spawned()
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.tp is not None:
            self.tp.release()
        if self.rendezvous is not None:
            self.rendezvous.close()  # (rank 0: its port, which a new start-up may take)
        parallel.set_current(None)
        with _LEFT:
            _left_starts.discard(self)
            _LEFT.notify_all()

    def stop(self, timeout: float = 10.0, leave_group: bool = True) -> None:
        """Rank 0: tell every follower to exit, and wait for this node's (kill after timeout)."""
        self.stopping = True
        self.watchdog.end()
        if self.tp is not None and self.tp.rank == 0 and self.lost is None:
            try:
                self.tp.send_step(STOP)
            except Exception as e:  # a follower already gone: nothing to tell it
                log.warning("could not send the stop to the followers: %s", e)
        self.spawned.reap(timeout)
        self.spawned.remove_files()
        if leave_group and dist.is_initialized():
            dist.destroy_process_group()
        if leave_group and self.tp is not None:
            self.tp.release()
        if self.rendezvous is not None:
            self.rendezvous.close()
        parallel.set_current(None)
