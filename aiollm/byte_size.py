"""byte_size: a count of bytes as people read it in a message (`512 B`, `32.00 KiB`,
`1.50 GiB`), in the first binary unit in which it reads below 1,024. A fixed unit printed
tiny sizes as nothing: a test model's KV cache of 32 KiB read "0.00 GiB".
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def byte_size(n: int | float) -> str:
    """`n` bytes (>= 0) in binary units (1 KiB = 1,024 B): whole bytes (the nearest) below
    1 KiB, else with two decimals in the smallest unit, up to PiB, in which the size so
    rounded is below 1,024. That is the largest unit of which there is at least one, except
    just below a unit: 1,048,575 B reads "1.00 MiB", not "1024.00 KiB"."""
    if round(n) < 1024:
        return f"{round(n)} B"
    value, unit = float(n), "B"
    for unit in _UNITS:
        value /= 1024
        if round(value, 2) < 1024:
            break
    return f"{value:.2f} {unit}"
