"""The rendezvous of tensor-parallel start-up: every rank meets the others in a TCPStore
(torch.distributed's key-value store, the one its tcp:// init method makes) hosted by rank 0
at --dist-init-addr, then makes the process group over that store.

torch's own rendezvous waits inside C++ (rank 0 for every client, a client for the
server): Ctrl-C was held until its timeout (INIT_TIMEOUT, 10 minutes), and a node that
failed before it joined was seen only as that timeout, naming no node. Here each rank sets
its key, then polls for the others' in Python, so that:
- a node whose start-up failed before it joined (its checks, a rank it spawned) posts its
  error under its node's key, and every rank waiting raises RankLost naming that node,
  its ranks and the error within a poll;
- the timeout names the ranks that never arrived, their nodes and what to check;
- Ctrl-C ends the wait at once, and so does the caller's own `check` (a rank it spawned
  lost, a caller that gave up).

Keys, under "aiollm/tp/": "shape", rank 0's tensor parallel size and node count in words
(start_settings.shape), set as
it hosts the store (a rank started with others is refused, never counted); "arrived/R",
counted by rank R as it enters the wait; "alive/R", counted by rank R at each look while it
waits (its heartbeat); "met/R", set by rank R once it has seen every rank arrived;
"replaced/R/B", counted by a restart of rank R that replaces an arrival whose heartbeat
stopped at B. A second count of "arrived/R" is a rank started twice: refused while the
first shows it is alive (its heartbeat moves, or it met), else (the first was killed while
it waited: SIGKILL, OOM) it replaces the first; a rank whose heartbeat stood still for
STALE_S is not counted as arrived;
"failed/K", set by node K's lead process, "Type: message" of its error; "told", counted
by each rank that read a failure (rank 0 keeps its store up until all that arrived have,
up to LINGER_S; on one node, whose ranks are all its lead's, it does not wait). A client
waits for the server's port to accept before it makes its TCPStore (a connection probe):
torch's client retries inside C++, uninterruptible and logging each failed try.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

from aiollm.distributed.group import RankLost
from aiollm.distributed.start_settings import check_settings, check_shape, shape
from aiollm.stop_signal import describe

log = logging.getLogger(__name__)

PREFIX = "aiollm/tp/"
POLL_S = 0.05  # between two looks at the store, or two tries of the server's port
# a node whose start-up failed before rank 0's store was up waits this long for it, to tell
# (nodes started together: rank 0 hosts it once it has imported torch), then exits
TELL_S = 10.0
# the longest a client waits for the handshake of what listens at --dist-init-addr (torch
# retries it in C++, which Ctrl-C cannot interrupt): rank 0's store answers at once
HANDSHAKE_S = 5.0
# rank 0 that posted its node's failure keeps its store up this long at most, until each
# rank that arrived has read it (its "told" count): else the store closed with rank 0's
# exit before their next look, and they said only that node 0 ended
LINGER_S = 1.0
# an arrival whose heartbeat has not moved this long (many polls) is taken for a rank that
# was killed while it waited: it is not counted, and its rank's restart replaces it
STALE_S = 2.0
# a node waiting for rank 0's store to come up says so after NOTE_S, then every NOTE_EVERY_S
# (node 0 not yet started, or a wrong --dist-init-addr: else silent up to the timeout)
NOTE_S, NOTE_EVERY_S = 5.0, 60.0
# what every node must be started with alike, each flag as "name (--flag)", the form a
# message's flags are rewritten as the user typed them in (cli/log_config.py)
SAME_SHAPE = ("the same tensor parallel size (--tensor-parallel-size), node count (--nnodes) "
              "and rendezvous address (--dist-init-addr)")
# a process that ended closes its sockets one by one: rank 0's gloo connection may close,
# and another rank look at its store's port, before that port closes
SETTLE_S = 0.5


class Rendezvous:
    """Rank `rank`'s place in the rendezvous of `size` ranks over `nnodes` nodes at `addr`
    (HOST:PORT, hosted by rank 0), waiting up to `timeout` in all."""

    def __init__(self, addr: str, rank: int, size: int, nnodes: int, timeout: timedelta):
        self.addr, self.rank, self.size, self.nnodes = addr, rank, size, nnodes
        self.timeout = timeout
        host, _, port = addr.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self.store: dist.TCPStore | None = None  # the store the group is made over
        self._server: dist.TCPStore | None = None  # rank 0: the one that listens at addr
        self.met = False  # every rank arrived: a failure from now on is the group's to tell
        self._told = False  # a failure another node posted was raised here: not re-posted
        # what every node must be started with alike (start_settings.py), set by a node's
        # lead before meet: rank 0 posts its own, another node's lead compares (None: not)
        self.settings: dict[str, str] | None = None

    def node_of(self, rank: int) -> int:
        return rank // (self.size // self.nnodes)

    def ranks_of(self, node: int) -> str:
        """Node `node`'s ranks as a message names them: "rank 2", "ranks 2-3"."""
        per = self.size // self.nnodes
        first, last = node * per, (node + 1) * per - 1
        return f"rank {first}" if first == last else f"ranks {first}-{last}"

    def open(self, check: Callable[[], None] | None = None,
             wait_s: float | None = None) -> dist.TCPStore:
        """Host the store (rank 0; OSError when the port is taken or the host is not this
        machine's) or connect to it, waiting up to `wait_s` (default: the timeout) for rank
        0 to host it: TimeoutError past that, KeyboardInterrupt at Ctrl-C, what `check()`
        raises (called between two tries); ConnectionError when what listens there is not
        a store (within HANDSHAKE_S)."""
        if self.store is not None:
            return self.store
        if self.rank == 0:
            self._check_hostable()
            try:
                self._server = dist.TCPStore(self._host, self._port, None, is_master=True,
                                             timeout=self.timeout, wait_for_workers=False)
            except dist.DistNetworkError as e:  # (taken since the check)
                raise OSError(f"{self._cannot_host()}: {e}") from e
            # the group gets a client of it, not the server: a group that outlives this
            # object (its collective left under way, see TensorParallel.release) keeps no
            # port open (torch's TCPStore has no call that closes its server: the last
            # reference to the master object does)
            self.store = dist.TCPStore(self._host, self._server.port, None, is_master=False,
                                       timeout=self.timeout)
            self.store.set(f"{PREFIX}shape", shape(self))
            return self.store
        wait_s = self.timeout.total_seconds() if wait_s is None else wait_s
        started = time.monotonic()
        deadline, note = started + wait_s, started + NOTE_S
        while True:
            try:
                socket.create_connection((self._host, self._port), timeout=1.0).close()
                break
            except OSError:
                pass
            if check is not None:
                check()
            if time.monotonic() > note:
                note += NOTE_EVERY_S
                log.info("waiting for node 0 (%.0f s of %.0f s): nothing answers at the tensor "
                         "parallel rendezvous at %s (--dist-init-addr) yet; check that `aiollm"
                         " serve --node-rank 0` runs there", time.monotonic() - started, wait_s,
                         self.addr)
            if time.monotonic() > deadline:
                waited = timedelta(seconds=round(wait_s))
                raise TimeoutError(
                    f"the tensor parallel rendezvous at {self.addr} (hosted by rank 0, node 0)"
                    f" did not answer within {waited}: check that `aiollm serve --node-rank 0`"
                    f" runs there with {SAME_SHAPE}, that this node can reach {self.addr}, "
                    f"and node 0's log")
            time.sleep(POLL_S)
        try:  # (a store answers its handshake at once: what does not is something else)
            store = dist.TCPStore(self._host, self._port, None, is_master=False,
                                  timeout=timedelta(seconds=min(HANDSHAKE_S, wait_s)))
        except dist.DistNetworkError as e:
            self._told = True  # nobody there to tell of this node's failure
            raise ConnectionError(
                f"no tensor parallel rendezvous answers at {self.addr} (--dist-init-addr): "
                f"something else listens there ({e}); give every node node 0's "
                f"--dist-init-addr, not its HTTP --port") from e
        store.set_timeout(self.timeout)
        self.store = store
        return self.store

    def _cannot_host(self) -> str:
        return (f"node 0 cannot host the tensor parallel rendezvous at {self.addr} "
                f"(--dist-init-addr)")

    def _check_hostable(self) -> None:
        """OSError unless rank 0 can listen at the address: a port taken (torch's error is
        a RuntimeError) or a host not this machine's (torch's own client would try to
        reach it for the whole timeout, in C++ that Ctrl-C cannot interrupt)."""
        try:
            family, kind, proto, _, where = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as probe:
                # (as the store does: a port whose last connections linger is free)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(where)
        except OSError as e:
            raise OSError(f"{self._cannot_host()}: {e.strerror or e}; give node 0 an "
                          f"address of its own and a free port") from e

    def meet(self, check: Callable[[], None] | None = None) -> dist.TCPStore:
        """Arrive, then wait until every rank has: the store to make the group over. Raises
        RankLost naming a node that posted its failure (or rank 0's node when its store
        closed), TimeoutError naming the ranks that did not arrive or stopped there,
        ValueError when this rank arrived before and that one still shows it is alive (see
        _replace), KeyboardInterrupt at Ctrl-C, what `check()` raises (called at each look
        at the store). Every rank arrived means each other rank's heartbeat moved within
        STALE_S as seen here, or that rank met: a rank killed while it waited is not met."""
        store = self.open(check)
        deadline = time.monotonic() + self.timeout.total_seconds()
        try:
            check_shape(self, store)
            check_settings(self, store, check, deadline)
            if store.add(f"{PREFIX}arrived/{self.rank}", 1) > 1:
                self._replace(store, check)
            arrived = [f"{PREFIX}arrived/{r}" for r in range(self.size)]
            seen: dict[int, tuple[int, float, bool]] = {}
            while True:
                self._check_failed(store)
                if check is not None:
                    check()
                store.add(f"{PREFIX}alive/{self.rank}", 1)
                still = self._not_alive(store, seen)
                if not still and store.check(arrived):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(self._missing(
                        store, [r for r, s in still.items() if s >= STALE_S]))
                time.sleep(POLL_S)
            store.set(f"{PREFIX}met/{self.rank}", "1")
        except dist.DistNetworkError as e:  # rank 0's store is gone: its process ended
            raise self._node_0_ended(e) from e
        self.met = True
        return store

    def _replace(self, store: dist.TCPStore, check: Callable[[], None] | None) -> None:
        """Rank `self.rank` arrived before: watch the first arrival's heartbeat up to
        STALE_S. ValueError when it moves (a node started twice) or that rank met (the
        same, or a start of this node that ended after the group was made); else
        the first was killed while it waited, and this arrival replaces it (claimed by
        counting "replaced/R/<the stopped heartbeat>": of two restarts, one is refused)."""
        node, key = self.node_of(self.rank), f"{PREFIX}alive/{self.rank}"
        beat = store.add(key, 0)
        until = time.monotonic() + STALE_S
        while time.monotonic() < until:
            if store.check([f"{PREFIX}met/{self.rank}"]):
                self._told = True  # not posted: the group was made, it looks here no more
                raise ValueError(
                    f"tensor parallel rank {self.rank} (node {node}) is already in the group "
                    f"made at {self.addr}: either another node runs as node {node} "
                    f"(--node-rank) (end it, or give this node its own), or this node's "
                    f"earlier start ended after the group was made, and a group takes no "
                    f"replacement (node 0 ends once it finds that rank gone): start every "
                    f"node again")
            if store.add(key, 0) != beat:
                self._told = True  # not posted: the node that came first is fine
                raise ValueError(
                    f"tensor parallel rank {self.rank} (node {node}) has already arrived at "
                    f"the rendezvous at {self.addr}: another node was started as node "
                    f"{node} (--node-rank), or with another tensor parallel size "
                    f"(--tensor-parallel-size) or node count (--nnodes); end it, or give "
                    f"this node its own node rank (--node-rank)")
            self._check_failed(store)
            if check is not None:
                check()
            time.sleep(POLL_S)
        if store.add(f"{PREFIX}replaced/{self.rank}/{beat}", 1) > 1:
            # (another restart claimed it first: this one is the duplicate)
            self._told = True
            raise ValueError(
                f"tensor parallel rank {self.rank} (node {node}) was restarted twice at the "
                f"rendezvous at {self.addr}: end one of them")
        log.warning("tensor parallel rank %d (node %d) arrived at the rendezvous before, then "
                    "stopped (no heartbeat for %.0f s): this start replaces it",
                    self.rank, node, STALE_S)

    def _not_alive(self, store: dist.TCPStore,
                   seen: dict[int, tuple[int, float, bool]]) -> dict[int, float]:
        """The other ranks not yet seen alive, each with how long (seconds) its heartbeat
        ("alive/R") has stood still while this rank watched: one that has not moved within
        STALE_S, and whose rank has not met. `seen`, kept across calls: R -> its last
        value, when it was first read, whether it moved since the watch began."""
        now, out = time.monotonic(), {}
        for r in range(self.size):
            if r == self.rank:
                continue
            beat = store.add(f"{PREFIX}alive/{r}", 0)
            last = seen.get(r)
            if last is None or beat != last[0]:
                seen[r] = last = (beat, now, last is not None)
            if not (last[2] and now - last[1] < STALE_S) and \
                    not store.check([f"{PREFIX}met/{r}"]):
                out[r] = now - last[1]
        return out

    def check_failed(self) -> None:
        """Raise RankLost, as meet does, when another node has posted its failure (or rank
        0's store closed); nothing when this rank has no store yet. For a wait before meet
        (node 0's lead waiting for the ranks it spawned to start): a node that failed
        meanwhile ends it at once, not when the slowest local rank has joined."""
        if self.store is None:
            return
        try:
            self._check_failed(self.store)
        except dist.DistNetworkError as e:
            raise self._node_0_ended(e) from e

    def _check_failed(self, store: dist.TCPStore) -> None:
        for node in range(self.nnodes):
            key = f"{PREFIX}failed/{node}"
            if store.check([key]):
                self._told = True
                why = store.get(key).decode(errors="replace")
                try:  # (rank 0 waits for it before its store closes)
                    store.add(f"{PREFIX}told", 1)
                except dist.DistNetworkError:
                    pass
                raise RankLost(f"tensor parallel node {node} ({self.ranks_of(node)})"
                               f" failed to start: {why}")

    def node_0_alive(self) -> bool:
        """Whether rank 0's store still accepts connections at the address (its process
        lives), still SETTLE_S on. A connection probe: a request of the store's client to a
        closed server logs torch's C++ warning with its stack."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            try:
                socket.create_connection((self._host, self._port), timeout=1.0).close()
            except OSError:
                return False
            if time.monotonic() > deadline:
                return True
            time.sleep(POLL_S)

    def _node_0_ended(self, e: BaseException) -> RankLost:
        self._told = True
        return RankLost(f"tensor parallel node 0 (rank 0, the rendezvous at {self.addr}) "
                        f"ended before the group was made: see its log ({e})")

    def _missing(self, store: dist.TCPStore, stopped: list[int]) -> str:
        """The timeout's message: the ranks that never arrived, and those in `stopped`
        (arrived, then their heartbeat stopped: killed while they waited), by node."""
        def name(ranks: dict[int, list[int]]) -> str:
            return "; ".join(f"{'rank' if len(rs) == 1 else 'ranks'} {', '.join(map(str, rs))}"
                             f" (node {node})" for node, rs in ranks.items())

        missing: dict[int, list[int]] = {}
        gone: dict[int, list[int]] = {}
        for r in range(self.size):
            if not store.check([f"{PREFIX}arrived/{r}"]):
                missing.setdefault(self.node_of(r), []).append(r)
            elif r in stopped:
                gone.setdefault(self.node_of(r), []).append(r)
        said = []
        if missing:
            said.append(f"{name(missing)} did not reach the tensor parallel rendezvous at "
                        f"{self.addr} within {self.timeout}")
        if gone:
            said.append(f"{name(gone)} stopped in the tensor parallel rendezvous at "
                        f"{self.addr} (arrived, then showed no sign of life for {STALE_S:.0f}"
                        f" s: killed?) and were not restarted within {self.timeout}")
        flags = " ".join(f"--node-rank {node}" for node in sorted({**missing, **gone}))
        return (f"{'; '.join(said)}: check that `aiollm serve {flags}` runs there with "
                f"{SAME_SHAPE}, that it can reach {self.addr}, and its log")

    def fail(self, node: int, error: BaseException,
             check: Callable[[], None] | None = None) -> None:
        """Node `node`'s start-up failed with `error` before the group was made: post it,
        so that every rank waiting raises RankLost naming this node and why rather than
        wait out the timeout. Not yet connected (the node's checks failed first): wait for
        rank 0's store up to TELL_S (Ctrl-C ends the wait), unless `error` is a
        KeyboardInterrupt or SystemExit; past that, rank 0 names the ranks that never came
        when its wait times out. Nothing when the failure came from the rendezvous
        itself (another node's), or every rank has met (the group tells it). Rank 0 over
        nodes then keeps its store up until the ranks that arrived have read it (_linger).
        Never raises but KeyboardInterrupt."""
        if self.met or self._told:
            return
        if isinstance(error, RankLost):
            why = str(error)
        elif isinstance(error, KeyboardInterrupt):  # (Ctrl-C, or SIGTERM: Terminated)
            why = describe(error)
        else:
            why = f"{type(error).__name__}: {error}"
        try:
            if self.store is None:
                if self.rank == 0 or not isinstance(error, Exception):
                    return  # (rank 0: hosting it failed)
                log.error("tensor parallel node %d failed to start: %s; telling the other "
                          "nodes through the rendezvous at %s (node 0)", node, why, self.addr)
                self.open(check, TELL_S)
            self.store.set(f"{PREFIX}failed/{node}", why)
            if self.rank == 0 and self.nnodes > 1:
                # (on one node every other rank is this process's own, which it ends now:
                # none is left to read it, and waiting for one cost each failed start 1 s)
                self._linger()
        except (Exception, KeyboardInterrupt) as e:
            if isinstance(e, KeyboardInterrupt) and not isinstance(error, KeyboardInterrupt):
                raise
            log.warning("could not tell the other nodes that node %d failed (%s); node 0 "
                        "names this node's ranks when its wait for them times out", node, e)

    def _linger(self) -> None:
        """Rank 0, its node's failure posted: return once every other rank that arrived
        has read it, or after LINGER_S (a rank that connected but has not yet arrived
        arrives within milliseconds)."""
        deadline = time.monotonic() + LINGER_S
        while time.monotonic() < deadline:
            arrived = sum(self.store.check([f"{PREFIX}arrived/{r}"])
                          for r in range(1, self.size))
            if arrived and self.store.add(f"{PREFIX}told", 0) >= arrived:
                return
            time.sleep(POLL_S)

    def end_waits(self) -> None:
        """Rank 0, from another thread: stop hosting the store, so that every wait on it
        (this process's init_process_group or new_group waiting for a rank that died, other
        nodes' too) fails at once with DistNetworkError rather than at its timeout. Its
        clients stay referenced (the group's init holds one): dropping the server, the last
        reference to the master object, is what closes its port and connections."""
        self._server = None

    def close(self) -> None:
        """Drop this rank's store (rank 0: the server, closing its port, even while a
        group made over the store lives on)."""
        self.store = self._server = None
