import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from src.train.train_cell import (ClippedLossScaleTrainOneStepCell, NetworkWithLoss, build_train_cell,
                                  loss_scale_of, set_learning_rate)


# the trainer always runs the one-step cell compiled (graph_mode: tests/conftest.py)
pytestmark = pytest.mark.usefixtures("graph_mode")


class _TwoHeads(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, pad_mode="same", has_bias=True)

    def construct(self, x):
        y = self.conv(x)
        return y, y[:, :, ::2, ::2, ::2]


class _SumOfCE(nn.Cell):
    def __init__(self):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=-1)

    def construct(self, outputs, targets):
        return self.ce(outputs[0], targets[0][:, 0]) + self.ce(outputs[1], targets[1][:, 0])


def _batch(scale=1.0):
    rng = np.random.default_rng(0)
    data = ms.Tensor((scale * rng.standard_normal((2, 1, 8, 8, 8))).astype(np.float32))
    seg0 = ms.Tensor(rng.integers(-1, 3, (2, 1, 8, 8, 8)).astype(np.int32))
    seg1 = ms.Tensor(rng.integers(0, 3, (2, 1, 4, 4, 4)).astype(np.int32))
    return data, seg0, seg1


def _optimizer(net, lr=0.1):
    return nn.SGD(net.trainable_params(), learning_rate=ms.Tensor(lr, ms.float32), momentum=0.9, nesterov=True)


def _weights(net):
    return [p.asnumpy().copy() for p in net.trainable_params()]


def test_step_lowers_the_loss_and_clipping_bounds_the_update():
    ms.set_seed(0)
    net = _TwoHeads()
    cell = build_train_cell(net, _SumOfCE(), _optimizer(net), 12.0, "O0")
    batch = _batch()
    losses = [float(cell(*batch).asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0]

    # plain SGD without momentum: one step moves the weights by lr * clipped gradient
    ms.set_seed(0)
    net = _TwoHeads()
    before = _weights(net)
    opt = nn.SGD(net.trainable_params(), learning_rate=ms.Tensor(1.0, ms.float32))
    cell = build_train_cell(net, _SumOfCE(), opt, 1e-3, "O0")
    cell(*_batch(scale=100.0))
    change = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_weights(net), before)))
    assert change == pytest.approx(1e-3, rel=1e-3)


def test_loss_scale_cell_matches_full_precision_and_grows_the_scale():
    results = []
    for variant in ("plain", "scaled"):
        ms.set_seed(0)
        net = _TwoHeads()
        if variant == "plain":
            cell = build_train_cell(net, _SumOfCE(), _optimizer(net), 12.0, "O0")
        else:
            cell = ClippedLossScaleTrainOneStepCell(NetworkWithLoss(net, _SumOfCE()), _optimizer(net), 12.0,
                                                    initial_scale=1024.0, scale_window=2)
        batch = _batch()
        for _ in range(3):
            cell(*batch)
        results.append((_weights(net), loss_scale_of(cell)))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert results[0][1] == 1.0 and results[1][1] == 2048.0


def test_overflowing_step_is_skipped_and_halves_the_scale():
    ms.set_seed(0)
    net = _TwoHeads()
    cell = ClippedLossScaleTrainOneStepCell(NetworkWithLoss(net, _SumOfCE()), _optimizer(net), 12.0,
                                            initial_scale=2.0 ** 16)
    data, seg0, seg1 = _batch()
    poisoned = data.asnumpy().copy()
    poisoned[0, 0, 4, 4, 4] = np.inf
    before = _weights(net)
    cell(ms.Tensor(poisoned), seg0, seg1)
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)
    assert loss_scale_of(cell) == 2.0 ** 15
    cell(data, seg0, seg1)
    assert not np.array_equal(before[0], _weights(net)[0])


def test_huge_loss_scale_still_updates():
    ms.set_seed(0)
    net = _TwoHeads()
    cell = ClippedLossScaleTrainOneStepCell(NetworkWithLoss(net, _SumOfCE()), _optimizer(net), 12.0,
                                            initial_scale=3e38)
    before = _weights(net)
    cell(*_batch())
    assert not np.array_equal(before[0], _weights(net)[0])


@pytest.mark.parametrize("variant", ["plain", "scaled"])
def test_learning_rate_changes_reach_the_compiled_step(variant):
    ms.set_seed(0)
    net = _TwoHeads()
    if variant == "plain":
        cell = build_train_cell(net, _SumOfCE(), _optimizer(net), 12.0, "O0")
    else:
        cell = ClippedLossScaleTrainOneStepCell(NetworkWithLoss(net, _SumOfCE()), _optimizer(net), 12.0)
    batch = _batch()
    cell(*batch)
    changes = []
    for lr in (0.0, 0.05, 0.0):
        set_learning_rate(cell.optimizer, lr)
        before = _weights(net)
        cell(*batch)
        changes.append(max(np.abs(a - b).max() for a, b in zip(_weights(net), before)))
    assert changes[0] == 0.0 and changes[2] == 0.0 and changes[1] > 0.0
    assert float(cell.optimizer.learning_rate.asnumpy()) == 0.0
