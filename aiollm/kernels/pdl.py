"""Programmatic dependent launch (PDL; CUDA 12, Hopper and later) for the decode kernels and the
MoE layer's (routing, alignment, grouped GEMMs, combine).

A kernel launched with PDL may start while the kernel before it on the stream is finishing,
so its launch and its first independent loads (a GEMV's weights) overlap that kernel's tail
instead of following it; inside a CUDA graph the launch gaps between a decode step's ~100
kernels shrink the same way. The contract: before reading anything an earlier kernel wrote,
or writing anything, a PDL kernel calls `gdc_wait()` (which returns once the previous kernel
has completed and its writes are visible); it then calls `gdc_launch_dependents()` to let the
next one start. Each PDL kernel waiting on its predecessor makes the order transitive.

AIOLLM_PDL=0 turns it off (every launch then waits for the one before, as usual).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch
import triton

try:
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _SUPPORTED = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:  # a Triton without grid dependency control: never launched with PDL
    _SUPPORTED = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

__all__ = ["enabled", "launch_kwargs", "gdc_wait", "gdc_launch_dependents"]

_ON = os.environ.get("AIOLLM_PDL", "1") != "0"
_off = threading.local()  # .active: inside suspended(), on this thread


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def _interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET), read as Triton reads
    it where its version has `triton.knobs`."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` are launched with PDL: never on the CPU, nor under Triton's
    interpreter (TRITON_INTERPRET=1, CUDA tensors included), which cannot run gdc_wait's PTX."""
    if not (_SUPPORTED and _ON) or device.type != "cuda" or getattr(_off, "active", False):
        return False
    if _interpreted():
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


@contextlib.contextmanager
def suspended():
    """Launches on this thread inside the block are plain ones. Tuning times kernels under
    it: timed alone by triton's do_bench (a cache flush before each run), PDL launches
    measured far slower than they run in a step (H200, 2026-12-01: the 1B shape's qkv GEMV
    187.5 us with PDL, 33.2 us without; its whole decode step got faster with PDL), so the
    configs picked were noise. Why was not isolated."""
    outer = getattr(_off, "active", False)  # nested (tuning inside tuning): keep it off
    _off.active = True
    try:
        yield
    finally:
        _off.active = outer


def launch_kwargs(device: torch.device) -> dict:
    """{"PDL": bool} for a kernel's constexpr, plus Triton's launch_pdl option when on."""
    on = enabled(device)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}
