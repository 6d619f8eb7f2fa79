"""A Python script run in a child process against this checkout's aiollm: what happens at an
interpreter's exit (an LLM left open, Ctrl-C) can only be seen from outside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, with the checkout first on PYTHONPATH."""
    path = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, **extra, "PYTHONPATH": path}


def run_script(script: str, timeout: float, **extra_env: str) -> subprocess.CompletedProcess:
    """`python -c script` run from ROOT to its end (stdout and stderr as text); an
    AssertionError with its stderr when it runs past `timeout` seconds (a hang)."""
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout, env=script_env(**extra_env), cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the script ran past {timeout} s: {e.stderr}") from None
