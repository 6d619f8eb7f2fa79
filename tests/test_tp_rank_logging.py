"""A spawned tensor parallel rank logs as its lead does (spawned_ranks.py, follower.py): at
the level of its lead's "aiollm" logger (`aiollm serve --log-level`), not always INFO, and
with the flags its messages name as the user typed them (log_config.messages_rewritten).
Each rank here fails at once on its config (no rendezvous): a few seconds of imports."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

import pytest

from aiollm.cli.log_config import messages_rewritten
from aiollm.config import EngineConfig
from aiollm.distributed.launch import _free_port
from aiollm.distributed.spawned_ranks import SpawnedRanks

TIMEOUT_S = 120  # a rank imports torch: seconds, more on a loaded machine


@pytest.fixture
def spawned():
    """SpawnedRanks whose ranks are killed and whose files are removed after the test."""
    ranks = SpawnedRanks()
    yield ranks
    ranks.kill()
    ranks.remove_files()


def _spawn(ranks: SpawnedRanks, rank: int, level: str, log_path, config: str) -> None:
    """Spawn rank `rank` with the "aiollm" logger at `level`, its stderr to `log_path`."""
    logger = logging.getLogger("aiollm")
    before = logger.level
    logger.setLevel(level)
    saved = os.dup(2)
    try:
        with open(log_path, "w") as f:
            os.dup2(f.fileno(), 2)  # (the child inherits this process's stderr)
            ranks.spawn(rank, f"127.0.0.1:{_free_port()}", config)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(before)


def test_a_spawned_rank_logs_at_its_leads_level_and_names_flags_as_typed(spawned, tmp_path):
    """The rank read its level from AIOLLM_LOG_LEVEL, which nothing set: at
    `--log-level critical` its failure was still logged, and its messages named aiollm's
    flags where the user typed SGLang's."""
    # kv_tokens below max_model_len: EngineConfig refuses it, naming both flags
    config = json.dumps({**asdict(EngineConfig(device="cpu", tensor_parallel_size=3)),
                         "kv_tokens": 16, "max_model_len": 32})
    logs = {1: tmp_path / "rank1.log", 2: tmp_path / "rank2.log"}
    with messages_rewritten({"--max-model-len": "--context-length"}):
        _spawn(spawned, 1, "CRITICAL", logs[1], config)
        _spawn(spawned, 2, "ERROR", logs[2], config)
    for p in spawned.procs.values():
        assert p.wait(TIMEOUT_S) == 1
    quiet, said = logs[1].read_text(), logs[2].read_text()
    assert "failed" not in quiet, quiet
    assert "tensor parallel rank 2 failed" in said, said
    assert "max_model_len (--context-length)" in said, said
    assert "(--max-model-len)" not in said, said
    assert "(--kv-tokens)" in said, said  # (a flag the user did not retype: as it was)


def test_a_level_named_by_the_lead_alone_reaches_the_rank_as_its_number():
    """A lead whose program named a level of its own (logging.addLevelName(25, "NOTICE"))
    and logs at it passed "--log-level NOTICE": the rank, a fresh interpreter that knows
    only logging's own names, failed in basicConfig ("Unknown level"), and the start with
    it."""
    from aiollm.distributed.spawned_ranks import _level_name

    assert _level_name(logging.INFO) == "INFO"
    before = logging.getLevelName(25)
    logging.addLevelName(25, "R250_NOTICE")
    try:
        assert _level_name(25) == "25"
    finally:
        logging._levelToName.pop(25, None)
        logging._nameToLevel.pop("R250_NOTICE", None)
    assert logging.getLevelName(25) == before
