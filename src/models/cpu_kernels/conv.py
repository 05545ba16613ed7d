"""Convolutions and transposed convolutions through the oneDNN kernels of ``conv.cc``.

The weight gradient has two sources (``src/cpu_env.py`` decides the cap): with oneDNN capped at AVX2
MindSpore's own Conv3DBackpropFilter, which runs the same GEMM kernel faster under MindSpore's threads;
uncapped, the compiled kernel, which then gets oneDNN's AVX-512 weight-gradient kernels.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.operations._grad_ops import Conv3DBackpropFilter

from src.cpu_env import isa_capped


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def _config(stride, padding, dilation) -> ms.Tensor:
    # oneDNN counts dilation from 0 (no dilation)
    return ms.Tensor(np.array([*stride, *padding, *(d - 1 for d in dilation)], dtype=np.int64))


def _first_dtype(*dtypes):
    return dtypes[0]


def _shape_of_first(*shapes):
    return shapes[0]


def _shape_of_second(*shapes):
    return shapes[1]


class OneDNNConv3d(nn.Cell):
    """The convolution of one ``nn.Conv3d`` (group 1, symmetric padding) through the oneDNN kernels, with
    gradients from the oneDNN backward-data kernel and a weight gradient (module docstring). No bias: the
    caller adds it."""

    def __init__(self, library: str, kernel_size, out_channels, stride, padding, dilation):
        super().__init__()
        stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.config = _config(stride, padding, dilation)

        def out_shape(x, w, config):
            return [x[0], w[0]] + [_output_size(x[i + 2], w[i + 2], stride[i], padding[i], dilation[i])
                                   for i in range(3)]

        self.backward_data = ops.Custom(f"{library}:ConvBackwardData", out_shape=_shape_of_first,
                                        out_dtype=_first_dtype, func_type="aot")
        self.compiled_weight_gradient = not isa_capped()
        if self.compiled_weight_gradient:
            self.backward_weights = ops.Custom(f"{library}:ConvBackwardWeights", out_shape=_shape_of_second,
                                               out_dtype=_first_dtype, func_type="aot")
        else:
            self.backward_weights = Conv3DBackpropFilter(out_channels, tuple(kernel_size), pad_mode="pad",
                                                         pad=tuple(p for p in padding for _ in range(2)),
                                                         stride=stride, dilation=dilation)
        self.forward = ops.Custom(f"{library}:ConvForward", out_shape=out_shape, out_dtype=_first_dtype,
                                  func_type="aot")

    def construct(self, x, weight):
        return self.forward(x, weight, self.config)

    # A Cell-level gradient: ops.Custom(bprop=...) registers one bprop per kernel name, which every layer
    # would share.
    def bprop(self, x, weight, out, dout):
        if self.compiled_weight_gradient:
            weight_gradient = self.backward_weights(x, weight, dout, self.config)
        else:
            weight_gradient = self.backward_weights(x, dout, weight.shape)
        return self.backward_data(x, weight, dout, self.config), weight_gradient


class OneDNNConvTranspose3d(nn.Cell):
    """A transposed convolution with kernel = stride (nnU-Net's upsampling; weight (C_in, C_out, k, k, k)),
    i.e. the backward-data pass of the strided convolution it inverts, with its two gradients from the
    forward and weight-gradient kernels. No bias."""

    def __init__(self, library: str, stride):
        super().__init__()
        stride = tuple(stride)
        self.config = _config(stride, (0, 0, 0), (1, 1, 1))

        def out_shape(x, w, config):
            return [x[0], w[1]] + [x[i + 2] * stride[i] for i in range(3)]

        def convolution_shape(x, w, config):  # the strided convolution: out's shape back to x's
            return [x[0], w[0]] + [x[i + 2] // stride[i] for i in range(3)]

        self.forward = ops.Custom(f"{library}:ConvTransposeForward", out_shape=out_shape, out_dtype=_first_dtype,
                                  func_type="aot")
        self.convolution = ops.Custom(f"{library}:ConvForward", out_shape=convolution_shape,
                                      out_dtype=_first_dtype, func_type="aot")
        self.backward_weights = ops.Custom(f"{library}:ConvBackwardWeights", out_shape=_shape_of_second,
                                           out_dtype=_first_dtype, func_type="aot")

    def construct(self, x, weight):
        return self.forward(x, weight, self.config)

    def bprop(self, x, weight, out, dout):
        # as a convolution: src = dout (the transposed conv's output), diff_dst = x (its input)
        return self.convolution(dout, weight, self.config), self.backward_weights(dout, weight, x, self.config)
