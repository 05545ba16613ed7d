"""Losses with nnU-Net semantics: Dice + CE, deep supervision, HEC cross-entropy, DoDNet partial labels.

Dice + CE follows nnU-Net v2 (``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss``):
softmax probabilities, soft Dice per sample and per foreground class (background excluded),
``dice = (2 I + 1e-5) / max(sum_pred + sum_gt + 1e-5, 1e-8)``, averaged over samples and classes,
and ``loss = CE - mean dice`` (the Dice term is returned as -dice, so the loss can go below 0).
Label -1 marks ignored voxels: they are left out of the CE mean and of every Dice sum.

Micro-batching (``src/train/micro_batches.py``): every loss also has ``normalizers(target)``, what it
divides by, computed from the targets alone, and ``part(output, target, norms)``, a part of the batch
scored with the whole batch's normalizers; the parts of a split batch sum to the batch's loss. Called as
``loss(output, target)`` the losses compute exactly what they always did.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src.data.plan import Plan
from src.errors import UserError
from src.variants import NETWORK_VARIANTS

DICE_SMOOTH = 1e-5
DODNET_SMOOTH = 1.0


def deep_supervision_weights(num_outputs: int, ds_weights=None) -> list:
    """nnU-Net: 1/2^i, the lowest resolution set to 0, normalized. Given weights longer than the
    number of outputs (the plan has fewer stages than the config was written for) are cut to the
    highest resolutions and renormalized."""
    if ds_weights is None:
        weights = [1.0 / 2 ** i for i in range(num_outputs)]
        if num_outputs > 1:
            weights[-1] = 0.0
    else:
        weights = [float(w) for w in ds_weights]
        if len(weights) < num_outputs:
            raise UserError(f"ds_weights has {len(weights)} values but the network has {num_outputs} "
                            f"deep-supervision outputs")
        weights = weights[:num_outputs]
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise UserError(f"ds_weights must be >= 0 with a positive sum, got {weights}")
    return [w / total for w in weights]


def spatial_axes(x) -> tuple:
    return tuple(range(2, x.ndim))


class DiceCELoss(nn.Cell):
    """One resolution: CE - soft Dice, optionally + HEC binary cross-entropies.

    HEC terms (KiTS21 seed): kidney_and_masses = labels >= 1 and masses = labels >= 2, each a
    foreground-vs-rest BCE on the summed softmax probabilities (taken in log space so that it
    stays finite), weighted by ``hec_weights`` and added.
    """

    def __init__(self, num_classes: int, hec_weights=None, smooth: float = DICE_SMOOTH):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"Dice + CE needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.smooth = smooth
        self.class_ids = ms.Tensor(np.arange(num_classes, dtype=np.int32).reshape(1, num_classes, 1, 1, 1))
        self.use_hec = hec_weights is not None and any(float(w) != 0 for w in hec_weights)
        if self.use_hec and num_classes < 3:
            raise UserError("the HEC loss needs the classes background, kidney and at least one mass class")
        weights = [float(w) for w in hec_weights] if hec_weights is not None else [0.0, 0.0]
        self.hec_kidney_weight = weights[0]
        self.hec_masses_weight = weights[1]

    def construct(self, logits, target):
        valid = (target >= 0).astype(logits.dtype)
        return self.loss_with(logits, target, valid, ops.maximum(valid.sum(), 1.0), None)

    def normalizers(self, target):
        """What the loss divides by, from the target alone: [valid voxels (at least 1), samples x foreground
        classes] (the Dice mean's count). A part of a batch scored with the whole batch's normalizers
        (``part``) gives that part's share: the shares of a split batch sum to the batch's loss."""
        valid = (target >= 0).astype(ms.float32)
        dice_count = ops.fill(ms.float32, (), target.shape[0] * (self.num_classes - 1))
        return ops.stack((ops.maximum(valid.sum(), 1.0), dice_count))

    def part(self, logits, target, norms):
        valid = (target >= 0).astype(logits.dtype)
        return self.loss_with(logits, target, valid, norms[0], norms[1])

    def loss_with(self, logits, target, valid, num_valid, dice_count):
        """The loss with given normalizers; ``dice_count`` None takes the Dice mean over this batch."""
        # log-softmax as logits - logsumexp: on CPU the fused op's gradient runs oneDNN's reference
        # kernel, this form's gradient is elementwise (docs/PERFORMANCE.md, "Levers, one at a time")
        log_probs = logits - ops.logsumexp(logits, 1, True)
        probs = ops.exp(log_probs)
        onehot = (target == self.class_ids).astype(logits.dtype)
        ce = -(log_probs * onehot).sum() / num_valid

        axes = spatial_axes(logits)
        intersect = (probs * onehot).sum(axes)[:, 1:]
        sum_pred = (probs * valid).sum(axes)[:, 1:]
        sum_gt = onehot.sum(axes)[:, 1:]
        dice = (2.0 * intersect + self.smooth) / ops.maximum(sum_pred + sum_gt + self.smooth, 1e-8)
        if dice_count is None:
            loss = ce - dice.mean()
        else:
            loss = ce - dice.sum() / dice_count
        if self.use_hec:
            loss = loss + self.hec_kidney_weight * self.group_bce(log_probs, target, valid, num_valid, 1)
            loss = loss + self.hec_masses_weight * self.group_bce(log_probs, target, valid, num_valid, 2)
        return loss

    def group_bce(self, log_probs, target, valid, num_valid, first_label):
        """BCE of "label >= first_label" against the probability mass of those classes."""
        log_in = ops.logsumexp(log_probs[:, first_label:], 1, True)
        log_out = ops.logsumexp(log_probs[:, :first_label], 1, True)
        inside = (target >= first_label).astype(log_probs.dtype)
        return -((inside * log_in + (1.0 - inside) * log_out) * valid).sum() / num_valid


class DeepSupervisionLoss(nn.Cell):
    """Weighted sum of a per-resolution loss over (outputs, targets), highest resolution first.

    A single tensor output (deep supervision off, DoDNet) is scored against the first target.
    Outputs with weight 0 are not computed at all.
    """

    def __init__(self, scale_loss: nn.Cell, weights):
        super().__init__()
        self.scale_loss = scale_loss
        self.weights = tuple(float(w) for w in weights)

    def construct(self, outputs, targets):
        if not isinstance(targets, (tuple, list)):
            return self.scale_loss(outputs, targets)
        if not isinstance(outputs, (tuple, list)):
            return self.scale_loss(outputs, targets[0])
        total = 0.0
        for i in range(len(self.weights)):
            if self.weights[i] != 0.0:
                total = total + self.weights[i] * self.scale_loss(outputs[i], targets[i])
        return total

    def normalizers(self, targets):
        """(scales, k): the per-resolution loss's normalizers of each target (``DiceCELoss.normalizers``)."""
        if not isinstance(targets, (tuple, list)):
            return ops.stack((self.scale_loss.normalizers(targets),))
        count = len(self.weights) if len(self.weights) < len(targets) else len(targets)
        norms = ()
        for i in range(count):
            norms = norms + (self.scale_loss.normalizers(targets[i]),)
        return ops.stack(norms)

    def part(self, outputs, targets, norms):
        """This part of a batch's share of the batch's loss, ``norms`` being the whole batch's normalizers."""
        if not isinstance(targets, (tuple, list)):
            return self.scale_loss.part(outputs, targets, norms[0])
        if not isinstance(outputs, (tuple, list)):
            return self.scale_loss.part(outputs, targets[0], norms[0])
        total = 0.0
        for i in range(len(self.weights)):
            if self.weights[i] != 0.0:
                total = total + self.weights[i] * self.scale_loss.part(outputs[i], targets[i], norms[i])
        return total


class DoDNetLoss(nn.Cell):
    """Partial-label loss on sigmoid outputs (B, 2, ...) against targets (B, 2, ...) in {0, 1, -1}.

    Per sample and channel: Dice loss 1 - 2 sum(p t) / (sum p + sum t + 1), averaged over the
    (sample, channel) pairs that have any labelled voxel; plus BCE averaged over labelled voxels.
    A channel whose task does not annotate it is all -1 and contributes nothing.
    """

    def __init__(self, smooth: float = DODNET_SMOOTH):
        super().__init__()
        self.smooth = smooth

    def construct(self, logits, target):
        valid = (target >= 0).astype(logits.dtype)
        labelled = (valid.sum(spatial_axes(logits)) > 0).astype(logits.dtype)
        return self.loss_with(logits, target, valid, labelled, ops.maximum(labelled.sum(), 1.0),
                              ops.maximum(valid.sum(), 1.0))

    def normalizers(self, target):
        """[labelled (sample, channel) pairs, labelled voxels], each at least 1, from the target alone."""
        valid = (target >= 0).astype(ms.float32)
        labelled = (valid.sum(spatial_axes(target)) > 0).astype(ms.float32)
        return ops.stack((ops.maximum(labelled.sum(), 1.0), ops.maximum(valid.sum(), 1.0)))

    def part(self, logits, target, norms):
        valid = (target >= 0).astype(logits.dtype)
        labelled = (valid.sum(spatial_axes(logits)) > 0).astype(logits.dtype)
        return self.loss_with(logits, target, valid, labelled, norms[0], norms[1])

    def loss_with(self, logits, target, valid, labelled, num_labelled, num_valid):
        truth = (target > 0).astype(logits.dtype)
        probs = ops.sigmoid(logits)
        axes = spatial_axes(logits)
        intersect = (probs * truth).sum(axes)
        sum_pred = (probs * valid).sum(axes)
        sum_gt = truth.sum(axes)
        dice_loss = 1.0 - 2.0 * intersect / (sum_pred + sum_gt + self.smooth)
        dice_term = (dice_loss * labelled).sum() / num_labelled
        # BCE with logits, the overflow-free form: max(x, 0) - x t + log(1 + exp(-|x|))
        bce = ops.relu(logits) - logits * truth + ops.log1p(ops.exp(-ops.abs(logits)))
        bce_term = (bce * valid).sum() / num_valid
        return dice_term + bce_term


def num_deep_supervision_outputs(cfg, plan: Plan) -> int:
    if not (cfg.variant.deep_supervision and cfg.deep_supervision):
        return 1
    return len(plan.strides) - 1


# The per-resolution loss of each config ``loss``, from (config, number of classes)
SCALE_LOSSES = {
    "dice_ce": lambda cfg, num_classes: DiceCELoss(num_classes),
    "dice_ce_hec": lambda cfg, num_classes: DiceCELoss(num_classes, hec_weights=list(cfg.hec_weights)),
    "dodnet": lambda cfg, num_classes: DoDNetLoss(),
}


def _check_loss_fits_network(cfg) -> None:
    variant = cfg.variant
    if cfg.loss in variant.losses:
        return
    if len(variant.losses) == 1:
        raise UserError(f"network {variant.name!r} is trained with loss {variant.losses[0]!r}, not {cfg.loss!r}")
    owners = [v.name for v in NETWORK_VARIANTS.values() if cfg.loss in v.losses]
    if owners:
        raise UserError(f"loss {cfg.loss!r} needs network {' or '.join(repr(o) for o in owners)}, not {cfg.network!r}")
    raise UserError(f"unknown loss {cfg.loss!r}; expected {', '.join(SCALE_LOSSES)}")


def build_loss(cfg, plan: Plan) -> nn.Cell:
    """The loss named by ``cfg.loss``, wrapped for deep supervision; called as loss(outputs, targets)."""
    _check_loss_fits_network(cfg)
    scale_loss = SCALE_LOSSES[cfg.loss](cfg, plan.num_classes)
    weights = deep_supervision_weights(num_deep_supervision_outputs(cfg, plan), cfg.ds_weights)
    return DeepSupervisionLoss(scale_loss, weights)
