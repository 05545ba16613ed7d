"""Instance norm (affine) + LeakyReLU through the fused kernels of ``instance_norm.cc``."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops


class FusedInstanceNormAct(nn.Cell):
    """``y = leaky_relu(gamma * (x - mean) / sqrt(var + eps) + beta)`` per sample and channel, with its
    gradient from the backward kernel. ``slope`` 1 is the plain instance norm. gamma and beta come in as
    inputs, so the caller's parameters (and checkpoints) stay where they are.

    Returns ``(y, inv_std)``: the backward works from the output and the per-plane 1 / std alone, never from
    ``x``, so the graph frees the convolution output that feeds the norm right after the forward (the
    kernel file says how and where the inverse stops). Callers take ``[0]``."""

    def __init__(self, library: str, eps: float, slope: float):
        super().__init__()
        if not slope > 0:
            raise ValueError(f"the backward inverts the activation: slope must be positive, got {slope}")
        self.options = ms.Tensor(np.array([eps, slope], dtype=np.float32))

        def forward_shapes(x, gamma, beta, options):
            return x, [x[0], x[1]]

        def backward_shapes(gamma, beta, options, y, inv_std, dy):
            return y, gamma, gamma

        def forward_dtypes(x, *others):
            return x, x

        def backward_dtypes(gamma, *others):
            return gamma, gamma, gamma

        self.forward = ops.Custom(f"{library}:InstanceNormActForward", out_shape=forward_shapes,
                                  out_dtype=forward_dtypes, func_type="aot")
        self.backward = ops.Custom(f"{library}:InstanceNormActBackward", out_shape=backward_shapes,
                                   out_dtype=backward_dtypes, func_type="aot")

    def construct(self, x, gamma, beta):
        return self.forward(x, gamma, beta, self.options)

    def bprop(self, x, gamma, beta, out, dout):
        y, inv_std = out
        dx, dgamma, dbeta = self.backward(gamma, beta, self.options, y, inv_std, dout[0])
        return dx, dgamma, dbeta
