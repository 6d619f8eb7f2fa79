"""The process's logging: one format, the level and the periodic statistics as `aiollm serve`'s
flags say (--log-level, --disable-log-stats)."""

from __future__ import annotations

import argparse
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STATS_LOGGER = "aiollm.stats"  # periodic statistics (the prefix cache's hit rate)


def configure_logging(args: argparse.Namespace) -> None:
    """The process's logging as serve's flags say: --log-level, --disable-log-stats."""
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    logging.getLogger(STATS_LOGGER).setLevel(logging.NOTSET if args.log_stats
                                             else logging.WARNING)
