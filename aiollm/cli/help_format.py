"""How the command line presents itself: HelpFormatter lays out `aiollm serve --help`'s
options; ShortUsage makes a usage error one short usage line and the error."""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it tells something: not where the help already names it,
    not a None, not the True of a --no-X switch (which reads as the opposite)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return super()._get_help_string(action)

    # flag names are not broken at their hyphens ("--gpu-" / "memory-utilization")
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width,
                             initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class ShortUsage(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors print `short_usage` (if given) as their usage
    line, not the synopsis of every flag that --help still shows (serve's is ~50 lines,
    above the one line that says what is wrong), as `vllm serve` prints its own. Arguments
    none of a command's flags take are reported by that command's parser (the namespace's
    command_parser), with its usage line: the top-level one named no command's flags."""

    def __init__(self, *args, short_usage: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.short_usage = short_usage

    def format_usage(self) -> str:
        if self.short_usage is None:
            return super().format_usage()
        return f"usage: {self.short_usage}\n"

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            reporter = getattr(parsed, "command_parser", self)
            reporter.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed
