"""Tensor parallelism over torch.distributed: rank start-up (launch.py), the ranks it spawns
(spawned_ranks.py), their watchdog (rank_watchdog.py) and its rendezvous (rendezvous.py),
the step messages and collectives (group.py), and the follower loop of the ranks other than
0 (follower.py).

Rank 0 is the process the user started, unchanged: event loop, HTTP API, request table,
planner, scheduler. The other ranks hold only their shard of the weights and their KV heads
and run each step rank 0 plans; they never touch HTTP, the table or the scheduler.
"""

from aiollm.distributed.group import RankLost, TensorParallel
from aiollm.distributed.launch import NodeRanks

__all__ = ["NodeRanks", "RankLost", "TensorParallel"]
