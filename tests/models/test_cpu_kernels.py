"""The compiled CPU kernels (oneDNN convolutions, fused instance norm + LeakyReLU) give MindSpore's results,
outputs and every gradient, switch only where they apply, and report why when they cannot be used."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from src import cpu_env
from src.models import cpu_kernels
from src.models.cpu_kernels import conv as conv_module
from src.models.cpu_kernels.conv import OneDNNConvTranspose3d, isa_capped
from src.models.layers import ConvNormAct, ConvTranspose3d, conv3d, transposed_conv3d
from src.models.unet3d import PlainUNet3D
from src.runtime.device import setup_device

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def cpu_graph_mode():
    setup_device("CPU", "graph")
    available, reason = cpu_kernels.availability()
    if not available:
        pytest.skip(f"CPU kernels unavailable here: {reason}")


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


def assert_same_outputs_and_gradients(reference, fast, x, seed: int, atol: float = 1e-4, rtol: float = 1e-5):
    """fast(x) equals reference(x); the input gradient and every parameter gradient of a squared error
    equal too (relative to their largest value). Returns the number of parameter gradients compared."""
    expected = reference(x)
    np.testing.assert_allclose(fast(x).asnumpy(), expected.asnumpy(), atol=atol)
    target = ms.Tensor(np.random.default_rng(seed).normal(size=expected.shape).astype(np.float32))
    grads_ref = gradients(SquaredError(reference), x, target)
    grads_fast = gradients(SquaredError(fast), x, target)
    assert relative_error(grads_fast[0].asnumpy(), grads_ref[0].asnumpy()) < rtol  # input gradient
    names = [p.name for p in fast.trainable_params()]
    for name, got, want in zip(names, grads_fast[1], grads_ref[1]):
        assert relative_error(got.asnumpy(), want.asnumpy()) < rtol, name
    return len(grads_fast[1])


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
    assert cpu_kernels.use_cpu_kernels(fast) == 1
    # MindSpore's own nn.Conv3d has no switch and keeps its kernels
    assert cpu_kernels.use_cpu_kernels(nn.Conv3d(2, 2, 3, pad_mode="pad", padding=1)) == 0
    x = ms.Tensor(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    assert assert_same_outputs_and_gradients(reference, fast, x, seed=1) == (2 if bias else 1)


@pytest.mark.parametrize("slab_bytes", ["4000", "30000"])
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (3, 2, 1), ((1, 3, 3), (1, 2, 2), 1), (3, 1, 2)])
def test_forward_in_depth_slabs_matches(monkeypatch, slab_bytes, kernel, stride, dilation):
    """Large inputs go through the forward pass in slabs of depth rows (bounded scratch memory); tiny
    slab sizes force one or a few rows per slab here."""
    monkeypatch.setenv("KITSEG_CONV_SLAB_BYTES", slab_bytes)
    reference, fast = twin_convs(4, 6, kernel, stride, dilation, True)
    assert cpu_kernels.use_cpu_kernels(fast) == 1
    x = ms.Tensor(np.random.default_rng(5).normal(size=(2, 4, 11, 12, 10)).astype(np.float32))
    np.testing.assert_allclose(fast(x).asnumpy(), reference(x).asnumpy(), atol=1e-4)


def test_whole_unet_gradients_match_and_every_conv_switches():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    ms.set_seed(0)
    reference = PlainUNet3D(1, 3, [4, 8, 16, 16], [[3, 3, 3]] * 4, strides, "conv", True)
    ms.set_seed(0)
    fast = PlainUNet3D(1, 3, [4, 8, 16, 16], [[3, 3, 3]] * 4, strides, "conv", True)
    convs = [c for _, c in fast.cells_and_names() if isinstance(c, nn.Conv3d)]
    units = [c for _, c in fast.cells_and_names() if isinstance(c, ConvNormAct)]
    upsamplings = [c for _, c in fast.cells_and_names() if isinstance(c, ConvTranspose3d)]
    expected = len(convs) + len(units) + (0 if isa_capped() else len(upsamplings))
    assert cpu_kernels.use_cpu_kernels(fast) == expected and len(units) > 10 and len(upsamplings) == 3
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
    choice = cpu_kernels.select_cpu_kernels(fast, "O2")
    assert choice.layers == 0 and choice.line == "CPU kernels: MindSpore's (mixed precision)"
    assert fast.onednn is None
    choice = cpu_kernels.select_cpu_kernels(fast, "O0")
    assert choice.layers == 1 and choice.line.startswith("CPU kernels: compiled")
    assert ("capped at AVX2" in choice.line) == isa_capped()
    assert fast.onednn is not None


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    assert cpu_kernels.availability() == (False, f"switched off by {cpu_kernels.ENV_SWITCH}")
    _, fast = twin_convs(2, 2, 3, 1, 1, False)
    assert cpu_kernels.use_cpu_kernels(fast) == 0
    assert fast.onednn is None


def test_missing_compiler_is_reported_and_nothing_is_left_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        cpu_kernels.build_library(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_compile_leaves_no_partial_library(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="compiling the CPU kernels failed"):
        cpu_kernels.build_library(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_library_is_built_once_per_source(tmp_path):
    first = cpu_kernels.build_library(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.build_library(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert first.name.startswith("kitseg_cpu_kernels-") and first.suffix == ".so"


@pytest.mark.parametrize("activation,shape", [(True, (2, 6, 5, 7, 4)), (False, (1, 3, 4, 4, 4)),
                                              (True, (2, 4, 1, 1, 1))])
def test_fused_norm_matches_groupnorm_and_leaky_relu(activation, shape):
    ms.set_seed(3)
    reference = ConvNormAct(shape[1], shape[1], 1, 1, 1, activation)
    ms.set_seed(3)
    fast = ConvNormAct(shape[1], shape[1], 1, 1, 1, activation)
    for unit in (reference, fast):  # non-trivial affine parameters, shared
        unit.norm.norm.gamma.set_data(ms.Tensor(np.linspace(0.5, 1.5, shape[1], dtype=np.float32)))
        unit.norm.norm.beta.set_data(ms.Tensor(np.linspace(-0.3, 0.3, shape[1], dtype=np.float32)))
    assert fast.use_cpu_kernel(cpu_kernels.availability()[1]) is True
    x = ms.Tensor(np.random.default_rng(4).normal(1.0, 2.0, size=shape).astype(np.float32))
    names = [p.name for p in fast.trainable_params()]
    assert any("gamma" in n for n in names) and any("beta" in n for n in names)
    # atol: a 1-voxel plane divides rounding noise by sqrt(eps) in MindSpore's GroupNorm
    assert assert_same_outputs_and_gradients(reference, fast, x, seed=5, atol=1e-4, rtol=1e-4) == len(names)


@pytest.mark.parametrize("gamma", [(-1.5, -0.2, 0.05, 3.0), (0.01, -0.02, 1.0, 0.5)])
def test_fused_norm_backward_from_its_output_inverts_any_nonzero_gamma(gamma):
    # the backward reads the normalized input back from y through gamma and beta: negative and small gammas,
    # and a beta far larger than gamma, must still give GroupNorm's gradients
    shape = (2, 4, 5, 6, 3)
    reference = ConvNormAct(4, 4, 1, 1, 1, True)
    fast = ConvNormAct(4, 4, 1, 1, 1, True)
    fast.conv.weight.set_data(reference.conv.weight.data.copy())
    for unit in (reference, fast):
        unit.norm.norm.gamma.set_data(ms.Tensor(np.array(gamma, dtype=np.float32)))
        unit.norm.norm.beta.set_data(ms.Tensor(np.array([0.5, -2.0, 0.3, 0.0], dtype=np.float32)))
    assert fast.use_cpu_kernel(cpu_kernels.availability()[1]) is True
    x = ms.Tensor(np.random.default_rng(9).normal(-1.0, 3.0, size=shape).astype(np.float32))
    assert assert_same_outputs_and_gradients(reference, fast, x, seed=6, atol=1e-4, rtol=2e-4) == 3


def test_fused_norm_with_zero_gamma_gives_no_gamma_gradient_and_a_finite_rest():
    # gamma 0 loses the normalized input; the kernel then keeps every gradient finite, gives that channel's
    # gamma no gradient, and beta's and the input's stay exact (the input's is 0: y does not depend on x)
    reference = ConvNormAct(3, 3, 1, 1, 1, True)
    fast = ConvNormAct(3, 3, 1, 1, 1, True)
    fast.conv.weight.set_data(reference.conv.weight.data.copy())
    for unit in (reference, fast):
        unit.norm.norm.gamma.set_data(ms.Tensor(np.array([1.0, 0.0, -0.7], dtype=np.float32)))
        unit.norm.norm.beta.set_data(ms.Tensor(np.array([0.1, 0.4, -0.2], dtype=np.float32)))
    assert fast.use_cpu_kernel(cpu_kernels.availability()[1]) is True
    x = ms.Tensor(np.random.default_rng(10).normal(size=(1, 3, 4, 5, 6)).astype(np.float32))
    target = ms.Tensor(np.random.default_rng(11).normal(size=(1, 3, 4, 5, 6)).astype(np.float32))
    want = gradients(SquaredError(reference), x, target)
    got = gradients(SquaredError(fast), x, target)
    names = [p.name for p in fast.trainable_params()]
    grads = {name: (g.asnumpy(), w.asnumpy()) for name, g, w in zip(names, got[1], want[1])}
    assert all(np.isfinite(g).all() for g, _ in grads.values()) and np.isfinite(got[0].asnumpy()).all()
    (gamma_got, gamma_want), = [v for n, v in grads.items() if "gamma" in n]
    (beta_got, beta_want), = [v for n, v in grads.items() if "beta" in n]
    assert gamma_got[1] == 0.0 and gamma_want[1] != 0.0
    np.testing.assert_allclose(gamma_got[[0, 2]], gamma_want[[0, 2]], rtol=1e-4)
    np.testing.assert_allclose(beta_got, beta_want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[0].asnumpy(), want[0].asnumpy(), atol=1e-5)


@pytest.mark.parametrize("slab_bytes", ["0", "2000"])  # 0: the default 64 MB; 2000: one input row per slab
@pytest.mark.parametrize("stride,shape", [((2, 2, 2), (2, 6, 3, 4, 5)), ((1, 2, 2), (1, 6, 4, 3, 3))])
def test_transposed_conv_matches_mindspore(monkeypatch, slab_bytes, stride, shape):
    """The compiled transposed convolution (used when oneDNN is uncapped), forced on here whatever the ISA."""
    monkeypatch.setenv("KITSEG_CONV_SLAB_BYTES", slab_bytes)
    ms.set_seed(6)
    reference = transposed_conv3d(shape[1], 4, stride)
    fast = transposed_conv3d(shape[1], 4, stride)
    fast.weight.set_data(reference.weight.data.copy())
    fast.onednn = OneDNNConvTranspose3d(cpu_kernels.availability()[1], fast.upsampling_stride)
    x = ms.Tensor(np.random.default_rng(7).normal(size=shape).astype(np.float32))
    assert assert_same_outputs_and_gradients(reference, fast, x, seed=8, atol=1e-5) == 1


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (3, 2, 1), ((1, 3, 3), (1, 2, 2), 1), (3, 1, 2)])
def test_compiled_weight_gradient_matches(monkeypatch, kernel, stride, dilation):
    """The compiled weight gradient (used when oneDNN is uncapped), forced on here whatever the ISA."""
    monkeypatch.setattr(conv_module, "isa_capped", lambda: False)
    reference, fast = twin_convs(4, 6, kernel, stride, dilation, False)
    assert cpu_kernels.use_cpu_kernels(fast) == 1 and fast.onednn.compiled_weight_gradient
    x = ms.Tensor(np.random.default_rng(8).normal(size=(2, 4, 9, 10, 8)).astype(np.float32))
    assert assert_same_outputs_and_gradients(reference, fast, x, seed=9) == 1


# A fresh process: the cap is released before oneDNN's first primitive, as in train.py, and the compiled
# network (AVX-512 kernels where the machine has them) is compared with MindSpore's kernels.
UNCAPPED_PROBE = r"""
import json, os
import src
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from src.runtime.device import setup_device
from src.models.cpu_kernels import select_cpu_kernels
from src.models.unet3d import PlainUNet3D
from src.losses import DiceCELoss
setup_device("CPU", "graph")
strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
nets = []
for _ in range(2):
    ms.set_seed(7)
    nets.append(PlainUNet3D(1, 3, [4, 8, 16], [[3, 3, 3]] * 3, strides, "conv", False))
