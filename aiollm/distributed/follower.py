"""The follower loop: a rank other than 0 runs every step rank 0 plans, on its shard.

A follower holds no request table, planner or HTTP server: it builds the same model runner
as rank 0's Engine (its shard of the weights, a KV pool of its KV heads for the same token
slots, the same req_to_token rows, the same decode graphs), then for each step receives
rank 0's message (group.py) and launches the same step through ModelRunner.launch. Its
collectives pair with rank 0's in the same order: the start-up checkpoints (the KV pool size
agreed, every pool allocated; a rank whose start-up failed meets the others there with its
error, group.py), the graph captures and the warm-up, then each step's all-reduces, the
all-reduce and all-gather that combine the scores of the prompt positions rank 0 scores, the
sampled rows' logits' all-gather and, when rank 0 sampled, the broadcast of the sampled ids.

Run as `python -m aiollm.distributed.follower --rank R --init HOST:PORT` by a node's lead
process (spawned_ranks.py), with the EngineConfig as JSON in $AIOLLM_TP_CONFIG (and the
model's config as its lead read it), logging at its lead's level (--log-level) with the
flags its messages name as the user typed them (--flags-typed); `follow()` is
what `aiollm serve --node-rank K` (K > 0) runs on the other nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

import torch

from aiollm.config import EngineConfig
from aiollm.distributed.group import (
    ARGMAX_ONLY,
    DECODE,
    IDLE,
    PLACEHOLDERS,
    REMOTE_SAMPLING,
    STOP,
    RankLost,
    StepMessage,
    TensorParallel,
)
from aiollm.distributed import launch
from aiollm.distributed.launch import NodeRanks, join
from aiollm.distributed.peer_lost import peer_ended_error
from aiollm.distributed.spawned_ranks import lead_model_config
from aiollm.stop_signal import sigterm_raises

# (not __name__, which is "__main__" in a spawned rank: its records are aiollm's, which
# log_config.messages_rewritten rewrites)
log = logging.getLogger("aiollm.distributed.follower")


def build_runner(cfg: EngineConfig, tp: TensorParallel, model_config=None):
    """This rank's ModelRunner, built as rank 0's Engine builds its own (engine/loading.py);
    `model_config`: the model's ModelConfig as its lead read it (None: read here)."""
    from aiollm.engine.loading import build_rank_model, resolve_dtype
    from aiollm.model import load_model

    loaded = load_model(cfg.model, dtype=resolve_dtype(cfg.dtype), device=tp.device,
                        load_format=cfg.load_format, max_model_len=cfg.max_model_len,
                        config=model_config)
    return build_rank_model(cfg, loaded, tp.device, loaded.dtype, tp).runner


def run_step(runner, msg: StepMessage) -> None:
    """Launch the step rank 0 described in `msg` on this rank's shard."""
    from aiollm.engine.model_runner import StepInputs
    from aiollm.model.forward_batch import ForwardBatch
    from aiollm.model.prompt_logprobs import PromptScoring

    n, t, p = msg.n, msg.tokens, msg.payload
    for row, start, slots in msg.row_writes:  # rank 0's prefix-cache hits since the last step
        runner.r2t.write_row(row, start, slots)
    argmax_only, placeholders = bool(msg.flags & ARGMAX_ONLY), bool(msg.flags & PLACEHOLDERS)
    remote = bool(msg.flags & REMOTE_SAMPLING)
    if msg.kind == DECODE:
        ids, pos, loc, rows = p.reshape(4, n)
        bs = runner.graphs.stage(n, ids, pos, loc, rows)
        inp = StepInputs(None, bs, n, None, argmax_only, placeholders, None,
                         remote_sampling=remote)
    else:
        ids, loc = p[:t], p[t: 2 * t]
        rows, pre, ext = p[2 * t: 2 * t + 3 * n].reshape(3, n)
        end = 2 * t + 3 * n
        lp, long = runner.long_prompts, None  # which requests are long (rope_rows.py)
        if lp is not None:
            long, end = p[end: end + n].astype(bool), end + n
        sidx = p[end: end + msg.sampled] if msg.sampled >= 0 else None
        r2t = runner.r2t
        batch = ForwardBatch.build(input_ids=ids, out_cache_loc=loc, req_rows=rows,
                                   prefix_lens=pre, extend_lens=ext, req_to_token=r2t.table,
                                   kv_pool=runner.kv_pool, device=runner.device,
                                   sample_index=sidx, long_prompts=lp, long_requests=long)
        if msg.scored:  # rank 0 scores prompt positions: each rank on its vocabulary part
            batch.prompt_scoring = PromptScoring.part_only(*msg.scoring, runner.device)
        if r2t.table is r2t.cpu:
            # on the CPU the map the kernels read is the master copy, which rank 0's planner
            # writes and a follower has no planner to
            r2t.write_cpu(batch.token_rows, batch.positions, batch.out_cache_loc)
        inp = StepInputs(batch, 0, n, None, argmax_only, placeholders, None,
                         remote_sampling=remote)
    runner.launch(inp)


