"""A benchmark's result file: its name by the project's rule, and the report written to it.

The rule (bench/README.md): bench/results/KIND-DATE-DEVICE-COMMIT.json, the device's name with
its spaces as dashes ("NVIDIA H200" -> "NVIDIA-H200"), the commit from bench/commit.py. Each
script keeps the parts it has always written: some leave out the device (CPU benches) or the
commit, some add tags between the device and the commit (decode.py's model names, serve.py's
label), so earlier result files and the README's references to them keep their names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any


def result_path(kind: str, *, device: str | None = None, tags: Iterable[str] = (),
                commit: str | None = None, day: date | str | None = None,
                out_dir: str | Path = "bench/results") -> Path:
    """out_dir / "KIND-DATE[-DEVICE][-TAG...][-COMMIT].json".

    kind: what was measured ("decode", "moe-pdl"). device: the device's name, spaces made
    dashes; None leaves it out. tags: further parts, in order, after the device. commit: the
    commit (bench/commit.py's tree_commit()); None leaves it out. day: the date part as a date
    (ISO form) or as the string the script's report already holds; default today (local
    time). out_dir: default bench/results relative to the working directory, where the
    scripts are run from (the repository root). The parts are not checked: a bad one found
    after a long run must not cost its results."""
    parts = [kind, str(date.today() if day is None else day)]
    if device is not None:
        parts.append(device.replace(" ", "-"))
    parts.extend(tags)
    if commit is not None:
        parts.append(commit)
    return Path(out_dir) / ("-".join(parts) + ".json")


def write_report(path: str | Path, report: Any, indent: int | None = 1) -> Path:
    """Writes `report` (any JSON value) to `path` as JSON with `indent`, UTF-8, ending in a
    newline; makes the parent folders. Returns the path. Raises json's TypeError or ValueError
    (a value JSON cannot hold, a circular reference) before the file is touched."""
    text = json.dumps(report, indent=indent) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
