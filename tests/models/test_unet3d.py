import numpy as np
import pytest
from mindspore import Tensor, nn

from src.data.plan import Plan
from src.models import build_network
from src.models.layers import count_parameters
from src.models.unet3d import PlainUNet3D

REFERENCE_FEATURES = [32, 64, 128, 256, 320]
REFERENCE_KERNELS = [[3, 3, 3]] * 5
REFERENCE_STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4

SMALL_FEATURES = [4, 8, 16]
SMALL_KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
SMALL_STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]


class Cfg:
    def __init__(self, **kw):
        self.__dict__.update(dict(network="plain_unet", downsample="conv", deep_supervision=True), **kw)


def small_net(**kw):
    return PlainUNet3D(1, 3, SMALL_FEATURES, SMALL_KERNELS, SMALL_STRIDES, **kw)


def test_reference_plan_has_the_nnunet_parameter_count():
    conv = PlainUNet3D(1, 3, REFERENCE_FEATURES, REFERENCE_KERNELS, REFERENCE_STRIDES, "conv", True)
    assert count_parameters(conv) == 16_545_036
    pooled = PlainUNet3D(1, 3, REFERENCE_FEATURES, REFERENCE_KERNELS, REFERENCE_STRIDES, "maxpool", True)
    assert count_parameters(pooled) == 16_545_036
    with_bias = PlainUNet3D(1, 3, REFERENCE_FEATURES, REFERENCE_KERNELS, REFERENCE_STRIDES, "conv", True,
                            conv_bias=True)
    assert count_parameters(with_bias) == 16_548_076


def test_training_outputs_follow_the_decoder_highest_resolution_first():
    net = small_net()
    net.set_train(True)
    outputs = net(Tensor(np.random.default_rng(0).normal(size=(2, 1, 8, 16, 16)).astype(np.float32)))
    assert isinstance(outputs, tuple)
    assert [o.shape for o in outputs] == [(2, 3, 8, 16, 16), (2, 3, 8, 8, 8)]


def test_inference_returns_one_tensor_and_is_batch_independent():
    net = small_net()
    net.set_train(False)
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 16, 16)).astype(np.float32)
    both = net(Tensor(x))
    assert both.shape == (2, 3, 8, 16, 16)
    second = net(Tensor(x[1:]))
    np.testing.assert_allclose(second.asnumpy(), both.asnumpy()[1:], atol=1e-4)


def test_deep_supervision_switch_takes_effect_after_graph_compilation(graph_mode):
    net = small_net()
    net.set_train(True)
    x = Tensor(np.ones((1, 1, 8, 16, 16), np.float32))
    assert isinstance(net(x), tuple)
    net.set_deep_supervision(False)
    single = net(x)
    assert not isinstance(single, tuple) and single.shape == (1, 3, 8, 16, 16)
    net.set_deep_supervision(True)
    assert len(net(x)) == 2


def test_maxpool_downsampling_uses_pooling_and_stride_one_convs():
    net = small_net(downsample="maxpool")
    pools = [c for _, c in net.cells_and_names() if isinstance(c, nn.MaxPool3d)]
    assert len(pools) == 2
    strided = [c for _, c in net.cells_and_names() if isinstance(c, nn.Conv3d) and tuple(c.stride) != (1, 1, 1)]
    assert not strided
    net.set_train(False)
    assert net(Tensor(np.ones((1, 1, 8, 16, 16), np.float32))).shape == (1, 3, 8, 16, 16)


def test_stage_count_follows_the_plan():
    four = PlainUNet3D(1, 2, [4, 8, 16, 16], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    assert len(four.encoder) == 4 and len(four.decoder) == 3
    four.set_train(True)
    assert len(four(Tensor(np.ones((1, 1, 16, 16, 16), np.float32)))) == 3


def test_bad_topology_is_rejected():
    with pytest.raises(ValueError):
        PlainUNet3D(1, 3, [4, 8], [[3, 3, 3]], [[1, 1, 1], [2, 2, 2]])
    with pytest.raises(ValueError):
        PlainUNet3D(1, 3, [4], [[3, 3, 3]], [[1, 1, 1]])
    with pytest.raises(ValueError):
        small_net(downsample="avgpool")


def test_build_network_reads_the_plan_and_config():
    plan = Plan.from_json({"features": SMALL_FEATURES, "conv_kernel_sizes": SMALL_KERNELS, "strides": SMALL_STRIDES,
                           "num_channels": 2, "num_classes": 4, "patch_size": [16, 16, 16]})
    net = build_network(Cfg(deep_supervision=False, downsample="maxpool"), plan)
    assert isinstance(net, PlainUNet3D) and not net.deep_supervision
    net.set_train(True)
    assert net(Tensor(np.ones((1, 2, 8, 16, 16), np.float32))).shape == (1, 4, 8, 16, 16)
    with pytest.raises(ValueError):
        build_network(Cfg(network="vnet"), plan)
