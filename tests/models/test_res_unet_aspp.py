import numpy as np
import pytest
from mindspore import Tensor

from src.data.plan import Plan
from src.models import build_network
from src.models.res_unet_aspp import ASPP, ResidualBlock, ResUNetASPP, default_extra_blocks

FEATURES = [4, 8, 16]
KERNELS = [[3, 3, 3]] * 3
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


class Cfg:
    network = "res_unet_aspp"
    downsample = "conv"
    deep_supervision = True


def test_seed_block_counts_for_four_downsamplings():
    assert default_extra_blocks(4) == [2, 3, 5, 2]
    assert default_extra_blocks(2) == [2, 2]
    assert default_extra_blocks(5) == [2, 3, 5, 5, 2]
    net = ResUNetASPP(1, 3, [4, 4, 8, 8, 8], [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 4)
    blocks_per_stage = [len(stage) for stage in list(net.backbone.encoder)[1:]]
    assert blocks_per_stage == [3, 4, 6, 3]  # the downsampling block plus 2, 3, 5, 2


def test_residual_block_shortcut_is_identity_only_when_shapes_match():
    assert ResidualBlock(8, 8, 3, 1).shortcut is None
    assert ResidualBlock(8, 8, 3, 2).shortcut is not None
    assert ResidualBlock(4, 8, 3, 1).shortcut is not None
    block = ResidualBlock(4, 8, 3, (1, 2, 2))
    assert block(Tensor(np.ones((1, 4, 4, 8, 8), np.float32))).shape == (1, 8, 4, 4, 4)


def test_aspp_keeps_the_shape_and_uses_the_global_context():
    aspp = ASPP(4, 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 4, 4, 4)).astype(np.float32)
    out = aspp(Tensor(x))
    assert out.shape == (1, 4, 4, 4, 4)
    assert len(aspp.branches) == 4  # 1x1x1 and three dilations; the pooled branch is separate


def test_outputs_with_and_without_deep_supervision():
    net = ResUNetASPP(1, 4, FEATURES, KERNELS, STRIDES, deep_supervision=True)
    x = Tensor(np.random.default_rng(1).normal(size=(2, 1, 16, 16, 16)).astype(np.float32))
    net.set_train(True)
    outputs = net(x)
    assert [o.shape for o in outputs] == [(2, 4, 16, 16, 16), (2, 4, 8, 8, 8)]
    net.set_train(False)
    single = net(x)
    assert single.shape == (2, 4, 16, 16, 16)
    alone = net(Tensor(x.asnumpy()[:1]))
    np.testing.assert_allclose(alone.asnumpy(), single.asnumpy()[:1], atol=1e-4)


def test_build_network_dispatches_to_the_residual_net():
    plan = Plan.from_json({"features": FEATURES, "conv_kernel_sizes": KERNELS, "strides": STRIDES, "num_channels": 1,
                           "num_classes": 4, "patch_size": [16, 16, 16]})
    assert isinstance(build_network(Cfg(), plan), ResUNetASPP)


def test_wrong_block_counts_are_rejected():
    with pytest.raises(ValueError):
        ResUNetASPP(1, 3, FEATURES, KERNELS, STRIDES, extra_blocks=[1, 1, 1])
