"""Flag names spelt with underscores (`--max_model_len 512`), read as their dashed names, as
vLLM's parser reads them: launch lines written for `vllm serve` use both spellings."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aiollm.cli.help_format import ShortUsage


def dashed(args: Sequence[str]) -> list[str]:
    """`args` with each long flag's name dashed (--max_num_seqs=8 is --max-num-seqs=8);
    values, single-dash flags and every word after a bare "--" stay as given."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


class ArgumentParser(ShortUsage):
    """argparse's parser, reading long flags spelt with underscores as their dashed names
    (and printing a short usage line with its errors: ShortUsage)."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(dashed(sys.argv[1:] if args is None else args),
                                        namespace)
