"""Launch configs for the Triton kernels: cached per GPU and shape class, tuned when missing.

A config is a small dict (block sizes, num_warps, num_stages, ...). Configs live in
`aiollm/kernels/configs/<gpu-name>.json` as {kernel: {shape_key: config}} and ship with the
package. A key names a shape and, for most kernels, a size class (batch, context length,
token count: the parts the caller lists in `classes`). AIOLLM_AUTOTUNE picks what happens when
a key is looked up:

  auto  (default) the cached config; for a key missing from the cache, the config of an
        adjacent size class (one class step) of the same shape when the cache has one (not
        timed, not written back: a server would stall for seconds tuning a class next to
        tuned ones, issue 18), else tune the key and write it back (a shape or a class
        farther from those the table holds)
  0     the cached config, else an adjacent class's, else the kernel's default; never time
  1     tune every key missing from the cache, then write it back (the tuning scripts;
        a key this process borrowed for earlier, under auto or 0, is tuned too)
  2     retune every key (once per process), then write it back

Tuning times each candidate on the caller's real inputs with `triton.testing.do_bench`, so it
only suits kernels that write a fresh output (attention), not in-place ones. It never runs on
the CPU interpreter, while a CUDA graph is being captured, or inside `untuned()` (the
cached config is used then, else an adjacent class's, else the default).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

Config = dict[str, int]

CONFIG_DIR = Path(__file__).with_name("configs")

_lock = threading.Lock()
_tables: dict[str, dict[str, dict[str, Config]]] = {}  # gpu slug -> kernel -> key -> config
# What each (kernel, key, device index) resolved to in this process, and whether that is a
# stand-in (an adjacent class's config or the default, not the key's own): the hot path is one
# dict lookup, and mode 2 retunes a key once per process, not at every call. A stand-in is
# looked up again once mode 1 or 2 is set (a tuning script after its untuned runs).
_resolved: dict[tuple[str, str, int], tuple[Config, bool]] = {}
_untuned = threading.local()  # .active: inside untuned(), on this thread


AUTO = 3  # autotune_mode() for AIOLLM_AUTOTUNE=auto (the default)


def autotune_mode() -> int:
    """0, 1, 2 or AUTO from AIOLLM_AUTOTUNE (module doc); ValueError naming a bad value."""
    raw = os.environ.get("AIOLLM_AUTOTUNE", "auto")
    if raw == "auto":
        return AUTO
    if raw not in ("0", "1", "2"):
        raise ValueError(f"AIOLLM_AUTOTUNE must be auto, 0, 1 or 2, got {raw!r}")
    return int(raw)


_CLASS_PART = re.compile(r"([a-z]+)(\d+)")


@functools.lru_cache(maxsize=4096)
def _split_key(key: str, classes: tuple[tuple[str, tuple[int, ...]], ...]
               ) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(the key's parts with each size class's value left out, each class's edge index), or
    None when a class value is not an edge. Cached: a capture looks a missing key up at every
    launch (nothing is remembered there) and each lookup splits every key of the kernel."""
    sizes = dict(classes)
    shape, steps = [], []
    for part in key.split("-"):
        m = _CLASS_PART.fullmatch(part)
        if m and m.group(1) in sizes:
            edges = sizes[m.group(1)]
            if int(m.group(2)) not in edges:
                return None
            shape.append(m.group(1))
            steps.append(edges.index(int(m.group(2))))
        else:
            shape.append(part)
    return tuple(shape), tuple(steps)


