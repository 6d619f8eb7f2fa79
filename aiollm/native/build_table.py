"""Emit the cffi C source of the request table extension (out-of-line API mode).

meson runs this script as a custom target: `python build_table.py table.h OUTPUT.c`.
The header is the cdef, minus its preprocessor lines.
"""

import sys
from pathlib import Path

import cffi


def main(header: str, output: str) -> None:
    text = Path(header).read_text()
    cdef = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source("aiollm.native._table", '#include "table.h"')
    ffi.emit_c_code(output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
