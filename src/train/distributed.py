"""Data-parallel set-up: communication, gradient averaging, and cross-rank checks.

A process counts as one rank of a data-parallel job when ``msrun`` started it (``MS_ROLE`` is set), when
the legacy Ascend launch gave it a rank table (``RANK_TABLE_FILE`` with ``RANK_SIZE`` > 1), or when
OpenMPI started it. Every rank runs the same script; only rank 0 writes files.
"""
import os
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init

from src.errors import UserError


@dataclass(frozen=True)
class ParallelInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_distributed(environ=None) -> bool:
    """Whether the environment says this process is one rank of a multi-process job."""
    env = os.environ if environ is None else environ
    if env.get("MS_ROLE"):
        return True
    if env.get("OMPI_COMM_WORLD_SIZE") and int(env["OMPI_COMM_WORLD_SIZE"]) > 1:
        return True
    return bool(env.get("RANK_TABLE_FILE")) and int(env.get("RANK_SIZE", "1")) > 1


def init_data_parallel(environ=None) -> ParallelInfo:
    """Initialise communication and DATA_PARALLEL mode with averaged gradients when launched as a job.

    Call after the device is set and before the one-step Cell is built (it picks up the gradient
    all-reduce from the parallel context). A single process returns rank 0 of 1 and changes nothing.
    """
    if not launched_distributed(environ):
        return ParallelInfo()
    try:
        init()
    except RuntimeError as err:
        raise UserError(f"could not initialise distributed communication: {str(err).strip().splitlines()[0]}") \
            from None
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return ParallelInfo(rank=get_rank(), world=world)


class _AllReduce(nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.reduce = ops.AllReduce(op)

    def construct(self, x):
        return self.reduce(x)


_REDUCERS = {}


def all_reduce(values, op: str = "sum", info: ParallelInfo = ParallelInfo()) -> np.ndarray:
    """Reduce a float vector over all ranks (``sum``, ``max`` or ``min``); identity for a single process."""
    values = np.asarray(values, dtype=np.float32)
    if not info.distributed:
        return values.copy()
    ops_by_name = {"sum": ops.ReduceOp.SUM, "max": ops.ReduceOp.MAX, "min": ops.ReduceOp.MIN}
    if op not in _REDUCERS:
        _REDUCERS[op] = _AllReduce(ops_by_name[op])
    flat = values.reshape(-1) if values.ndim else values.reshape(1)
    reduced = _REDUCERS[op](ms.Tensor(flat)).asnumpy()
    return reduced.reshape(values.shape)


def weight_checksums(network) -> np.ndarray:
    """Per-parameter fingerprints (sum and sum of squares in float64, folded to float32 pairs)."""
    sums = []
    for param in network.trainable_params():
        data = param.asnumpy().astype(np.float64)
        sums.extend((data.sum(), (data * data).sum()))
    return np.asarray(sums, dtype=np.float32)


def weights_identical_across_ranks(network, info: ParallelInfo) -> bool:
    """True when every rank holds the same weights (the max and min of each fingerprint agree)."""
    local = weight_checksums(network)
    if not info.distributed:
        return True
    highest = all_reduce(local, "max", info)
    lowest = all_reduce(local, "min", info)
    return bool(np.array_equal(highest, lowest))
