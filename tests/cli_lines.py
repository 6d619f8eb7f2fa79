"""Two ways to run an `aiollm serve M LINE` command line through the parser and serve's
checks without starting anything: what it starts with, or the error it stops with."""

from __future__ import annotations

import logging

import pytest

from aiollm.cli import build_parser
from aiollm.cli.serve_checks import checked_config


def started(line: str, caplog) -> tuple[object, list[str]]:
    """The EngineConfig `aiollm serve M LINE` starts with, and its log lines at INFO."""
    args = build_parser().parse_args(["serve", "M", "--device", "cpu", *line.split()])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        config, _ = checked_config(args.command_parser, args)
    return config, [r.getMessage() for r in caplog.records]


def refusal(line: str, capsys) -> str:
    """The one error line `aiollm serve M LINE` stops with (exit 2)."""
    with pytest.raises(SystemExit) as e:
        args = build_parser().parse_args(["serve", "M", *line.split()])
        checked_config(args.command_parser, args)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]
