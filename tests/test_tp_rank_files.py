"""The folder of the spawned ranks' `.joining` and `.err` files (spawned_ranks.py) is left
behind by no path the code controls: a node that spawns no rank makes none; a rank whose
lead was killed (SIGKILL: the lead cleans nothing) removes its files and, the last one, the
folder; a rank that fails after its folder was removed makes none again, and still says
why it failed. Each test runs a follower (follower.py) as its lead would: seconds each."""

from __future__ import annotations

import os
import tempfile

from aiollm.config import EngineConfig
from aiollm.distributed import NodeRanks
from aiollm.distributed.launch import _free_port


def test_a_node_that_spawns_no_rank_makes_no_folder(tmp_path, monkeypatch):
    """One rank per node (-tp 2 --nnodes 2): the node's lead spawns none, yet made a folder,
    which stayed when the node was killed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ranks = NodeRanks(EngineConfig(device="cpu", tensor_parallel_size=2, nnodes=2,
                                   dist_init_addr=f"127.0.0.1:{_free_port()}"))
    try:
        assert os.listdir(tmp_path) == []
    finally:
        ranks.abort()
    assert os.listdir(tmp_path) == []
