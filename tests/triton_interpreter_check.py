"""Whether Triton's CPU interpreter, with the NumPy installed beside it, runs a loop whose bound
is known only at run time; the CPU suite's kernel tests all need it.

Triton 3.6's interpreter turns a scalar into a Python int by int() of a one-element 1-d NumPy
array (its tensor `__index__`), which NumPy 2.4 refuses: "only 0-dimensional arrays can be
converted to Python scalars" (triton-lang/triton#9171; Triton 3.9 squeezes the array first).
Every aiollm kernel that loops to a length given at launch (`for k0 in range(0, K, BLOCK_K)`)
calls it, and no other spelling of that loop compiles the same for the GPU, so the remedy is on
the environment's side: NumPy < 2.4 with such a Triton. Run as a script (the Makefile's set-up
does), this exits 1 when the installed pair cannot run the suite.
"""

from __future__ import annotations

import os
import sys

REMEDY = "pip install 'numpy<2.4'"


def interpreter_runs_runtime_loops() -> bool:
    """True when a kernel's `range(0, n)` over a launch argument n runs under the interpreter.

    Needs TRITON_INTERPRET=1 set before triton was first imported. Errors other than the
    interpreter's own (InterpreterError) propagate."""
    import torch
    import triton
    import triton.language as tl
    from triton.runtime.errors import InterpreterError

    @triton.jit
    def _store_indices(out, n):
        for i in range(0, n):
            tl.store(out + i, i)

    out = torch.full((3,), -1, dtype=torch.int32)
    try:
        _store_indices[(1,)](out, 3)
    except InterpreterError:
        return False
    return out.tolist() == [0, 1, 2]


def mismatch_message() -> str:
    """The one line a user reads when the pair cannot run the suite: versions and the remedy."""
    import numpy
    import triton

    return (f"Triton {triton.__version__}'s CPU interpreter cannot run aiollm's kernels with "
            f"NumPy {numpy.__version__} (it converts one-element arrays with int(), which NumPy "
            f"2.4 refuses; triton-lang/triton#9171): {REMEDY}, or use a Triton with the fix "
            f"(3.9 does)")


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported, below
    if not interpreter_runs_runtime_loops():
        print(mismatch_message(), file=sys.stderr)
        sys.exit(1)
