"""Micro-batched steps equal whole-batch steps (plain U-Net with deep supervision and ignored voxels, the HEC
loss, DoDNet with partial labels, amp O2's loss-scale cell), and build_step's choice."""
import numpy as np
import pytest
import mindspore as ms

from src.data.plan import Plan
from src.losses import build_loss
from src.models import build_network
from src.train.memory_estimate import estimate
from src.train.micro_batches import MicroBatchedStep, build_step
from src.train.train_cell import build_train_cell, loss_scale_of
from src.train.trainer import build_optimizer
from tests.data.preprocessed_fixture import make_plan
from tests.train.tiny_training import TINY_STRIDES, tiny_config

pytestmark = pytest.mark.usefixtures("graph_mode")

PATCH = (16, 16, 16)


def _plan():
    plan = make_plan(["a"], PATCH, TINY_STRIDES)
    plan["features"] = [4, 8, 16]
    return Plan(plan)


def _batch(cfg, seed: int, poison: bool = False):
    """A batch of 2 whose samples have different counts of ignored (-1) voxels and, for DoDNet, different
    annotated channels (sample 0: organ only, tumour all -1; sample 1: both)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((2, 1) + PATCH).astype(np.float32)
    if poison:
        data[1, 0, 3, 3, 3] = np.inf
    if cfg.network == "dodnet":
        target = rng.integers(0, 2, (2, 2) + PATCH).astype(np.int32)
        target[0, 1] = -1
        target[1, :, :5] = -1
        return ms.Tensor(data), ms.Tensor(np.array([1, 4], np.int32)), ms.Tensor(target)
    seg = rng.integers(0, 3, (2, 1) + PATCH).astype(np.int32)
    seg[0, :, :3] = -1
    seg[1, :, :, :9] = -1
    half = seg[:, :, ::2, ::2, ::2]  # the loader's coarser targets: strided samples of the full one
    return ms.Tensor(data), ms.Tensor(seg), ms.Tensor(np.ascontiguousarray(half))


def _train(cfg, micro: int, amp_level: str = "O0", steps: int = 2):
    plan = _plan()
    ms.set_seed(3)
    network = build_network(cfg, plan)
    loss_fn = build_loss(cfg, plan)
    optimizer = build_optimizer(cfg, network, 0.05)
    cell = build_train_cell(network, loss_fn, optimizer, cfg.grad_clip, amp_level, cfg.variant.task_conditioned)
    cell.set_train(True)
    step = cell if micro == 2 else MicroBatchedStep(cell, network, loss_fn, micro, cfg.variant.task_conditioned)
    losses = [float(step(*_batch(cfg, seed)).asnumpy()) for seed in range(steps)]
    return network, cell, step, losses


def _assert_same_training(cfg, amp_level="O0"):
    whole, _, _, whole_losses = _train(cfg, 2, amp_level)
    micro, _, step, micro_losses = _train(cfg, 1, amp_level)
    assert isinstance(step, MicroBatchedStep)
    np.testing.assert_allclose(micro_losses, whole_losses, rtol=1e-5, atol=1e-6)
    moved = 0.0
    for a, b in zip(whole.trainable_params(), micro.trainable_params()):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-4, atol=1e-6, err_msg=a.name)
    start, *_ = _train(cfg, 2, amp_level, steps=0)
    for a, b in zip(whole.trainable_params(), start.trainable_params()):
        moved = max(moved, float(np.abs(a.asnumpy() - b.asnumpy()).max()))
    assert moved > 1e-4  # the steps changed the weights, so equal weights say something
    return micro, step


def test_plain_unet_dice_ce_with_deep_supervision_and_ignored_voxels():
    _assert_same_training(tiny_config(ds_weights=[0.7, 0.3], loss="dice_ce"))


@pytest.mark.slow  # the same exactness as the Dice + CE test through another loss (16 s)
def test_hec_loss():
    _assert_same_training(tiny_config(ds_weights=[0.7, 0.3], loss="dice_ce_hec", hec_weights=[0.5, 0.5]))


@pytest.mark.slow  # 28 s; tests/test_losses.py checks DoDNet's part losses sum to the batch's in the fast suite
def test_dodnet_with_partial_labels():
    _assert_same_training(tiny_config(network="dodnet", loss="dodnet", deep_supervision=False, momentum=0.9))


@pytest.mark.slow  # amp O2 is the Ascend path (16 s)
def test_loss_scale_cell_micro_batched_and_overflow_skips_the_whole_step():
    cfg = tiny_config(ds_weights=[0.7, 0.3], loss="dice_ce")
    network, step = _assert_same_training(cfg, "O2")
    before = [p.asnumpy().copy() for p in network.trainable_params()]
    cell = step.train_cell
    scale = loss_scale_of(cell)
    step(*_batch(cfg, 5, poison=True))  # only the second micro-batch overflows
    for a, p in zip(before, network.trainable_params()):
        np.testing.assert_array_equal(a, p.asnumpy())
    assert loss_scale_of(cell) == scale / 2


def test_build_step_keeps_the_whole_batch_cell_or_splits():
    cfg = tiny_config(ds_weights=[0.7, 0.3])
    plan = _plan()
    network = build_network(cfg, plan)
    loss_fn = build_loss(cfg, plan)
    cell = build_train_cell(network, loss_fn, build_optimizer(cfg, network, 0.01), 12.0, "O0")
    step, line = build_step(cfg, plan, "CPU", cell, network, loss_fn, available_bytes=100e9)
    assert step is cell and line.startswith("batch 2 as one forward (estimated ")
    just_one = estimate(plan, cfg).bytes_for(1) + 1e3  # one sample fits the memory, not its margin
    step, line = build_step(cfg, plan, "CPU", cell, network, loss_fn, available_bytes=just_one)
    assert isinstance(step, MicroBatchedStep) and step.micro_batch_size == 1
    assert line.startswith("batch 2 as 2 micro-batches of 1 (") and "warning" in line
    step, line = build_step(cfg.replace(micro_batch_size="1"), plan, "Ascend", cell, network, loss_fn)
    assert isinstance(step, MicroBatchedStep) and line == "batch 2 as 2 micro-batches of 1 (micro_batch_size 1)"
    step, _ = build_step(cfg, plan, "GPU", cell, network, loss_fn, available_bytes=1e6)
    assert step is cell


def test_process_memory_budget_is_at_least_what_the_process_holds():
    import os

    from src.train.micro_batches import process_memory_budget

    budget = process_memory_budget()
    with open("/proc/self/statm") as handle:
        own = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert own <= budget <= physical
