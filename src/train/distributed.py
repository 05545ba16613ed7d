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


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.reduce(x)


_REDUCER = []


def all_reduce_sum(values, parallel: ParallelInfo = ParallelInfo()) -> np.ndarray:
    """Sum a float array over all ranks (the only reduction MindSpore's CPU back end has); a copy for one rank."""
    values = np.asarray(values, dtype=np.float32)
    if not parallel.distributed:
        return values.copy()
    if not _REDUCER:
        _REDUCER.append(_AllReduceSum())
    flat = values.reshape(-1) if values.ndim else values.reshape(1)
    return _REDUCER[0](ms.Tensor(flat)).asnumpy().reshape(values.shape)


def all_gather_rows(values, parallel: ParallelInfo = ParallelInfo()) -> np.ndarray:
    """``(world, N)``: row r holds rank r's vector (each rank fills its own row of zeros; the sum is exact)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    rows = np.zeros((parallel.world, values.size), dtype=np.float32)
    rows[parallel.rank] = values
    return all_reduce_sum(rows, parallel)


def weight_checksums(network) -> np.ndarray:
    """Per-parameter fingerprints: sum and sum of squares (accumulated in float64, stored as float32)."""
    sums = []
    for param in network.trainable_params():
        data = param.asnumpy().astype(np.float64)
        sums.extend((data.sum(), (data * data).sum()))
    return np.asarray(sums, dtype=np.float32)


def weights_identical_across_ranks(network, parallel: ParallelInfo) -> bool:
    """True when every rank holds bit-identical weight fingerprints."""
    rows = all_gather_rows(weight_checksums(network), parallel)
    return bool(all(np.array_equal(rows[0], row) for row in rows[1:]))
