"""weak_method: a callback to an object's method that does not keep the object alive.

An engine hands callbacks to the parts it owns (its metrics' gauges read its stats, its
tensor-parallel ranks fail its requests): a bound method there made a reference cycle, so a
stopped engine dropped by its owner (a closed LLM) kept its model, its request table and its
threads' memory until Python's collector happened to run. Weak, the engine is freed when its
last reference goes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


def weak_method(method: Callable, default: Any = None) -> Callable:
    """A callable that calls bound `method` with its arguments while the method's object
    lives, and returns `default` (calling nothing) once the object is gone."""
    ref = weakref.WeakMethod(method)

    def call(*args, **kwargs):
        bound = ref()
        return default if bound is None else bound(*args, **kwargs)

    return call
