"""The oneDNN convolution kernels give MindSpore's results (outputs and both gradients), switch only where
they apply, and never reach an exported graph."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from src.models import onednn_conv
from src.models.layers import conv3d
from src.models.unet3d import PlainUNet3D
from src.train.device import setup_device


@pytest.fixture(scope="module", autouse=True)
def cpu_graph_mode():
    setup_device("CPU", "graph")
    available, reason = onednn_conv.availability()
    if not available:
        pytest.skip(f"oneDNN kernels unavailable here: {reason}")


class SquaredError(nn.Cell):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def construct(self, x, target):
        out = self.network(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return ((out - target) ** 2).sum()


def gradients(cell, *inputs):
    return ms.grad(cell, grad_position=0, weights=cell.trainable_params())(*inputs)


def relative_error(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def twin_convs(in_channels, out_channels, kernel, stride, dilation, bias):
    reference = conv3d(in_channels, out_channels, kernel, stride, dilation, bias)
    fast = conv3d(in_channels, out_channels, kernel, stride, dilation, bias)
    fast.weight.set_data(reference.weight.data.copy())
    if bias:
        values = ms.Tensor(np.linspace(-1, 1, out_channels, dtype=np.float32))
        reference.bias.set_data(values)
        fast.bias.set_data(values.copy())
    return reference, fast


@pytest.mark.parametrize("in_channels,out_channels,kernel,stride,dilation,bias,shape", [
    (8, 8, 3, 1, 1, False, (2, 8, 12, 16, 10)),
    (1, 8, 3, 1, 1, True, (2, 1, 9, 8, 8)),
    (8, 16, 3, 2, 1, False, (2, 8, 12, 16, 10)),
    (4, 6, (1, 3, 3), (1, 2, 2), 1, True, (1, 4, 5, 9, 8)),
    (4, 4, 3, 1, 2, False, (1, 4, 10, 10, 10)),
    (8, 3, 1, 1, 1, True, (2, 8, 6, 6, 6)),
])
def test_conv_matches_mindspore_kernels(in_channels, out_channels, kernel, stride, dilation, bias, shape):
    reference, fast = twin_convs(in_channels, out_channels, kernel, stride, dilation, bias)
    assert onednn_conv.use_onednn_convolutions(fast) == 1
    # MindSpore's own nn.Conv3d has no switch and keeps its kernels
    assert onednn_conv.use_onednn_convolutions(nn.Conv3d(2, 2, 3, pad_mode="pad", padding=1)) == 0
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=shape).astype(np.float32))
    expected = reference(x)
    np.testing.assert_allclose(fast(x).asnumpy(), expected.asnumpy(), atol=1e-4)
    target = ms.Tensor(rng.normal(size=expected.shape).astype(np.float32))
    grads_ref = gradients(SquaredError(reference), x, target)
    grads_fast = gradients(SquaredError(fast), x, target)
    assert relative_error(grads_fast[0].asnumpy(), grads_ref[0].asnumpy()) < 1e-5  # input gradient
    assert len(grads_fast[1]) == (2 if bias else 1)
    for got, want in zip(grads_fast[1], grads_ref[1]):  # weight (and bias) gradients
        assert relative_error(got.asnumpy(), want.asnumpy()) < 1e-5


def test_whole_unet_gradients_match_and_every_conv_switches():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    ms.set_seed(0)
    reference = PlainUNet3D(1, 3, [4, 8, 16, 16], [[3, 3, 3]] * 4, strides, "conv", True)
    ms.set_seed(0)
    fast = PlainUNet3D(1, 3, [4, 8, 16, 16], [[3, 3, 3]] * 4, strides, "conv", True)
    convs = [c for _, c in fast.cells_and_names() if isinstance(c, nn.Conv3d)]
    assert onednn_conv.use_onednn_convolutions(fast) == len(convs) > 10
    reference.set_train(True)
    fast.set_train(True)
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.normal(size=(2, 1, 8, 16, 16)).astype(np.float32))
    target = ms.Tensor(rng.normal(size=(2, 3, 8, 16, 16)).astype(np.float32))
    grads_ref = gradients(SquaredError(reference), x, target)[1]
    grads_fast = gradients(SquaredError(fast), x, target)[1]
    names = [p.name for p in fast.trainable_params()]
    for name, got, want in zip(names, grads_fast, grads_ref):
        assert relative_error(got.asnumpy(), want.asnumpy()) < 1e-4, name


def test_select_reports_the_kernels_used():
    _, fast = twin_convs(2, 2, 3, 1, 1, False)
    assert onednn_conv.select_convolution_kernels(fast, "O2") == "convolutions: MindSpore kernels (mixed precision)"
    assert fast.onednn is None
    assert onednn_conv.select_convolution_kernels(fast, "O0").startswith("convolutions: oneDNN")
    assert fast.onednn is not None


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(onednn_conv, "_state", {})
    monkeypatch.setenv(onednn_conv.ENV_SWITCH, "0")
    assert onednn_conv.availability() == (False, f"switched off by {onednn_conv.ENV_SWITCH}")
    _, fast = twin_convs(2, 2, 3, 1, 1, False)
    assert onednn_conv.use_onednn_convolutions(fast) == 0
    assert fast.onednn is None


def test_missing_compiler_is_reported_and_nothing_is_left_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        onednn_conv.build_library(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_compile_leaves_no_partial_library(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="compiling onednn_conv.cc failed"):
        onednn_conv.build_library(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_library_is_built_once_per_source(tmp_path):
    first = onednn_conv.build_library(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert onednn_conv.build_library(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert first.name.startswith("onednn_conv-") and first.suffix == ".so"