choice = select_cpu_kernels(nets[1], release_isa_cap=True)
rng = np.random.default_rng(3)
x = Tensor(rng.normal(size=(2, 1, 8, 16, 16)).astype(np.float32))
target = Tensor(rng.integers(0, 3, size=(2, 1, 8, 16, 16)).astype(np.int32))
loss = DiceCELoss(3)
class WithLoss(ms.nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, target):
        return loss(self.net(x), target)

grads = []
for net in nets:
    net.set_train(True)
    cell = WithLoss(net)
    grads.append([g.asnumpy() for g in ops.value_and_grad(cell, None, cell.trainable_params())(x, target)[1]])
error = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)) for a, b in zip(*grads))
print(json.dumps({"line": choice.line, "layers": choice.layers, "cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                  "error": error}))
"""


def test_released_cap_runs_every_convolution_compiled_with_the_same_gradients(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", cpu_env.CAP_MARKER)}
    env.update(PYTHONPATH=str(ROOT), KITSEG_CPU_ISA="auto")
    script = tmp_path / "probe.py"  # graph-mode source must live in a file
    script.write_text(UNCAPPED_PROBE)
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cap"] is None and "uncapped" in result["line"]
    # 3 stages: 6 + 4 conv-norm units (a convolution and a fused norm each), 2 upsamplings, 2 heads
    assert result["layers"] == 24
    assert result["error"] < 1e-4


def test_release_cap_lifts_only_our_own_cap(monkeypatch):
    monkeypatch.setenv(cpu_env.ISA_ENV, "auto")
    monkeypatch.setenv(cpu_env.ISA_CAP, "AVX2")
    monkeypatch.delenv(cpu_env.CAP_MARKER, raising=False)
    assert cpu_env.release_cap() is False and os.environ[cpu_env.ISA_CAP] == "AVX2"  # the user's cap
    monkeypatch.setenv(cpu_env.CAP_MARKER, "1")
    monkeypatch.setenv(cpu_env.ISA_ENV, "avx2")
    assert cpu_env.release_cap() is False and os.environ[cpu_env.ISA_CAP] == "AVX2"  # asked to keep it
    monkeypatch.setenv(cpu_env.ISA_ENV, "auto")
    assert cpu_env.release_cap() is True
    assert cpu_env.ISA_CAP not in os.environ and cpu_env.CAP_MARKER not in os.environ


def test_cap_is_set_once_and_marked(monkeypatch):
    monkeypatch.delenv(cpu_env.ISA_CAP, raising=False)
    monkeypatch.delenv(cpu_env.CAP_MARKER, raising=False)
    monkeypatch.setenv(cpu_env.ISA_ENV, "native")
    cpu_env.apply_before_mindspore_import()
    assert cpu_env.ISA_CAP not in os.environ
    monkeypatch.setenv(cpu_env.ISA_ENV, "auto")
    cpu_env.apply_before_mindspore_import()
    assert os.environ[cpu_env.ISA_CAP] == "AVX2" and os.environ[cpu_env.CAP_MARKER] == "1"
