"""SpawnedRanks: the ranks a node's lead process (launch.py's NodeRanks) spawns, as child
processes, and the files through which they speak to it before the group exists.

Each child is a `python -m aiollm.distributed.follower` with its rank, the rendezvous
address, the EngineConfig (as JSON in $AIOLLM_TP_CONFIG) and the model's config as the lead
read it (pickled in $AIOLLM_TP_MODEL_CONFIG: the rank does not read config.json again, which
imports transformers, ~1.4 s of CPU per rank). Its command line carries what is its own
process's: its rank, the rendezvous, its files, its lead's pid, and its logging as its
lead's (the level of the lead's "aiollm" logger, `aiollm serve --log-level`'s, and the flags
the lead's messages name as the user typed them, log_config.messages_rewritten): only what
the lead writes there reaches it, where an environment variable set in the user's shell
would reach it too, unasked. It writes its `.joining` file
just before it enters the rendezvous, and its `.err` file (its exception, whole or not at
all: follower.py) when it fails; both live in one temporary folder per node, made with the
first rank's files and removed once the ranks have ended (NodeRanks' stop, abort and
failure); a lead killed cannot remove it, so its ranks do (follower.RankFiles). The children
ignore SIGINT and SIGTERM: Ctrl-C and a process group's SIGTERM reach them too, and rank 0
stops them itself, after its drain. What a lost rank means for the group (the watchdog,
the failure of the requests in flight) is NodeRanks'.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

MODEL_CONFIG_ENV = "AIOLLM_TP_MODEL_CONFIG"


def _ignore_stop_signals() -> None:  # runs in the child between fork and exec
    # Ctrl-C reaches the whole process group, and so does a SIGTERM sent to it (systemd's
    # stop, `kill -TERM -PGID`): rank 0 shuts down, drains, and stops the followers. A
    # follower also exits when rank 0 is gone (follower.py), or at SIGKILL
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class SpawnedRanks:
    """This node's spawned ranks: `procs` (rank: its subprocess.Popen, in the order
    spawned) and their `.joining` and `.err` files in a temporary folder made here with
    the first rank's files (a node of one rank makes none: nothing could remove it were
    the node killed)."""

    def __init__(self):
        self.procs: dict[int, subprocess.Popen] = {}
        self._dir: str | None = None

    def spawn(self, rank: int, addr: str, config_json: str, model_config=None) -> None:
        """Start rank `rank` as a follower that joins the group at `addr` (host:port of the
        rendezvous) with the EngineConfig `config_json` and `model_config` (the lead's
        ModelConfig of the model, which the rank then loads without reading it again; None:
        the rank reads it)."""
        from aiollm.cli.log_config import flags_rewritten

        cmd = [sys.executable, "-m", "aiollm.distributed.follower", "--rank", str(rank),
               "--init", addr, "--error-file", self.error_file(rank),
               "--joining-file", self.joining_file(rank), "--lead-pid", str(os.getpid()),
               "--log-level", _level_name(logging.getLogger("aiollm").getEffectiveLevel())]
        if flags := flags_rewritten():
            cmd += ["--flags-typed", json.dumps(flags)]
        env = {**os.environ, "AIOLLM_TP_CONFIG": config_json}
        env.pop(MODEL_CONFIG_ENV, None)  # (a lead that is itself a spawned rank's child)
        if model_config is not None:
            env[MODEL_CONFIG_ENV] = base64.b64encode(pickle.dumps(model_config)).decode()
        self.procs[rank] = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_stop_signals)

    def joining_file(self, rank: int) -> str:
        """The file rank `rank` writes just before it enters the rendezvous."""
        return os.path.join(self._folder(), f"rank{rank}.joining")

    def error_file(self, rank: int) -> str:
        """The file rank `rank` writes its exception to when it fails."""
        return os.path.join(self._folder(), f"rank{rank}.err")

    def _folder(self) -> str:
        if self._dir is None:  # the first rank's files: made now
            self._dir = tempfile.mkdtemp(prefix="aiollm-tp-")
        return self._dir

    def not_joining(self) -> list[str]:
        """The `.joining` files of the spawned ranks not yet written."""
        return [f for f in map(self.joining_file, self.procs) if not os.path.exists(f)]

    def exited(self) -> tuple[int, int] | None:
        """(rank, exit status; negative: the signal's number) of the first spawned rank
        that has exited; None while every one runs."""
        for rank, p in self.procs.items():
            code = p.poll()
            if code is not None:
                return rank, code
        return None

    def erred(self) -> int | None:
        """The first spawned rank that has written its error file (it may still run: a
        rank whose start-up failed waits at the next start-up checkpoint); None if none."""
        for rank in self.procs:
            if os.path.exists(self.error_file(rank)):
                return rank
        return None

    def cause(self, rank: int, code: int) -> str:
        """Why rank `rank` ended with exit status `code`, in words: "failed: " and its error
        file's text, else the signal that killed it, else the status."""
        try:
            with open(self.error_file(rank)) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text:
            return f"failed: {text}"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def reap(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for every spawned rank to exit, then kill
        (with a warning naming it) any that did not."""
        deadline = time.monotonic() + timeout
        for rank, p in self.procs.items():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tensor parallel rank %d did not exit in %.0fs: killed", rank, timeout)
        self.kill()

    def kill(self) -> None:
        """Kill every spawned rank still running (SIGKILL) and wait for each."""
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait()

    def remove_files(self) -> None:
        """Remove the ranks' folder (their error files: read by cause() while a rank may
        still be failing, so only once they have ended)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


# the level names a fresh interpreter knows: a name the lead's program added is not the rank's
_LEVEL_NAMES = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


def _level_name(level: int) -> str:
    """A logging level as the rank's --log-level takes it: its name where logging itself
    names it so, else its number (a level the lead's program named, addLevelName(25,
    "NOTICE"), was an unknown level to the rank's logging.basicConfig, which failed)."""
    name = logging.getLevelName(level)
    return name if name in _LEVEL_NAMES else str(level)


def lead_model_config():
    """The ModelConfig the lead that spawned this process passed it (SpawnedRanks.spawn),
    or None. Unpickled: it comes from this process's own parent, on this machine, never
    from another node."""
    text = os.environ.get(MODEL_CONFIG_ENV)
    return None if not text else pickle.loads(base64.b64decode(text))