def serve_steps(tp: TensorParallel, runner) -> None:
    """Run rank 0's steps on this rank's runner until rank 0 sends the stop."""
    log.info("tensor parallel rank %d ready on %s", tp.rank, tp.device)
    with torch.inference_mode():
        while True:
            msg = tp.recv_step()
            if msg.kind == STOP:
                break
            if msg.kind == IDLE:  # rank 0 is idle: the wait goes on
                continue
            run_step(runner, msg)
    if tp.device.type == "cuda":
        torch.cuda.synchronize(tp.device)
    log.info("tensor parallel rank %d stopped", tp.rank)


def follow(cfg: EngineConfig) -> int:
    """The lead process of a node other than 0 (`aiollm serve --node-rank K`): spawn the
    node's other ranks, then follow rank 0 as the node's first rank."""
    ranks = NodeRanks(cfg)
    try:
        # SIGTERM in start-up ends it as Ctrl-C does: the other nodes are told, and this
        # node's ranks end; past it, a rank waits for rank 0 inside gloo (its handler could
        # run only once a step message came): Python's default, which ends the process (and
        # so for SIGINT, below)
        with sigterm_raises():
            tp = ranks.start()
            runner = build_runner(cfg, tp)
    except BaseException as e:
        # as Engine's start does: the other ranks learn why, the ranks started end, their
        # files go
        if (lost := ranks.start_failed(e)) is not None:
            raise lost from e
        raise
    ranks.started()
    # serving, the main thread waits for rank 0's next step message inside gloo, where
    # Ctrl-C's KeyboardInterrupt is raised only once one comes (rank 0's keep-alive: up to
    # a minute idle): SIGINT ends the node at once, as SIGTERM does (Python's default); its
    # ranks follow (they watch it), and node 0 names this node at its next step. Not where
    # SIGINT was ignored at start (a shell script's background job: Ctrl-C in its terminal
    # is node 0's to drain, with this node), as Python itself leaves it ignored there
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        serve_steps(tp, runner)
    except Exception as e:
        if not peer_ended_error(e):
            # its own failure (a device error): its ranks, waiting on it, end first; left to
            # see its sockets close at its exit, they left their files behind. It leaves as
            # the other paths do (os._exit): raised to the interpreter's exit, the exception
            # met gloo's threads still joinable there once in ~4,000 tests under load
            # (std::terminate, exit -6 instead of 1)
            ranks.end_spawned()
            log.critical("tensor parallel rank %d failed a step", tp.rank, exc_info=e)
            logging.shutdown()
            os._exit(1)
        # rank 0's next step message lost: a rank of the group ended
        why = _leader_lost(ranks, e)
        ranks.stop(timeout=2.0, leave_group=False)  # (its ranks' waits fail alike)
        log.error("%s", why)
        logging.shutdown()
        os._exit(1)
    # tearing the group down races rank 0's own exit (gloo can abort on a closed peer): the
    # work is done, leave as the spawned ranks do
    ranks.stop(leave_group=False)
    logging.shutdown()
    os._exit(0)


def _leader_lost(ranks: NodeRanks, error: Exception) -> str:
    """What a node's lead says when its wait for rank 0's next step message failed (`error`):
    node 0 ended when its rendezvous' store no longer answers, else a rank of another node
    did (its sockets closed first)."""
    rdv, cfg = ranks.rendezvous, ranks.cfg
    if rdv is not None and not rdv.node_0_alive():
        what = f"tensor parallel node 0 ({rdv.ranks_of(0)})"
    else:
        what = "a tensor parallel rank of another node"
    return (f"{what} ended while this node served (see its log): node {cfg.node_rank} "
            f"stops; start every node again ({error})")


_PF_EXITING = 0x4  # Linux's flag of a process in its exit (include/linux/sched.h)


