"""Building blocks shared by the networks: convolutions with explicit padding and He init, an instance
norm that runs on every backend and exports to MindIR, and LeakyReLU written for speed.

MindSpore defaults differ from PyTorch (``pad_mode='same'``, no bias), so every argument is passed.
"""
import time

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal
from mindspore.ops.operations._grad_ops import ReluGrad

from src.cpu_env import isa_capped
from src.models.cpu_kernels.conv import OneDNNConv3d, OneDNNConvTranspose3d
from src.models.cpu_kernels.instance_norm import FusedInstanceNormAct


LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5


def he_normal():
    """nnU-Net initialises every conv and transposed conv with kaiming_normal(a=0.01), biases zero."""
    return HeNormal(negative_slope=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")


def as_triple(value) -> tuple:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"expected 3 values per axis, got {value}")
    return value


class _SwitchableKernel:
    """``construct`` of a (transposed) convolution whose kernel ``use_cpu_kernel`` may swap: the compiled
    one in ``self.onednn``, else MindSpore's ``self.mindspore_kernel``; then the bias."""

    def construct(self, x):
        if self.onednn is None:
            out = self.mindspore_kernel(x, self.weight)
        else:
            out = self.onednn(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        return out


class Conv3d(_SwitchableKernel, nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same checkpoints) whose CPU kernels can be swapped for the compiled
    oneDNN ones by ``cpu_kernels.use_cpu_kernels``; MindSpore's kernels otherwise."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, has_bias):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, stride=stride, pad_mode="pad",
                         padding=padding, dilation=dilation, group=1, has_bias=has_bias,
                         weight_init=he_normal(), bias_init="zeros" if has_bias else None,
                         data_format="NCDHW", dtype=ms.float32)
        self.geometry = (as_triple(kernel_size), out_channels, as_triple(stride), tuple(padding[0::2]),
                         as_triple(dilation))
        self.mindspore_kernel = self.conv3d
        self.onednn = None

    def can_use_cpu_kernel(self) -> bool:
        padding = self.padding if isinstance(self.padding, tuple) else (self.padding,) * 6
        return self.group == 1 and padding[0::2] == padding[1::2]

    def use_cpu_kernel(self, library: str) -> bool:
        """Route this convolution through the oneDNN kernels of ``library``; False if it cannot be."""
        if not self.can_use_cpu_kernel():
            return False
        self.onednn = OneDNNConv3d(library, *self.geometry)
        return True


def conv3d(in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1, has_bias=True) -> Conv3d:
    """Conv3d padded so that stride 1 keeps the size and stride s divides it by s (odd kernels)."""
    kernel_size, stride, dilation = as_triple(kernel_size), as_triple(stride), as_triple(dilation)
    padding = []
    for k, d in zip(kernel_size, dilation):
        half = d * (k - 1) // 2
        padding += [half, half]
    return Conv3d(in_channels, out_channels, kernel_size, stride, tuple(padding), dilation, has_bias)


class ConvTranspose3d(_SwitchableKernel, nn.Conv3dTranspose):
    """Upsampling as in nnU-Net: transposed conv with kernel = stride, so output = input * stride.
    Like ``Conv3d``, its CPU kernel can be swapped for the compiled oneDNN one; that is done only when
    oneDNN is not capped at AVX2 (``src/cpu_env.py``): under the cap MindSpore's kernel is as fast."""

    def __init__(self, in_channels: int, out_channels: int, stride, has_bias: bool):
        stride = as_triple(stride)
        super().__init__(in_channels, out_channels, kernel_size=stride, stride=stride, pad_mode="valid",
                         padding=0, dilation=1, group=1, output_padding=0, has_bias=has_bias,
                         weight_init=he_normal(), bias_init="zeros" if has_bias else None,
                         data_format="NCDHW", dtype=ms.float32)
        self.upsampling_stride = stride
        self.mindspore_kernel = self.conv3d_transpose
        self.onednn = None

    def can_use_cpu_kernel(self) -> bool:
        return True

    def use_cpu_kernel(self, library: str) -> bool:
        if isa_capped():
            return False
        self.onednn = OneDNNConvTranspose3d(library, self.upsampling_stride)
        return True


def transposed_conv3d(in_channels: int, out_channels: int, stride, has_bias: bool = False) -> ConvTranspose3d:
    return ConvTranspose3d(in_channels, out_channels, stride, has_bias)


