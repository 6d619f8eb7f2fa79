"""Writing into a cache directory that several processes share (derived_cache.py's): each file or
directory is written in a temporary directory beside its final name and renamed into place, so
no reader sees half of one, and the temporary directories of writers that died mid-write
(SIGKILL, a crash, a power cut) are removed by later writes and cache opens.

Which temporaries are dead: a writer holds an exclusive flock on LOCK_FILE in its temporary for
as long as it writes, and the kernel drops that lock when the process ends, however it ends. A
temporary whose lock another process can take has no writer, and is removed under that lock.
A pid in the name would be wrong where processes share a cache across pid namespaces or hosts
(containers mounting one cache volume; a pod restarted on another node would never clear its
predecessor's), and an age threshold would leave a killed writer's temporary (weights: up to
gigabytes) in place through every restart within it. On a platform without fcntl (Windows)
nothing is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
LOCK_FILE = ".writer.lock"  # in each temporary: flock-ed by its writer while it writes
# This process's own temporaries, never taken for stale: on NFS, flock is emulated with POSIX
# locks, which never conflict within one process.
_OURS: set[str] = set()


def write_atomic(final: str, write: Callable[[str], object]) -> None:
    """write(tmp) a file or directory beside `final`, then rename it into place. Failures are
    logged, never raised: the cache only saves time."""
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(parent)
        with _temporary(parent) as tmp:
            target = os.path.join(tmp, os.path.basename(final))
            write(target)
            os.replace(target, final)
    except OSError as e:
        # a directory that another writer put in place first stays: same content
        if not os.path.exists(final):
            log.warning("could not write the cache entry %s: %s", final, e)


def discard(path: str) -> None:
    """Remove a damaged directory: renamed aside first, so that no reader sees it half
    removed and a writer can put a sound copy in its place at once."""
    try:
        with _temporary(os.path.dirname(path)) as aside:
            os.replace(path, os.path.join(aside, "old"))
    except OSError as e:  # another process removed it first, or the cache is read-only
        log.debug("could not remove %s: %s", path, e)


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def remove_stale_temporaries(directory: str) -> None:
    """Remove the temporaries in `directory` that no live process is writing."""
    if fcntl is None:
        return
    try:
        names = os.listdir(directory)
    except OSError:  # not there (yet), or unreadable
        return
    for name in names:
        if name.startswith(TEMP_PREFIX) and os.path.join(directory, name) not in _OURS:
            _remove_if_stale(os.path.join(directory, name))


@contextlib.contextmanager
def _temporary(parent: str) -> Iterator[str]:
    """A new temporary directory in `parent`, locked as this process's until the block ends,
    then removed with what is left in it. OSError where `parent` cannot be written."""
    tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    _OURS.add(tmp)
    fd = None
    try:
        if fcntl is not None:
            lock = os.path.join(tmp, LOCK_FILE)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Between mkdtemp and the lock another process may have found this temporary
            # unlocked and removed it (under the same lock, so it is done by now).
            if not os.path.samestat(os.fstat(fd), os.stat(lock)):
                raise FileNotFoundError(errno.ENOENT, "removed before it was locked", tmp)
        yield tmp
    finally:
        if fd is not None:
            os.close(fd)  # first: NFS cannot remove a directory holding an open file
        shutil.rmtree(tmp, ignore_errors=True)
        _OURS.discard(tmp)


def _remove_if_stale(tmp: str) -> None:
    """Remove the temporary `tmp` if its lock can be taken (its writer is gone), holding the
    lock while removing it so that no writer can start in it meanwhile."""
    try:
        # O_CREAT: a temporary whose lock file is not there yet (its writer is between mkdtemp
        # and the lock, or died there) is claimed like a dead writer's; such a writer then
        # finds its lock file gone and gives up its write (_temporary).
        fd = os.open(os.path.join(tmp, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # removed meanwhile, or not ours to write
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its writer is alive
            return
        log.debug("removing %s, left by a writer that died", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # NFS keeps a removed open file until it is closed
        os.rmdir(tmp)
