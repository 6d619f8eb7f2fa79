"""An idle tensor-parallel engine keeps its ranks (the CPU, gloo, 2 ranks).

A follower waits for rank 0's next step message in a gloo broadcast, which gives up after
the host group's timeout (30 minutes, torch's default for a gloo group): a server that got no
request for half an hour lost its follower ("Timed out waiting 1800000ms for recv operation
to complete"), and with it the whole server (the watchdog ends it). Rank 0 now sends an idle
message while it has no step to send, well within that timeout.

Here the follower's host group times out after TIMEOUT_S once it serves (a sitecustomize on
its PYTHONPATH wraps TensorParallel.recv_step: the follower runs as __main__, its own
functions out of reach), and rank 0's idle message comes every KEEPALIVE_S."""

from __future__ import annotations

import asyncio
import os

from test_tensor_parallel import PROMPTS, _children, tiny_model  # noqa: F401 - a fixture

from aiollm.distributed import group
from aiollm.engine import Engine
from aiollm.sampling_params import SamplingParams

# the follower's: two of them pass idle, any one would end it. 3 s, not 2 (bdec26a): a
# keep-alive or step late by TIMEOUT_S - KEEPALIVE_S (a stall of a loaded 2-core CI) ends it
TIMEOUT_S = 3.0
KEEPALIVE_S = TIMEOUT_S / 12  # 12 a timeout: a loaded machine's late one is not a lost follower
_SITECUSTOMIZE = f'''
from datetime import timedelta
import torch.distributed.distributed_c10d as c10d
from aiollm.distributed.group import TensorParallel

_recv_step = TensorParallel.recv_step

def recv_step(self):  # (the follower serves: start-up's checkpoints are behind it)
    c10d._set_pg_timeout(timedelta(seconds={TIMEOUT_S}), self.cpu_group)
    return _recv_step(self)

TensorParallel.recv_step = recv_step
'''


def test_followers_outlast_an_idle_spell_past_their_groups_timeout(tiny_model,  # noqa: F811
                                                                   tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the spawned rank's
    monkeypatch.setattr(group, "KEEPALIVE_S", KEEPALIVE_S, raising=False)
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    # (a child an earlier test of this worker left, still exiting, is none of this test's)
    before = set(_children(os.getpid()))

    async def go():
        engine = Engine(tiny_model, device="cpu", tensor_parallel_size=2, kv_tokens=256,
                        max_model_len=128)
        engine.exit_on_lost_rank = False  # (this process is pytest's)
        async with engine:
            first = await engine.generate(PROMPTS[0], greedy)
            await asyncio.sleep(2 * TIMEOUT_S)  # no request meanwhile
            assert engine.ranks.lost is None, engine.ranks.lost
            again = await engine.generate(PROMPTS[0], greedy)
        assert again.token_ids == first.token_ids

    asyncio.run(go())
    assert set(_children(os.getpid())) <= before  # the ranks are gone
