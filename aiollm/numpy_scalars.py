"""numpy's scalars as Python's: what SamplingParams and Constraint take where a request's
number, id or flag comes from an array (a length from np.percentile, an id from
np.flatnonzero, a flag from a mask), so that their checks and the engine see int, float and
bool alone."""

from __future__ import annotations

import numbers

import numpy as np


def plain_number(v: object) -> object:
    """numpy's integers and reals as Python's int and float (a length from np.percentile, an
    id from an array); anything else as it is."""
    if type(v) is int or type(v) is float:  # most values: the ABC checks below cost ~10x
        return v  # (a request's long token id list is converted on the event loop)
    if isinstance(v, numbers.Integral) and not isinstance(v, (int, bool)):
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
        return float(v)
    return v


def plain_bool(v: object) -> object:
    """numpy's bool (a flag from a mask or a data frame) as Python's; anything else as it is
    (a numpy bool stays refused where a number is asked for)."""
    return bool(v) if isinstance(v, np.bool_) else v
