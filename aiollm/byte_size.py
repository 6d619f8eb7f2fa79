"""byte_size: a count of bytes as people read it in a message (`512 B`, `32.00 KiB`,
`1.50 GiB`), in the largest binary unit it holds at least one of. A fixed unit printed
tiny sizes as nothing: a test model's KV cache of 32 KiB read "0.00 GiB".
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def byte_size(n: int | float) -> str:
    """`n` bytes (>= 0) in binary units (1 KiB = 1,024 B): whole bytes below 1 KiB, else two
    decimals of the largest unit of which there is at least one, up to PiB."""
    if n < 1024:
        return f"{int(n)} B"
    value, unit = float(n), "B"
    for unit in _UNITS:
        value /= 1024
        if round(value, 2) < 1024:  # 1,048,575 B is 1.00 MiB, not 1024.00 KiB
            break
    return f"{value:.2f} {unit}"
