"""The commit a benchmark result names.

$AIOLLM_COMMIT when set (a copy of the tree run elsewhere, e.g. on the GPU machine, names
the commit it was copied from; $BENCH_COMMIT, the older name, is read too); else git's short
HEAD when the tree is itself a git checkout (its top level is the tree); else "unknown". A
copy without .git, or one inside another repository (a .gpu-NAME folder of the main
checkout), must not report that repository's HEAD, nor an empty string.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_commit(tree: str | Path = REPO, dirty: bool = False) -> str:
    """The commit of `tree` (the repository root, default: this one), by the rule above;
    dirty: a checkout whose tracked files differ from HEAD gets "-dirty" after it."""
    named = os.environ.get("AIOLLM_COMMIT") or os.environ.get("BENCH_COMMIT")
    if named:
        return named

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(tree), *args], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != Path(tree).resolve():
        return "unknown"
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    if dirty and git("status", "--porcelain", "--untracked-files=no"):
        return head + "-dirty"
    return head


if __name__ == "__main__":
    print(tree_commit())
