"""Online validation as in nnU-Net: a pseudo-Dice from patches of the validation cases, and its EMA.

Per foreground class, true/false positives and false negatives of the highest-resolution output's
argmax are summed over all validation batches (and all ranks), then Dice = 2TP / (2TP + FP + FN);
voxels labelled -1 (outside the nonzero mask) are ignored. The mean over the foreground classes is the
pseudo-Dice; an exponential moving average of it picks the best checkpoint.
DoDNet (sigmoid outputs, partial labels): the same counts per output channel (organ, tumour) from
sigmoid > 0.5, over the voxels of the channels the sample's task annotates.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.train.distributed import ParallelInfo, all_reduce_sum
from src.variants import NetworkVariant


def confusion_counts(predicted, reference):
    """Per channel of (B, K, ...) 0/1 masks: true positives, false positives, false negatives, summed over
    the batch and the voxels (a plain function: graph mode compiles it inline)."""
    axes = (0, 2, 3, 4)
    tp = ops.reduce_sum(predicted * reference, axes)
    fp = ops.reduce_sum(predicted * (1.0 - reference), axes)
    fn = ops.reduce_sum((1.0 - predicted) * reference, axes)
    return tp, fp, fn


class _CountingStep(nn.Cell):
    """The network, its loss, and how many channels the step counts; subclasses say how to count them."""
    first_foreground = 1

    def __init__(self, forward_network, loss_fn, num_counts: int):
        super().__init__(auto_prefix=False)
        self.network = forward_network
        self.loss_fn = loss_fn
        self.num_counts = num_counts


class ValidationStep(_CountingStep):
    """``(data, seg_0, ...) -> (loss, tp, fp, fn)``, the counts per class (background included)."""
    first_foreground = 1

    def __init__(self, forward_network, loss_fn, num_classes: int):
        super().__init__(forward_network, loss_fn, num_classes)
        self.classes = ms.Tensor(np.arange(num_classes, dtype=np.int32).reshape(1, num_classes, 1, 1, 1))

    def construct(self, data, *targets):
        outputs = self.network(data)
        loss = self.loss_fn(outputs, targets)
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        target = targets[0]
        predicted = ops.equal(ops.expand_dims(ops.argmax(logits, 1), 1).astype(ms.int32), self.classes)
        reference = ops.equal(target, self.classes)
        valid = ops.cast(target >= 0, ms.float32)
        predicted = ops.cast(predicted, ms.float32) * valid
        reference = ops.cast(reference, ms.float32)
        tp, fp, fn = confusion_counts(predicted, reference)
        return loss, tp, fp, fn


class PartialLabelValidationStep(_CountingStep):
    """``(data, task_id, target (B, K, ...) in {0, 1, -1}) -> (loss, tp, fp, fn)`` per output channel;
    every channel is a foreground structure, and -1 voxels (unannotated channel, ignored) are not counted."""
    first_foreground = 0

    def construct(self, data, task_id, *targets):
        logits = self.network(data, task_id)
        loss = self.loss_fn(logits, targets)
        target = targets[0]
        valid = ops.cast(target >= 0, ms.float32)
        # sigmoid(x) > 0.5 exactly when x > 0
        predicted = ops.cast(logits > 0, ms.float32) * valid
        reference = ops.cast(target > 0, ms.float32)
        tp, fp, fn = confusion_counts(predicted, reference)
        return loss, tp, fp, fn


# The step of each variant's ``validation`` kind, and the network attribute holding its count of channels
VALIDATION_STEPS = {"softmax": (ValidationStep, "num_classes"), "sigmoid": (PartialLabelValidationStep, "num_outputs")}


def build_validation_step(variant: NetworkVariant, forward_network, loss_fn, network):
    """The validation step of ``variant``, counting each output channel of ``network`` (the bare network;
    ``forward_network`` is what the step calls, e.g. its amp wrapper)."""
    step_class, channels = VALIDATION_STEPS[variant.validation]
    return step_class(forward_network, loss_fn, int(getattr(network, channels)))


def dice_per_class(tp, fp, fn) -> list:
    """Dice of each class from summed counts; NaN for a class absent from both prediction and reference."""
    scores = []
    for t, p, n in zip(tp, fp, fn):
        denominator = 2.0 * t + p + n
        scores.append(float(2.0 * t / denominator) if denominator > 0 else float("nan"))
    return scores


def mean_ignoring_nan(values):
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def update_ema(ema, value, alpha: float):
    """``alpha * ema + (1 - alpha) * value``; the first value starts the average, a missing one keeps it."""
    if value is None:
        return ema
    if ema is None:
        return float(value)
    return float(alpha * ema + (1.0 - alpha) * value)


def run_validation(step: ValidationStep, batches, num_classes: int, parallel: ParallelInfo = ParallelInfo()) -> dict:
    """Evaluate ``step`` on every batch of ``batches`` (tuples of Tensors); counts are summed over ranks.

    Returns ``loss`` (mean over batches, None without batches), ``dice`` (per foreground class, from the
    step's ``first_foreground`` count on) and ``pseudo_dice`` (their mean, None when no class was seen).
    """
    first = getattr(step, "first_foreground", 1)
    totals = np.zeros(3 * num_classes + 2, dtype=np.float64)
    for batch in batches:
        loss, tp, fp, fn = step(*batch)
        totals += np.concatenate([[float(loss.asnumpy()), 1.0], tp.asnumpy(), fp.asnumpy(), fn.asnumpy()])
    totals = all_reduce_sum(totals, parallel).astype(np.float64)
    loss_sum, count = totals[0], totals[1]
    tp, fp, fn = np.split(totals[2:], 3)
    dice = dice_per_class(tp[first:], fp[first:], fn[first:])
    return {"loss": float(loss_sum / count) if count else None, "dice": dice,
            "pseudo_dice": mean_ignoring_nan(dice)}
