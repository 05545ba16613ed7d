import math

import numpy as np
import pytest
from mindspore import Tensor

from src.config import Config
from src.data.plan import Plan
from src.errors import UserError
from src.losses import DeepSupervisionLoss, DiceCELoss, DoDNetLoss, build_loss, deep_supervision_weights
from tests.data.preprocessed_fixture import make_plan


def t32(a):
    return Tensor(np.asarray(a, np.float32))


def ti32(a):
    return Tensor(np.asarray(a, np.int32))


def numpy_dice_ce(logits, target, smooth=1e-5):
    """Straight transcription of the nnU-Net v2 definition, loops included."""
    b, k = logits.shape[:2]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    valid = target[:, 0] >= 0
    ce_terms = []
    dices = []
    for i in range(b):
        for v in zip(*np.nonzero(valid[i])):
            ce_terms.append(-np.log(probs[(i, target[i, 0][v]) + v]))
        for c in range(1, k):
            p = probs[i, c][valid[i]]
            g = (target[i, 0] == c)[valid[i]]
            dices.append((2 * (p * g).sum() + smooth) / max(p.sum() + g.sum() + smooth, 1e-8))
    ce = np.mean(ce_terms) if ce_terms else 0.0
    return ce - np.mean(dices)


def test_dice_ce_hand_computed_uniform_prediction():
    # two voxels, equal logits: p = 0.5 everywhere; CE = ln 2; Dice(class 1) = (2*0.5 + s) / (1 + 1 + s)
    logits = np.zeros((1, 2, 1, 1, 2), np.float32)
    target = np.array([0, 1], np.int32).reshape(1, 1, 1, 1, 2)
    expected = math.log(2) - (1 + 1e-5) / (2 + 1e-5)
    assert float(DiceCELoss(2)(t32(logits), ti32(target))) == pytest.approx(expected, abs=5e-6)


def test_dice_ce_matches_the_reference_definition_on_random_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 3, 4, 5)).astype(np.float32) * 2
    target = rng.integers(-1, 3, size=(2, 1, 3, 4, 5)).astype(np.int32)
    got = float(DiceCELoss(3)(t32(logits), ti32(target)))
    assert got == pytest.approx(numpy_dice_ce(logits, target), abs=1e-5)


def test_ignored_voxels_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 3, 2, 2, 4)).astype(np.float32)
    target = rng.integers(0, 3, size=(1, 1, 2, 2, 4)).astype(np.int32)
    target[..., 2:] = -1
    loss = DiceCELoss(3)
    reference = float(loss(t32(logits[..., :2]), ti32(target[..., :2])))
    changed = logits.copy()
    changed[..., 2:] = 50 * rng.normal(size=changed[..., 2:].shape)
    assert float(loss(t32(changed), ti32(target))) == pytest.approx(reference, abs=1e-6)


def test_perfect_prediction_reaches_minus_one():
    target = np.array([0, 1, 2, 1], np.int32).reshape(1, 1, 1, 1, 4)
    logits = np.full((1, 3, 1, 1, 4), -30.0, np.float32)
    for v, c in enumerate(target.ravel()):
        logits[0, c, 0, 0, v] = 30.0
    assert float(DiceCELoss(3)(t32(logits), ti32(target))) == pytest.approx(-1.0, abs=1e-4)


def test_hec_terms_hand_computed():
    # three classes, equal logits: p = 1/3 each; the voxel is a tumour (label 2):
    # kidney_and_masses p = 2/3, masses p = 1/3, both targets 1
    logits = np.zeros((1, 3, 1, 1, 1), np.float32)
    target = np.full((1, 1, 1, 1, 1), 2, np.int32)
    plain = float(DiceCELoss(3)(t32(logits), ti32(target)))
    hec = float(DiceCELoss(3, hec_weights=[0.1, 0.3])(t32(logits), ti32(target)))
    assert hec - plain == pytest.approx(0.1 * -math.log(2 / 3) + 0.3 * -math.log(1 / 3), abs=1e-5)
    # a background voxel: targets 0, so the terms use 1 - p
    target[...] = 0
    plain = float(DiceCELoss(3)(t32(logits), ti32(target)))
    hec = float(DiceCELoss(3, hec_weights=[0.1, 0.3])(t32(logits), ti32(target)))
    assert hec - plain == pytest.approx(0.1 * -math.log(1 / 3) + 0.3 * -math.log(2 / 3), abs=1e-5)


def test_deep_supervision_weights():
    np.testing.assert_allclose(deep_supervision_weights(5), [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0], rtol=1e-12)
    np.testing.assert_allclose(deep_supervision_weights(4), [4 / 7, 2 / 7, 1 / 7, 0], rtol=1e-12)
    assert deep_supervision_weights(1) == [1.0]
    bdci = [0.53, 0.27, 0.13, 0.07, 0.0]
    np.testing.assert_allclose(deep_supervision_weights(5, bdci), bdci, rtol=1e-12)
    np.testing.assert_allclose(deep_supervision_weights(3, bdci), np.array(bdci[:3]) / 0.93, rtol=1e-12)
    with pytest.raises(UserError):
        deep_supervision_weights(6, bdci)
    with pytest.raises(UserError):
        deep_supervision_weights(2, [0.0, 0.0])


