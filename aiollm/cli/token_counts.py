"""Token counts (and byte counts) on the command line as vLLM's flags take them: a plain
integer, or a number with a suffix, lower case counting in powers of 1000 (k, m, g, t:
`25.6k` is 25600) and upper case in powers of 1024 (K, M, G, T: `4K` is 4096, a whole
number before it), as vLLM's human_readable_int. For --max-model-len and
--max-prefill-tokens (vLLM's --max-num-batched-tokens), and in bytes for
--kv-cache-memory-bytes (`4G`, `500m`), the flags vLLM reads this way; --max-model-len
also takes vLLM's `auto` (or -1): the model's own limit, within what the KV cache holds,
which is what leaving it out gives.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal

_SCALES = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
           "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_WITH_SUFFIX = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kmgtKMGT])")
_FORMS = ("an integer, or one with a suffix: k, m, g or t for thousands, millions... (25.6k "
          "is 25600), K, M, G or T for 1024s, 1024^2... (4K is 4096)")


def token_count(value: str) -> int:
    """`value` as a number of tokens (the forms above); argparse.ArgumentTypeError naming
    the value and the forms taken, for anything else. Range checks are EngineConfig's."""
    return _count(value, "tokens")


def byte_count(value: str) -> int:
    """`value` as a number of bytes (the forms above: 4G is 4 x 2**30, 4g 4 x 10**9);
    argparse.ArgumentTypeError naming the value and the forms taken, for anything else.
    Range checks are EngineConfig's."""
    return _count(value, "bytes")


def _count(value: str, unit: str) -> int:
    text = value.strip()
    match = _WITH_SUFFIX.fullmatch(text)
    if match is None:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of {unit}: give "
                                             f"{_FORMS}") from None
    number, suffix = match.groups()
    if suffix.isupper() and "." in number:
        raise argparse.ArgumentTypeError(
            f"{value!r}: {suffix} counts in powers of 1024 and takes a whole number (give "
            f"{number}{suffix.lower()} for powers of 1000)")
    count = Decimal(number) * _SCALES[suffix]
    if count != count.to_integral_value():
        raise argparse.ArgumentTypeError(f"{value!r} is {count.normalize():f} {unit}, not a "
                                         "whole number")
    return int(count)


def max_model_len(value: str) -> int | None:
    """--max-model-len's `value`: token_count's, or None (the model's own limit) for vLLM's
    `auto` (any case) and -1."""
    if value.strip() == "-1" or value.strip().lower() == "auto":
        return None
    return token_count(value)
