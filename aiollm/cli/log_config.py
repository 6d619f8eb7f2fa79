"""The process's logging: one format, the level and the periodic statistics as `aiollm serve`'s
flags say (--log-level, --disable-log-stats), and the flags aiollm's messages name rewritten
as the user typed them while serve runs."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STATS_LOGGER = "aiollm.stats"  # periodic statistics (the prefix cache's hit rate)
_rewritten: dict[str, str] = {}  # messages_rewritten's flags while its block runs


def configure_logging(args: argparse.Namespace) -> None:
    """The process's logging as serve's flags say: --log-level, --disable-log-stats."""
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    logging.getLogger(STATS_LOGGER).setLevel(logging.NOTSET if args.log_stats
                                             else logging.WARNING)


def rewrite_flags(message: str, flags: dict[str, str]) -> str:
    """`message` with each flag of `flags` (aiollm's flag: the flag as typed, "--max-model-len":
    "--context-length") it names in passing, "(--max-model-len)", as typed."""
    for read, typed in flags.items():
        message = message.replace(f"({read})", f"({typed})")
    return message


def flags_rewritten() -> dict[str, str]:
    """The flags messages_rewritten rewrites now ({} outside its block): a tensor parallel
    rank spawned meanwhile rewrites its own messages alike (spawned_ranks.py)."""
    return dict(_rewritten)


@contextmanager
def messages_rewritten(flags: dict[str, str]) -> Iterator[None]:
    """Within the block, every record of aiollm's loggers carries its message with the flags
    it names in passing, "(--kv-tokens)", as the user typed them (rewrite_flags: serve's
    serve_checks.typed_flags, LightLLM's "(--max_total_token_num)"), so that the engine's
    warnings name them without the engine knowing the CLI. A record factory, not a filter: a
    logger's filter sees only the records logged at that logger, not its children's, and a
    handler's only what reaches that handler; the factory sees every record before any
    handler (a caller's, pytest's). The factory in place before is restored on exit, for a
    caller of main(argv) whose process goes on."""
    global _rewritten
    made, before = logging.getLogRecordFactory(), _rewritten

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = made(*args, **kwargs)
        if record.name == "aiollm" or record.name.startswith("aiollm."):
            try:
                message = record.getMessage()
            except Exception:  # a record whose arguments do not fit: the handler reports it
                return record
            if (rewritten := rewrite_flags(message, flags)) != message:
                record.msg, record.args = rewritten, None
        return record

    logging.setLogRecordFactory(factory)
    _rewritten = dict(flags)
    try:
        yield
    finally:
        logging.setLogRecordFactory(made)
        _rewritten = before
