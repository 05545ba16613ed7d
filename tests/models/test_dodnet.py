import numpy as np
import pytest
from mindspore import Tensor

from src.data.plan import Plan
from src.models import build_network
from src.models.dodnet import DoDNet, dynamic_param_count
from src.models.res_unet_aspp import ResUNetASPP
from src.models.transfer import transferable_parameters

FEATURES = [4, 8, 16]
KERNELS = [[3, 3, 3]] * 3
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def sample_input(batch=2, seed=0):
    return Tensor(np.random.default_rng(seed).normal(size=(batch, 1, 16, 16, 16)).astype(np.float32))


def numpy_dynamic_head(feats, params):
    """feats (8, N), params (162,): weights 8x8, 8x8, 2x8 then biases 8, 8, 2."""
    w1, w2, w3 = params[:64].reshape(8, 8), params[64:128].reshape(8, 8), params[128:144].reshape(2, 8)
    b1, b2, b3 = params[144:152], params[152:160], params[160:162]
    h = np.maximum(w1 @ feats + b1[:, None], 0)
    h = np.maximum(w2 @ h + b2[:, None], 0)
    return w3 @ h + b3[:, None]


def test_controller_produces_the_162_dynamic_parameters():
    assert dynamic_param_count() == 162
    net = DoDNet(1, FEATURES, KERNELS, STRIDES)
    assert net.controller.weight.shape == (162, 16 + 7, 1, 1, 1)


def test_dynamic_head_is_applied_per_sample_with_the_task_parameters():
    net = DoDNet(1, FEATURES, KERNELS, STRIDES)
    net.set_train(False)
    x = sample_input()
    tasks = Tensor(np.array([1, 5], np.int32))
    out = net(x, tasks).asnumpy()
    assert out.shape == (2, 2, 16, 16, 16)
    bottleneck, decoded = net.backbone(x)
    params = net.dynamic_params(bottleneck, tasks).asnumpy()
    feats = net.head_features(decoded[0]).asnumpy()
    for b in range(2):
        expected = numpy_dynamic_head(feats[b].reshape(8, -1), params[b]).reshape(2, 16, 16, 16)
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-4)


def test_the_task_changes_the_output():
    net = DoDNet(1, FEATURES, KERNELS, STRIDES)
    net.set_train(False)
    x = sample_input(batch=1)
    kidney = net(x, Tensor(np.array([1], np.int32))).asnumpy()
    liver = net(x, Tensor(np.array([0], np.int32))).asnumpy()
    assert np.abs(kidney - liver).max() > 1e-6


def test_transfer_keeps_the_backbone_and_drops_the_dynamic_head():
    source = DoDNet(1, FEATURES, KERNELS, STRIDES)
    target = ResUNetASPP(1, 4, FEATURES, KERNELS, STRIDES)
    src_dict = {p.name: p for p in source.get_parameters()}
    src_dict["moments.backbone.aspp.pool_conv.weight"] = src_dict["backbone.aspp.pool_conv.weight"]
    loaded, skipped = transferable_parameters(src_dict, target)
    backbone_names = sorted(p.name for p in target.get_parameters() if p.name.startswith("backbone."))
    assert loaded == backbone_names
    assert sorted(skipped) == ["controller.bias", "controller.weight", "head_features.bias", "head_features.weight"]
    by_name = {p.name: p for p in target.get_parameters()}
    for name in loaded:
        np.testing.assert_array_equal(by_name[name].asnumpy(), src_dict[name].asnumpy())


def test_transfer_skips_parameters_whose_shape_differs():
    source = ResUNetASPP(1, 4, FEATURES, KERNELS, STRIDES)
    target = ResUNetASPP(1, 3, FEATURES, KERNELS, STRIDES)
    loaded, skipped = transferable_parameters({p.name: p for p in source.get_parameters()}, target)
    assert "seg_heads.0.weight" in skipped and "seg_heads.0.bias" in skipped
    assert "backbone.aspp.pool_conv.weight" in loaded


def test_build_network_makes_a_dodnet_with_the_plan_task_count():
    class Cfg:
        network = "dodnet"
        downsample = "conv"
        deep_supervision = False

    plan = Plan.from_json({"features": FEATURES, "conv_kernel_sizes": KERNELS, "strides": STRIDES, "num_channels": 1,
                           "num_classes": 3, "patch_size": [16, 16, 16], "tasks": {"0": "liver", "1": "kidney"}})
    net = build_network(Cfg(), plan)
    assert isinstance(net, DoDNet) and net.num_tasks == 2
    with pytest.raises(ValueError):
        DoDNet(1, FEATURES[:1], KERNELS[:1], STRIDES[:1])
