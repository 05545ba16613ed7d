"""A convolution through the oneDNN kernels of ``conv.cc``, with MindSpore gradients."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.operations._grad_ops import Conv3DBackpropFilter


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


class OneDNNConv3d(nn.Cell):
    """The convolution of one ``nn.Conv3d`` (group 1, symmetric padding) through the oneDNN kernels,
    with gradients from the oneDNN backward-data kernel and MindSpore's weight gradient. No bias: the
    caller adds it."""

    def __init__(self, library: str, kernel_size, out_channels, stride, padding, dilation):
        super().__init__()
        stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
        # oneDNN counts dilation from 0 (no dilation)
        self.config = ms.Tensor(np.array([*stride, *padding, *(d - 1 for d in dilation)], dtype=np.int64))

        def out_shape(x, w, config):
            return [x[0], w[0]] + [_output_size(x[i + 2], w[i + 2], stride[i], padding[i], dilation[i])
                                   for i in range(3)]

        def same_as_x(x, w, dy, config):
            return x

        def first_dtype(*dtypes):
            return dtypes[0]

        self.backward_data = ops.Custom(f"{library}:ConvBackwardData", out_shape=same_as_x,
                                        out_dtype=first_dtype, func_type="aot")
        # MindSpore's own weight gradient: the same oneDNN GEMM kernel, faster under MindSpore's threading
        self.backward_weights = Conv3DBackpropFilter(out_channels, tuple(kernel_size), pad_mode="pad",
                                                     pad=tuple(p for p in padding for _ in range(2)),
                                                     stride=stride, dilation=dilation)
        self.forward = ops.Custom(f"{library}:ConvForward", out_shape=out_shape, out_dtype=first_dtype,
                                  func_type="aot")

    def construct(self, x, weight):
        return self.forward(x, weight, self.config)

    # A Cell-level gradient: ops.Custom(bprop=...) registers one bprop per kernel name, which every layer
    # would share.
    def bprop(self, x, weight, out, dout):
        return self.backward_data(x, weight, dout, self.config), self.backward_weights(x, dout, weight.shape)