def nearest_class(entries: dict[str, Config], key: str, classes: dict[str, tuple[int, ...]],
                  max_steps: int = 1, candidates: list[Config] | None = None
                  ) -> tuple[str, Config] | None:
    """(key, config) of `entries` with the same shape as `key` at a size class at most
    `max_steps` classes away, the nearest, or None. Keys are '-'-joined parts; a part that is
    a prefix of `classes` followed by one of its class edges is a size class, and every other
    part must match. Steps: the sum over the class parts of how many edges apart the two are;
    ties go first to a config among `candidates` (what tuning `key` would choose among, when
    given: they can depend on the size, as extend attention's BLOCK_M on the longest extend or
    a MoE BLOCK_M on the pairs per expert), then to the larger classes (configs for more work
    are the conservative ones). A config outside `candidates` is still taken when no other
    is near: a caller that lists `classes` keeps every config of a shape valid at all of its
    classes (the MoE down GEMM's key carries the gate/up BLOCK_M for that), so it is only
    slower there, which beats a stall."""
    sizes = tuple(classes.items())
    mine = _split_key(key, sizes)
    if mine is None or not mine[1]:
        return None
    best = None
    for k, cfg in entries.items():
        other = _split_key(k, sizes)
        if other is None or other[0] != mine[0] or k == key:
            continue
        dist = sum(abs(a - b) for a, b in zip(mine[1], other[1]))
        if dist > max_steps:
            continue
        rank = (dist, candidates is not None and cfg not in candidates, -sum(other[1]), k)
        if best is None or rank < best[0]:
            best = (rank, k, cfg)
    return None if best is None else (best[1], best[2])


