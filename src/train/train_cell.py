"""One optimizer step as a compiled Cell: loss -> gradients -> (all-reduce) -> clip by global norm -> optimizer.

Two variants, chosen by the config's ``amp_level``:
- full precision (``O0``): ``ClippedTrainOneStepCell``;
- float16 with a dynamic loss scale (``O2``, and ``auto`` on Ascend, where Conv3d only takes float16):
  ``ClippedLossScaleTrainOneStepCell``. A step whose gradients overflow is skipped and the scale halves;
  after ``scale_window`` clean steps it doubles (the policy of PyTorch's GradScaler that nnU-Net uses).
Both return only the loss, so the trainer treats them alike.
"""
import mindspore as ms
from mindspore import nn, ops

# GradScaler's defaults in nnU-Net's PyTorch code: initial 2**16, factor 2, window 2000 steps.
INITIAL_LOSS_SCALE = 2.0 ** 16
LOSS_SCALE_FACTOR = 2
LOSS_SCALE_WINDOW = 2000

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(scale, grad):
    # a division, not a multiplication by the reciprocal: 1/scale is subnormal for huge scales and CPUs
    # flush it to zero
    return grad / ops.cast(scale, ops.dtype(grad))


_not_finite = ops.MultitypeFuncGraph("not_finite")


@_not_finite.register("Tensor")
def _not_finite_tensor(grad):
    return 1.0 - ops.cast(ops.isfinite(grad).all(), ms.float32)


class NetworkWithLoss(nn.Cell):
    """``(data, seg_0, ..., seg_{S-1}) -> scalar loss``; outputs are float32 (amp casts them back).

    A task-conditioned network (DoDNet) takes ``(data, task_id, seg_0, ...)`` and is called as
    ``network(data, task_id)``.
    """

    def __init__(self, network, loss_fn, task_conditioned: bool = False):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.task_conditioned = bool(task_conditioned)

    def construct(self, data, *targets):
        if self.task_conditioned:
            return self.loss_fn(self.network(data, targets[0]), targets[1:])
        return self.loss_fn(self.network(data), targets)


class ClippedTrainOneStepCell(nn.TrainOneStepCell):
    """``nn.TrainOneStepCell`` with gradient-norm clipping between the all-reduce and the update."""

    def __init__(self, network_with_loss, optimizer, clip_norm: float):
        super().__init__(network_with_loss, optimizer)
        self.clip_norm = float(clip_norm)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, 1.0)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        return ops.depend(loss, self.apply_gradients(grads))

    def apply_gradients(self, grads):
        """The step's tail on this rank's gradients: all-reduce, clip by global norm, optimizer."""
        grads = self.grad_reducer(grads)
        grads = ops.clip_by_global_norm(grads, self.clip_norm)
        return self.optimizer(grads)


class ClippedLossScaleTrainOneStepCell(nn.TrainOneStepWithLossScaleCell):
    """Dynamic loss scaling with clipping of the unscaled gradients; overflowing steps are skipped.

    The hardware overflow flags of the base class exist on Ascend only (its GPU check uses a GPU-only
    kernel); elsewhere a portable inf/nan check over the gradients decides, summed over all ranks.
    """

    def __init__(self, network_with_loss, optimizer, clip_norm: float, initial_scale=INITIAL_LOSS_SCALE,
                 scale_window=LOSS_SCALE_WINDOW):
        manager = nn.DynamicLossScaleUpdateCell(loss_scale_value=initial_scale, scale_factor=LOSS_SCALE_FACTOR,
                                                scale_window=scale_window)
        super().__init__(network_with_loss, optimizer, scale_sense=manager)
        self.clip_norm = float(clip_norm)
        self.use_hardware_flags = ms.get_context("device_target") == "Ascend"

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.scale_sense
        status, scale = self.start_overflow_check(loss, scale)
        sens = ops.ones_like(loss) * ops.cast(scale, ops.dtype(loss))
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        grads = self.grad_reducer(grads)
        if self.use_hardware_flags:
            overflow = self.get_overflow_status(status, grads)
        else:
            overflow = self._any_not_finite(grads)
        return ops.depend(loss, self._update_unless_overflow(grads, overflow))

    def apply_gradients(self, grads):
        """The step's tail on this rank's unscaled gradients, with the portable overflow check (the
        hardware flags only cover a forward and backward run in this cell): all-reduce, overflow check,
        loss-scale update, and unless overflowed clipping and the optimizer. Returns the overflow flag."""
        grads = self.grad_reducer(grads)
        return self._update_unless_overflow(grads, self._any_not_finite(grads))

    def _update_unless_overflow(self, grads, overflow):
        overflow = self.process_loss_scale(overflow)
        if not overflow:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
            overflow = ops.depend(overflow, self.optimizer(grads))
        return overflow

    def _any_not_finite(self, grads):
        flags = ops.addn(self.hyper_map(_not_finite, grads))
        if self.is_distributed:
            flags = self.allreduce(flags)
        return flags >= 1.0


def build_train_cell(forward_network, loss_fn, optimizer, clip_norm: float, amp_level: str,
                     task_conditioned: bool = False):
    """The one-step Cell for a resolved ``amp_level``; ``forward_network`` is ``apply_amp``'s result.
    ``task_conditioned``: the batches carry a task id after the data (DoDNet)."""
    network_with_loss = NetworkWithLoss(forward_network, loss_fn, task_conditioned)
    if amp_level == "O0":
        return ClippedTrainOneStepCell(network_with_loss, optimizer, clip_norm)
    if amp_level == "O2":
        return ClippedLossScaleTrainOneStepCell(network_with_loss, optimizer, clip_norm)
    raise ValueError(f"unsupported amp level {amp_level!r}")


def set_learning_rate(optimizer, lr: float) -> None:
    """Write ``lr`` into the optimizer's learning-rate Parameter in place.

    ``Parameter.set_data`` swaps the tensor object, which a compiled graph with control flow (the
    loss-scale cell's skip-on-overflow branch) keeps ignoring: the step went on with the old rate.
    An in-place assign is seen by every compiled graph.
    """
    ops.assign(optimizer.learning_rate, ms.Tensor(lr, ms.float32))


def loss_scale_of(train_cell) -> float:
    """The current dynamic loss scale, or 1.0 for the full-precision cell."""
    scale = getattr(train_cell, "scale_sense", None)
    return float(scale.asnumpy()) if scale is not None else 1.0
