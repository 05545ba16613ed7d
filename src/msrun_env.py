"""What msrun tells a process through its environment (MindSpore 2.10), with no MindSpore import.

msrun exports to each worker ``MS_ROLE=MS_WORKER``, ``RANK_ID`` (the global rank; set whenever the rank is
known at launch: one node, or ``--node_rank`` on a cluster), ``MS_WORKER_NUM`` (the world size; ``RANK_SIZE``
holds the same), ``MS_NODE_ID`` and ``DEVICE_ID`` (the local rank). It also starts the script once more as
its scheduler (``MS_ROLE=MS_SCHED``, ``RANK_ID=0``) on every node whose ``--master_addr`` is one of its own
addresses: on a real cluster only node 0, but every node when several share one host (two nodes simulated
on 127.0.0.1). Our launchers export ``NODE_RANK``, so such an extra scheduler can step aside.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from src.errors import UserError


@dataclass(frozen=True)
class Shard:
    """One worker's place in a job: its global rank and the world size."""
    rank: int
    world: int

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}"


def is_msrun_scheduler(environ=None) -> bool:
    """True in the process msrun starts as its scheduler (it runs the script too)."""
    env = os.environ if environ is None else environ
    return env.get("MS_ROLE") == "MS_SCHED"


def is_extra_scheduler(environ=None) -> bool:
    """True in a scheduler msrun started on node ``NODE_RANK`` > 0: that node shares the master's host, whose
    node 0 already runs the job's scheduler on the same port; a second one would fail to bind and fail the
    node's msrun although its workers succeed."""
    env = os.environ if environ is None else environ
    try:
        return is_msrun_scheduler(env) and int(env.get("NODE_RANK", "0")) > 0
    except ValueError:
        return False


def _int_variable(env, name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise UserError(f"msrun started this worker without a usable {name} ({env.get(name)!r}); start it "
                        f"through scripts/run_distribute_eval.sh (msrun with --node_rank on a cluster)") from None


def worker_shard(environ=None) -> Optional[Shard]:
    """This process's rank and world when msrun started it as a worker; None for a plain process."""
    env = os.environ if environ is None else environ
    if env.get("MS_ROLE") != "MS_WORKER":
        return None
    world = _int_variable(env, "MS_WORKER_NUM")
    rank = _int_variable(env, "RANK_ID")
    if not 0 <= rank < world:
        raise UserError(f"msrun gave this worker RANK_ID={rank} outside 0..{world - 1} (MS_WORKER_NUM={world})")
    return Shard(rank=rank, world=world)
