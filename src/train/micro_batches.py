"""Exact micro-batching (gradient accumulation): one optimizer step over a batch run as several smaller
forward/backward passes, so that the activations of only ``micro_batch_size`` samples are held at once.

A step over a batch of B samples in parts of m: the batch's loss normalizers are computed from its targets
(``loss_fn.normalizers``: valid voxels, labelled channels, samples x classes); each part runs forward and
backward in one compiled graph scoring its share of the batch's loss with those normalizers
(``loss_fn.part``), so the shares sum to the batch's loss and their gradients to its gradient (the
networks use instance norm, per sample, so a sample's forward does not depend on the others); then the
summed gradients go through the same all-reduce, clipping and optimizer update as the whole-batch cells
of ``train_cell.py``, whose parameters (weights, optimizer and loss-scale state) the step shares: the
checkpoints are the same whichever size ran. With amp O2 each part's gradients are unscaled with the
current loss scale and the overflow check runs once on their sum, so an overflow in any part skips the
step, as it would skip the whole batch's. With micro_batch_size == batch_size the cell of
``train_cell.build_train_cell`` runs unchanged.
"""
import os

import mindspore as ms
from mindspore import nn, ops

from src.cpu_env import process_memory_budget
from src.train.memory_estimate import MicroBatchChoice, choose_micro_batch_size
from src.train.train_cell import ClippedLossScaleTrainOneStepCell, _unscale


class _PartLoss(nn.Cell):
    """``(norms, data, [task_id,] seg_0, ...) -> this part's share of the batch loss``."""

    def __init__(self, network, loss_fn, task_conditioned: bool):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.task_conditioned = bool(task_conditioned)

    def construct(self, norms, data, *targets):
        if self.task_conditioned:
            return self.loss_fn.part(self.network(data, targets[0]), targets[1:], norms)
        return self.loss_fn.part(self.network(data), targets, norms)


class _Normalizers(nn.Cell):
    """``(seg_0, ...) -> the batch loss's normalizers`` (``loss_fn.normalizers``)."""

    def __init__(self, loss_fn):
        super().__init__(auto_prefix=False)
        self.loss_fn = loss_fn

    def construct(self, *targets):
        return self.loss_fn.normalizers(targets)


class _PartGradients(nn.Cell):
    """``(scale, norms, part...) -> (loss share, gradients / scale)``: one part's forward and backward."""

    def __init__(self, part_loss, weights, scaled: bool):
        super().__init__(auto_prefix=False)
        self.network = part_loss
        self.weights = weights
        self.scaled = scaled
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, scale, norms, *inputs):
        loss = self.network(norms, *inputs)
        if self.scaled:
            sens = ops.ones_like(loss) * ops.cast(scale, ops.dtype(loss))
        else:
            sens = ops.fill(loss.dtype, loss.shape, 1.0)
        grads = self.grad(self.network, self.weights)(norms, *inputs, sens)
        if self.scaled:
            grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        return loss, grads


class _AddGradients(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)
        self.hyper_map = ops.HyperMap()

    def construct(self, total, grads):
        return self.hyper_map(ops.add, total, grads)


class _ApplyGradients(nn.Cell):
    """The one-step cell's own tail (``apply_gradients``) as a graph of its own, on summed gradients."""

    def __init__(self, train_cell):
        super().__init__(auto_prefix=False)
        self.cell = train_cell

    def construct(self, grads):
        return self.cell.apply_gradients(grads)


class MicroBatchedStep:
    """Called like the one-step cell, ``step(data, [task_id,] seg_0, ...) -> loss`` (a Tensor), over
    ``batch_size / micro_batch_size`` parts; shares the parameters of ``train_cell``."""

    def __init__(self, train_cell, forward_network, loss_fn, micro_batch_size: int, task_conditioned: bool = False):
        self.train_cell = train_cell
        self.micro_batch_size = int(micro_batch_size)
        self.scaled = isinstance(train_cell, ClippedLossScaleTrainOneStepCell)
        self.num_inputs_before_targets = 2 if task_conditioned else 1
        part_loss = _PartLoss(forward_network, loss_fn, task_conditioned)
        self.normalizers = _Normalizers(loss_fn)
        self.part_gradients = _PartGradients(part_loss, train_cell.weights, self.scaled)
        self.add = _AddGradients()
        self.apply = _ApplyGradients(train_cell)
        self.one = ms.Tensor(1.0, ms.float32)
        for cell in (self.normalizers, self.part_gradients, self.add, self.apply):
            cell.set_train(True)

    @property
    def optimizer(self):
        return self.train_cell.optimizer

    def __call__(self, *batch):
        size = int(batch[0].shape[0])
        if size % self.micro_batch_size:
            raise ValueError(f"a batch of {size} does not split into micro-batches of {self.micro_batch_size}")
        norms = self.normalizers(*batch[self.num_inputs_before_targets:])
        scale = self.train_cell.scale_sense if self.scaled else self.one
        loss, total = None, None
        for first in range(0, size, self.micro_batch_size):
            part = tuple(item[first:first + self.micro_batch_size] for item in batch)
            share, grads = self.part_gradients(scale, norms, *part)
            loss = share if loss is None else loss + share
            # a tuple of Tensors passed to a graph is a constant unless marked mutable (then it recompiles
            # whenever the values change)
            total = grads if total is None else self.add(ms.mutable(total), ms.mutable(grads))
        self.apply(ms.mutable(total))
        return loss


def local_workers(world: int = 1, environ=None) -> int:
    """The training processes that share this machine's memory: ``KITSEG_LOCAL_WORKERS`` (exported by
    scripts/run_distribute_train.sh), else the world size (every rank on this node, the safe side)."""
    env = os.environ if environ is None else environ
    try:
        return max(int(env["KITSEG_LOCAL_WORKERS"]), 1)
    except (KeyError, ValueError):
        return max(int(world), 1)


def choose_step(cfg, plan, device: str, world: int = 1, available_bytes=None) -> MicroBatchChoice:
    """The micro-batch size of this process's steps and its log line (``memory_estimate``); a
    ``UserError`` when ``auto`` finds that even one sample cannot fit. ``available_bytes`` None reads this
    process's share of the machine (``process_memory_budget``) when the choice needs it."""
    if cfg.micro_batch_size == "auto" and device == "CPU" and available_bytes is None:
        available_bytes = process_memory_budget(local_workers(world))
    return choose_micro_batch_size(plan, cfg, device, available_bytes)


def build_step(cfg, plan, device: str, train_cell, forward_network, loss_fn, task_conditioned: bool = False,
               available_bytes=None, choice: MicroBatchChoice = None):
    """``(step, log line)``: ``train_cell`` itself for the whole batch, else a ``MicroBatchedStep``;
    ``choice`` from ``choose_step`` (made here when None)."""
    if choice is None:
        choice = choose_step(cfg, plan, device, available_bytes=available_bytes)
    if choice.micro_batch_size == int(cfg.batch_size):
        return train_cell, choice.line
    step = MicroBatchedStep(train_cell, forward_network, loss_fn, choice.micro_batch_size, task_conditioned)
    return step, choice.line