def head_conv(in_channels: int, num_classes: int) -> nn.Conv3d:
    return conv3d(in_channels, num_classes, 1, 1, 1, has_bias=True)


class LeakyReLU(nn.Cell):
    """LeakyReLU(0.01) with a hand-written gradient.

    Forward max(x, 0.01 x) and backward 0.01 dy + 0.99 dy [y > 0] are the definition (up to one
    rounding of the gradient); on CPU this was the fastest of the formulations measured (nn.LeakyReLU,
    maximum, where, relu(x) - 0.01 relu(-x); docs/PERFORMANCE.md, "Levers, one at a time").
    """

    def __init__(self):
        super().__init__()
        self.relu_grad = ReluGrad()

    def construct(self, x):
        return ops.maximum(x, x * LEAKY_SLOPE)

    def bprop(self, x, out, dout):
        return (dout * LEAKY_SLOPE + self.relu_grad(dout, out) * (1.0 - LEAKY_SLOPE),)


class InstanceNorm3d(nn.Cell):
    """Affine instance norm over the spatial axes of (B, C, d0, d1, d2), eps 1e-5.

    nn.InstanceNorm3d is GPU-only. GroupNorm with one group per channel is the same function on every
    backend, the fastest forward+backward measured on CPU, exports to MindIR and does not depend on the
    batch size. A LayerNorm over (sample, channel) rows had a faster CPU forward but took several times the
    memory at inference (docs/PERFORMANCE.md, "Levers, one at a time").
    """

    def __init__(self, num_channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.norm = nn.GroupNorm(num_channels, num_channels, eps=eps, affine=True, gamma_init="ones",
                                 beta_init="zeros", dtype=ms.float32)

    def construct(self, x):
        return self.norm(x)


class ConvNormAct(nn.Cell):
    """conv -> InstanceNorm (affine) -> LeakyReLU(0.01), the nnU-Net unit.

    The conv bias is off by default: instance norm subtracts the per-channel mean, so a bias there
    has no effect on the output and always gets a zero gradient. That is also what makes the
    reference 5-stage network have 16,545,036 parameters (dynamic-network-architectures'
    PlainConvUNet default); ``conv_bias=True`` gives nnU-Net's plans setting (16,548,076).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 activation: bool = True, conv_bias: bool = False):
        super().__init__()
        self.conv = conv3d(in_channels, out_channels, kernel_size, stride, dilation, has_bias=conv_bias)
        self.norm = InstanceNorm3d(out_channels)
        self.activation = LeakyReLU() if activation else None
        self.fused = None

    def use_cpu_kernel(self, library: str) -> bool:
        """Norm and activation through the fused kernel of ``library`` (same parameters)."""
        self.fused = FusedInstanceNormAct(library, self.norm.norm.eps,
                                          LEAKY_SLOPE if self.activation is not None else 1.0)
        return True

    def construct(self, x):
        x = self.conv(x)
        if self.fused is not None:
            return self.fused(x, self.norm.norm.gamma, self.norm.norm.beta)[0]
        x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class StackedConvs(nn.Cell):
    """ConvNormAct repeated; the first one may downsample by its stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, first_stride=1, num_convs: int = 2,
                 conv_bias: bool = False):
        super().__init__()
        units = [ConvNormAct(in_channels, out_channels, kernel_size, first_stride, 1, True, conv_bias)]
        units += [ConvNormAct(out_channels, out_channels, kernel_size, 1, 1, True, conv_bias)
                  for _ in range(num_convs - 1)]
        self.units = nn.SequentialCell(units)

    def construct(self, x):
        return self.units(x)


def max_pool(stride) -> nn.MaxPool3d:
    stride = as_triple(stride)
    return nn.MaxPool3d(kernel_size=stride, stride=stride, pad_mode="valid", padding=0, dilation=1,
                        return_indices=False, ceil_mode=False)


def count_parameters(net: nn.Cell) -> int:
    return int(sum(p.size for p in net.get_parameters()))


def forget_compiled_graphs(cell: nn.Cell) -> None:
    """Make the next graph-mode call recompile ``cell``.

    A compiled graph is cached by phase, creation time and input signature, not by Python attribute
    values, so a flag read inside ``construct`` (deep supervision) would keep its old value. Cells
    that wrap this one (loss, train step) must be built after the flag is set.
    """
    object.__setattr__(cell, "_create_time", time.time_ns())
