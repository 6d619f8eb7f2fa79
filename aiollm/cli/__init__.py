"""`aiollm`: the command line (console script `aiollm`; `python -m aiollm`). Its command,
`aiollm serve [MODEL]`: serve_parser.py defines its flags (vllm_flags.py adds vLLM's,
sglang_flags.py and lightllm_flags.py SGLang's and LightLLM's; config_file.py reads them
from --config's YAML file), serve_checks.py checks what they give before anything loads,
serve.py starts the server; log_config.py sets up the process's logging."""

from __future__ import annotations

import argparse

from aiollm.cli.log_config import LOG_FORMAT, STATS_LOGGER, configure_logging

__all__ = ["LOG_FORMAT", "STATS_LOGGER", "build_parser", "configure_logging", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `aiollm` parser, its subcommands included."""
    from aiollm.cli.flag_spelling import ArgumentParser
    from aiollm.cli.serve_parser import add_serve_parser

    from aiollm import __version__

    parser = ArgumentParser(prog="aiollm", description="aiollm: a one-process LLM "
                                     "inference server (OpenAI- and LightLLM-compatible HTTP).")
    # vLLM's `vllm --version` / `-v`: the version alone, as /version answers it
    parser.add_argument("-v", "--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments) names: its exit status
    (130 for Ctrl-C before the server's own signal handlers); SystemExit 2 for a usage
    error.

    Everything past the standard library is imported in here, not when this module is:
    Ctrl-C while the console script imports `main` is Python's to report (a traceback of
    the imports), and what is imported in here is ours (exit 130, quietly).

    Run as the script (no argv: the console script, `python -m aiollm`), it does not
    return: the process ends with the status through process_exit.exit_now, which skips
    the interpreter's teardown of what serving loaded (0.7 s of CPU at every exit)."""
    status = _run(argv)
    if argv is None:
        from aiollm.cli.process_exit import exit_now

        exit_now(status)
    return status


def _run(argv: list[str] | None) -> int:
    try:
        from aiollm.cli import serve

        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "serve":
            return serve.run(args.command_parser, args)
    except KeyboardInterrupt as e:  # (Terminated: SIGTERM while a TP start-up waits)
        from aiollm.stop_signal import exit_status

        return exit_status(e)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks it
    return 2