class RankFiles:
    """This rank's `.joining` and `.err` files, in the folder its node's lead made for them
    (spawned_ranks.py). The lead removes the folder once its ranks have ended; a lead
    killed (SIGKILL, the OOM killer) cannot, so its ranks, which outlive it by a moment,
    remove their own files, and the last one the folder (each removes its files before it
    tries the folder: the last try sees them all gone). Nothing here makes a folder: a
    file whose folder is gone is not written (nobody is left to read it)."""

    def __init__(self, error: str, joining: str | None, parent: int):
        self.error, self.joining, self.parent = error, joining, parent
        self._lock = threading.Lock()  # the main thread writes, the parent's watch removes
        self._removed = False

    def touch_joining(self) -> None:
        """Write the `.joining` file: the lead waits for it before its own rendezvous."""
        if self.joining is not None:
            self._write(self.joining, "")

    def write_error(self, error: BaseException) -> None:
        """The error file the lead reads, whole or not at all: the lead may read it while
        this rank still waits at a start-up checkpoint."""
        self._write(self.error, f"{type(error).__name__}: {error}")

    def _write(self, path: str, text: str) -> None:
        with self._lock:
            if self._removed:
                return
            try:
                with open(path + ".part", "w") as f:
                    f.write(text)
                os.replace(path + ".part", path)
            except FileNotFoundError:  # the folder is gone: so is its lead
                log.warning("not written: %s (its folder is gone)", path)

    def parent_gone(self) -> bool:
        """Whether the lead that spawned this rank has ended or is ending. Killed, a lead
        closes its sockets (this rank's collectives fail at once) before it is reaped and
        this rank re-parented: in that moment Linux shows it exiting (PF_EXITING in the
        flags of /proc/PID/stat) or a zombie."""
        if os.getppid() != self.parent:
            return True
        try:
            with open(f"/proc/{self.parent}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # (its name may hold spaces)
        except FileNotFoundError:  # gone; or no /proc (not Linux): the parent said enough
            return os.path.isdir("/proc/self")
        state, flags = fields[0], int(fields[6])  # stat's 3rd and 9th fields
        return state in ("Z", "X") or bool(flags & _PF_EXITING)

    def remove(self) -> None:
        """The lead is gone: remove this rank's files, and the folder if none are left."""
        with self._lock:
            self._removed = True
            for path in (self.error, self.error + ".part", self.joining):
                if path is not None:
                    with contextlib.suppress(OSError):
                        os.remove(path)
            with contextlib.suppress(OSError):  # (another rank's files are still there)
                os.rmdir(os.path.dirname(self.error))


def _exit_with_parent(files: RankFiles) -> None:
    """A spawned rank must not outlive the process that spawned it (killed, crashed)."""
    while not files.parent_gone():
        time.sleep(0.2)
    log.error("the process that started this rank (pid %d) is gone: exiting", files.parent)
    files.remove()
    logging.shutdown()
    os._exit(1)


def _level(text: str) -> int | str:
    """--log-level's value: a level's name (any case) or number."""
    return int(text) if text.isdigit() else text.upper()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an aiollm tensor-parallel follower rank")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--init", required=True, help="HOST:PORT of the TCP rendezvous")
    parser.add_argument("--error-file", required=True)
    parser.add_argument("--joining-file", help="written just before the rendezvous")
    # (its parent at spawn: one that ended during this rank's imports is no longer its parent)
    parser.add_argument("--lead-pid", type=int, help="the process that spawned this rank")
    parser.add_argument("--log-level", type=_level, default="INFO",
                        help="its lead's logging level (a name or a number)")
    parser.add_argument("--flags-typed", type=json.loads, default={},
                        help="JSON: aiollm's flag -> the flag the user typed "
                             "(log_config.messages_rewritten)")
    args = parser.parse_args(argv)
    from aiollm.cli import LOG_FORMAT
    from aiollm.cli.log_config import messages_rewritten

    logging.basicConfig(level=args.log_level, format=f"[rank {args.rank}] {LOG_FORMAT}")
    with messages_rewritten(args.flags_typed):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    """main()'s rank, its logging set up: join, load and serve steps until rank 0's stop;
    the process ends here (os._exit)."""
    files = RankFiles(args.error_file, args.joining_file, args.lead_pid or os.getppid())
    threading.Thread(target=_exit_with_parent, args=(files,), daemon=True).start()
    tp = None
    try:
        cfg = EngineConfig(**json.loads(os.environ["AIOLLM_TP_CONFIG"]))
        tp = join(cfg, args.rank, args.init, launch.INIT_TIMEOUT,
                  joining=files.touch_joining)
        runner = build_runner(cfg, tp, lead_model_config())
        serve_steps(tp, runner)
    except BaseException as e:  # noqa: BLE001 - whatever it is, rank 0 must learn why
        files.write_error(e)
        if isinstance(e, RankLost):  # another rank's failure, which that rank logs
            log.error("tensor parallel rank %d stops: %s", args.rank, e)
        elif tp is not None and not tp.starting and peer_ended_error(e):
            # (serving: a rank of the group ended; its node's lead, or rank 0, names it)
            log.error("tensor parallel rank %d stops: a rank of the group ended (%s)",
                      args.rank, e)
        else:
            log.error("tensor parallel rank %d failed:\n%s", args.rank, traceback.format_exc())
        if tp is not None:  # at start-up: the other ranks (other nodes' too) learn why
            tp.start_failed(e)
        if files.parent_gone():  # its lead was killed (its closed sockets ended this rank)
            files.remove()
        logging.shutdown()
        os._exit(1)
    logging.shutdown()
    # gloo and NCCL threads can keep a clean interpreter exit waiting: the work is done
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