@functools.cache
def gpu_slug(device_index: int) -> str:
    """File-name-safe GPU name, e.g. 'NVIDIA_H100_80GB_HBM3'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device_index)).strip("_")


def bucket(n: int, edges: tuple[int, ...]) -> int:
    """The first edge >= n (else the last): the size part of a shape-class key."""
    return next((e for e in edges if e >= n), edges[-1])


def _table(slug: str) -> dict[str, dict[str, Config]]:
    if slug not in _tables:
        path = CONFIG_DIR / f"{slug}.json"
        try:
            _tables[slug] = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable kernel config file %s: %s", path, exc)
            _tables[slug] = {}
    return _tables[slug]


def _save(slug: str) -> None:
    path = CONFIG_DIR / f"{slug}.json"
    tmp = None
    try:
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so that a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=CONFIG_DIR, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_tables[slug], f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the package file must be readable
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("could not write tuned kernel configs to %s: %s", path, exc)
    finally:
        if tmp is not None:  # not renamed into place: else one is left at each tuning
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def get_config(
    kernel: str,
    key: str,
    device: torch.device,
    default: Config,
    candidates: list[Config],
    bench: Callable[[Config], float],
    classes: dict[str, tuple[int, ...]] | None = None,
) -> Config:
    """The config to launch `kernel` with for shape class `key` on `device` (AIOLLM_AUTOTUNE
    in the module doc says which). `classes`: the key parts that are size classes, each with its
    class edges (see nearest_class: of adjacent classes, one whose config is among
    `candidates` is borrowed first); without them a missing key is tuned, as for a shape the
    table lacks.

    `bench(config)` runs the kernel once with that config on the caller's inputs and returns
    its median time in ms (see `time_config`); it is called only when tuning.
    """
    if device.type != "cuda":
        return default
    index = _index(device)
    resolved = _resolved.get((kernel, key, index))
    if resolved is not None and (not resolved[1] or autotune_mode() in (0, AUTO)):
        return resolved[0]
    slug = gpu_slug(index)
    cached, near = _lookup(kernel, key, slug, classes, candidates)
    borrowed = near[1] if near else None
    mode = autotune_mode()
    if torch.cuda.is_current_stream_capturing() or getattr(_untuned, "active", False):
        return cached or borrowed or default  # not remembered: a later eager call may tune
    if mode == 0 or (mode in (1, AUTO) and cached is not None) or (mode == AUTO and near):
        best = cached or borrowed or default
        stand_in = cached is None
        if cached is None and near:
            log.info("%s [%s]: no config in the table, using its nearest class's [%s] %s",
                     kernel, key, near[0], best)
    else:
        best = _tune(kernel, key, candidates, bench)
        with _lock:
            _table(slug).setdefault(kernel, {})[key] = best
            _save(slug)
        stand_in = False
    _resolved[(kernel, key, index)] = (best, stand_in)
    return best


def committed(kernel: str, key: str, device: torch.device,
              classes: dict[str, tuple[int, ...]] | None = None) -> Config | None:
    """The config the table of `device`'s GPU holds for `kernel` at `key`, else an adjacent
    size class's (nearest_class, one step); None when it holds neither or `device` is not a
    GPU. Never tunes: for a caller that takes a kernel only where one was measured."""
    if device.type != "cuda":
        return None
    cached, near = _lookup(kernel, key, gpu_slug(_index(device)), classes)
    if cached is not None:
        return cached
    return near[1] if near else None


def _index(device: torch.device) -> int:
    """The CUDA device index of `device` (the current device when it names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _lookup(kernel: str, key: str, slug: str, classes: dict[str, tuple[int, ...]] | None,
            candidates: list[Config] | None = None
            ) -> tuple[Config | None, tuple[str, Config] | None]:
    """(the table's config for `key`, else None; when it has none, the nearest adjacent
    size class's (key, config) when `classes` are given and one exists, else None)."""
    with _lock:
        entries = _table(slug).get(kernel, {})
        cached = entries.get(key)
        near = (nearest_class(entries, key, classes, candidates=candidates)
                if cached is None and classes else None)
    return cached, near


@contextlib.contextmanager
def untuned():
    """Launches on this thread inside the block use the cached config (else an adjacent
    class's, else the default) and tune nothing, as during a CUDA graph capture. The start-up
    warm-up runs under it: its inputs are not the real ones (its decodes all read one context,
    from cache), so timings taken on them could pick a config that is slower in serving."""
    outer = getattr(_untuned, "active", False)  # nested: leave the outer block's state
    _untuned.active = True
    try:
        yield
    finally:
        _untuned.active = outer


def _tune(kernel: str, key: str, candidates: list[Config],
          bench: Callable[[Config], float]) -> Config:
    timings: list[tuple[float, Config]] = []
    for cfg in candidates:
        try:
            timings.append((bench(cfg), cfg))
            log.debug("%s [%s] %s: %.4f ms", kernel, key, cfg, timings[-1][0])
        except Exception as exc:  # a candidate may not compile (e.g. out of shared memory)
            log.debug("%s [%s] %s failed: %s", kernel, key, cfg, exc)
    if not timings:
        raise RuntimeError(f"no candidate config ran for kernel {kernel} ({key})")
    ms, best = min(timings, key=lambda t: t[0])
    log.info("tuned %s [%s]: %s (%.4f ms, %d candidates)", kernel, key, best, ms, len(timings))
    return best


def time_config(fn: Callable[[], object]) -> float:
    """Median time of `fn` in ms; short warm-up and repeat so tuning stays quick."""
    import triton.testing

    from aiollm.kernels import pdl

    with pdl.suspended():  # timed alone, as plain launches (pdl.suspended says why)
        return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))


def time_graph(fn: Callable[[], object]) -> float:
    """Median time in ms of `fn` replayed from a CUDA graph, for a forward of several launches
    that serving runs from graphs (decode and prefill graphs): timed eagerly, such a forward
    measures the host's launches instead of the device (fused MoE at 1,024 tokens on an H200:
    0.77 ms eager, 0.41 ms from a graph, so its path was chosen by launch count). `fn` runs
    once eagerly first, so that the launches inside it resolve (and tune) their own configs
    before the capture, during which get_config never tunes."""
    import triton.testing

    from aiollm.kernels import pdl

    with pdl.suspended():  # as time_config's launches
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        caller = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                fn()
        finally:
            # torch.cuda.graph ends the capture before it restores the caller's stream, so a
            # capture that fails there (the tuner goes on to the next candidate) would leave
            # this thread on the capture's side stream
            torch.cuda.set_stream(caller)
        return float(triton.testing.do_bench(graph.replay, warmup=5, rep=25, return_mode="median"))