def test_deep_supervision_loss_is_the_weighted_sum_and_accepts_a_tensor():
    rng = np.random.default_rng(2)
    outs = (t32(rng.normal(size=(1, 2, 4, 4, 4))), t32(rng.normal(size=(1, 2, 2, 2, 2))))
    tgts = (ti32(rng.integers(0, 2, size=(1, 1, 4, 4, 4))), ti32(rng.integers(0, 2, size=(1, 1, 2, 2, 2))))
    scale = DiceCELoss(2)
    combined = DeepSupervisionLoss(scale, [0.75, 0.25])
    expected = 0.75 * float(scale(outs[0], tgts[0])) + 0.25 * float(scale(outs[1], tgts[1]))
    assert float(combined(outs, tgts)) == pytest.approx(expected, abs=1e-6)
    assert float(combined(outs[0], tgts)) == pytest.approx(float(scale(outs[0], tgts[0])), abs=1e-6)


def test_dodnet_loss_hand_computed_with_an_unlabelled_channel():
    logits = np.zeros((1, 2, 1, 1, 2), np.float32)  # p = 0.5
    target = np.array([[1, 0], [-1, -1]], np.int32).reshape(1, 2, 1, 1, 2)
    # organ channel: Dice loss 1 - 2*0.5/(1 + 1 + 1) = 2/3; BCE ln 2 on each of its 2 voxels
    assert float(DoDNetLoss()(t32(logits), ti32(target))) == pytest.approx(2 / 3 + math.log(2), abs=1e-6)
    # what the unlabelled channel predicts is irrelevant
    logits[:, 1] = 7.0
    assert float(DoDNetLoss()(t32(logits), ti32(target))) == pytest.approx(2 / 3 + math.log(2), abs=1e-6)


def test_dodnet_bce_is_finite_for_large_logits():
    logits = np.array([[200.0, -200.0]], np.float32).reshape(1, 2, 1, 1, 1)
    target = np.array([[0, 1]], np.int32).reshape(1, 2, 1, 1, 1)
    value = float(DoDNetLoss()(t32(logits), ti32(target)))
    assert math.isfinite(value) and value > 100



def cfg(**kw):
    base = dict(network="plain_unet", loss="dice_ce", deep_supervision=True, ds_weights=None,
                hec_weights=[0.1, 0.3])
    base.update(kw)
    return Config().replace(**base)


def test_build_loss_uses_the_plan_depth_and_config():
    plan = Plan.from_json(make_plan([], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]))
    loss = build_loss(cfg(), plan)
    np.testing.assert_allclose(loss.weights, [2 / 3, 1 / 3, 0])
    assert not loss.scale_loss.use_hec
    assert build_loss(cfg(loss="dice_ce_hec"), plan).scale_loss.use_hec
    assert build_loss(cfg(deep_supervision=False), plan).weights == (1.0,)
    assert isinstance(build_loss(cfg(network="dodnet", loss="dodnet"), plan).scale_loss, DoDNetLoss)
    with pytest.raises(UserError):
        build_loss(cfg(network="dodnet"), plan)
    with pytest.raises(UserError):
        build_loss(cfg(loss="dice_ce_hec"), plan.replace(num_classes=2))


def _split_batch_cases():
    rng = np.random.default_rng(4)
    logits = [rng.standard_normal((3, 3, 6, 6, 6)), rng.standard_normal((3, 3, 3, 3, 3))]
    seg = rng.integers(0, 3, (3, 1, 6, 6, 6))
    seg[0, :, :2] = -1
    seg[2, :, :, :5] = -1
    targets = [seg, seg[:, :, ::2, ::2, ::2]]
    dodnet_target = rng.integers(0, 2, (3, 2, 6, 6, 6))
    dodnet_target[0, 1] = -1  # sample 0's task annotates the organ only
    dodnet_target[2, :, :4] = -1
    return [
        (DeepSupervisionLoss(DiceCELoss(3), [0.6, 0.4]), logits, targets),
        (DeepSupervisionLoss(DiceCELoss(3, hec_weights=[0.5, 0.8]), [0.6, 0.4]), logits, targets),
        (DeepSupervisionLoss(DoDNetLoss(), [1.0]), rng.standard_normal((3, 2, 6, 6, 6)), dodnet_target),
    ]


@pytest.mark.parametrize("case", range(3), ids=["dice_ce_deep_supervision", "hec", "dodnet_partial_labels"])
def test_parts_scored_with_the_batch_normalizers_sum_to_the_batch_loss(case):
    loss_fn, logits, targets = _split_batch_cases()[case]
    pick = (lambda x, s: [t32(a[s]) for a in x]) if isinstance(logits, list) else (lambda x, s: t32(x[s]))
    pick_t = (lambda x, s: [ti32(a[s]) for a in x]) if isinstance(targets, list) else (lambda x, s: ti32(x[s]))
    whole = float(loss_fn(pick(logits, slice(None)), pick_t(targets, slice(None))).asnumpy())
    norms = loss_fn.normalizers(pick_t(targets, slice(None)))
    parts = [slice(0, 1), slice(1, 3)]
    shares = [float(loss_fn.part(pick(logits, s), pick_t(targets, s), norms).asnumpy()) for s in parts]
    assert sum(shares) == pytest.approx(whole, rel=1e-5, abs=1e-6)
    # the parts' own losses, averaged, are not the batch's loss: the normalizers matter
    own = [float(loss_fn(pick(logits, s), pick_t(targets, s)).asnumpy()) for s in parts]
    assert abs(np.mean(own) - whole) > 1e-3 and abs(sum(own) - whole) > 1e-3
