import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, ops

from src.models.layers import (ConvNormAct, InstanceNorm3d, LeakyReLU, as_triple, conv3d, count_parameters,
                               max_pool, transposed_conv3d)


def numpy_instance_norm(x, eps=1e-5):
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    var = x.var(axis=(2, 3, 4), keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("training", [True, False])
def test_instance_norm_matches_numpy_and_ignores_the_batch(training):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 4, 5, 6, 7)) * 5 + 2).astype(np.float32)
    norm = InstanceNorm3d(4)
    norm.set_train(training)
    out = norm(Tensor(x)).asnumpy()
    np.testing.assert_allclose(out, numpy_instance_norm(x), atol=2e-5)
    alone = norm(Tensor(x[1:2])).asnumpy()
    np.testing.assert_allclose(alone, out[1:2], atol=1e-5)


def test_instance_norm_training_and_inference_formulations_agree():
    rng = np.random.default_rng(5)
    x = Tensor((rng.normal(size=(2, 3, 4, 5, 6)) * 3 - 1).astype(np.float32))
    norm = InstanceNorm3d(3)
    params = {p.name.split(".")[-1]: p for p in norm.get_parameters()}
    params["gamma"].set_data(Tensor(np.array([0.5, 1.5, -2.0], np.float32)))
    params["beta"].set_data(Tensor(np.array([1.0, 0.0, 0.25], np.float32)))
    train_out = norm.set_train(True)(x).asnumpy()
    infer_out = norm.set_train(False)(x).asnumpy()
    np.testing.assert_allclose(infer_out, train_out, atol=1e-5)


def test_instance_norm_affine_parameters_apply_per_channel():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 4, 4)).astype(np.float32)
    norm = InstanceNorm3d(3)
    gamma = np.array([1.0, 2.0, -0.5], np.float32)
    beta = np.array([0.0, 1.0, 3.0], np.float32)
    params = {p.name.split(".")[-1]: p for p in norm.get_parameters()}
    params["gamma"].set_data(Tensor(gamma))
    params["beta"].set_data(Tensor(beta))
    expected = numpy_instance_norm(x) * gamma.reshape(1, 3, 1, 1, 1) + beta.reshape(1, 3, 1, 1, 1)
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), expected, atol=3e-5)


def test_leaky_relu_value_and_gradient_equal_the_definition():
    x = np.array([-3.0, -0.5, 0.0, 0.25, 4.0], np.float32)
    act = LeakyReLU()
    np.testing.assert_allclose(act(Tensor(x)).asnumpy(), np.where(x > 0, x, 0.01 * x), rtol=1e-7)
    weights = Tensor(np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32))

    def weighted(t):
        return (act(t) * weights).sum()

    grad = ops.grad(weighted)(Tensor(x)).asnumpy()
    np.testing.assert_allclose(grad[[0, 1, 3, 4]], [0.01, 0.02, 4.0, 5.0], rtol=1e-6)
    graph_grad = ms.jit(ops.grad(weighted))(Tensor(x)).asnumpy()
    np.testing.assert_allclose(graph_grad[[0, 1, 3, 4]], [0.01, 0.02, 4.0, 5.0], rtol=1e-6)


@pytest.mark.parametrize("kernel,stride,expected", [
    ((3, 3, 3), (1, 1, 1), (6, 8, 10)),
    ((3, 3, 3), (2, 2, 2), (3, 4, 5)),
    ((1, 3, 3), (1, 2, 2), (6, 4, 5)),
])
def test_conv_padding_keeps_or_divides_the_size(kernel, stride, expected):
    conv = conv3d(2, 3, kernel, stride)
    out = conv(Tensor(np.ones((1, 2, 6, 8, 10), np.float32)))
    assert out.shape == (1, 3) + expected


def test_dilated_conv_keeps_the_size():
    conv = conv3d(2, 2, 3, 1, dilation=2)
    assert conv(Tensor(np.ones((1, 2, 8, 8, 8), np.float32))).shape == (1, 2, 8, 8, 8)


def test_transposed_conv_multiplies_by_the_stride_and_pool_divides():
    up = transposed_conv3d(4, 2, (1, 2, 2))
    out = up(Tensor(np.ones((1, 4, 3, 4, 5), np.float32)))
    assert out.shape == (1, 2, 3, 8, 10)
    pooled = max_pool((1, 2, 2))(Tensor(np.arange(16, dtype=np.float32).reshape(1, 1, 1, 4, 4)))
    np.testing.assert_array_equal(pooled.asnumpy().reshape(2, 2), [[5, 7], [13, 15]])


def test_he_initialisation_scale_and_zero_bias():
    conv = conv3d(64, 64, 3, 1, has_bias=True)
    weight = conv.weight.asnumpy()
    expected_std = np.sqrt(2.0 / (1 + 0.01 ** 2) / (64 * 27))
    assert abs(weight.std() / expected_std - 1) < 0.05
    assert np.all(conv.bias.asnumpy() == 0)


def test_conv_norm_act_has_no_conv_bias_by_default():
    unit = ConvNormAct(2, 4, 3)
    names = [p.name for p in unit.get_parameters()]
    assert not any(n.endswith("conv.bias") for n in names)
    assert count_parameters(unit) == 2 * 4 * 27 + 2 * 4
    assert count_parameters(ConvNormAct(2, 4, 3, conv_bias=True)) == 2 * 4 * 27 + 4 + 2 * 4


def test_as_triple_rejects_wrong_length():
    assert as_triple(2) == (2, 2, 2)
    with pytest.raises(ValueError):
        as_triple((1, 2))
