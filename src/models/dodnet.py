"""DoDNet: the residual ASPP U-Net backbone with a task-conditioned dynamic head (MOTS pretraining).

A controller maps [globally pooled bottleneck features, task one-hot] to the 162 weights and biases
of three 1x1x1 convs 8->8->8->2, which are applied to each sample's 8-channel decoder output.
The network returns the 2 logits (organ, tumor); sigmoid is applied by the loss and the predictor.
"""
import mindspore as ms
from mindspore import nn, ops

from src.models.layers import conv3d, forget_compiled_graphs
from src.models.res_unet_aspp import ASPP_DILATIONS, ResUNetBackbone

NUM_MOTS_TASKS = 7
HEAD_CHANNELS = 8
NUM_OUTPUTS = 2


def dynamic_head_shapes(head_channels: int = HEAD_CHANNELS, num_outputs: int = NUM_OUTPUTS):
    """(out, in) of the three dynamic 1x1x1 convs."""
    return [(head_channels, head_channels), (head_channels, head_channels), (num_outputs, head_channels)]


def dynamic_param_count(head_channels: int = HEAD_CHANNELS, num_outputs: int = NUM_OUTPUTS) -> int:
    return sum(o * i + o for o, i in dynamic_head_shapes(head_channels, num_outputs))


class DoDNet(nn.Cell):
    def __init__(self, in_channels: int, features: list, kernel_sizes: list, strides: list,
                 num_tasks: int = NUM_MOTS_TASKS, head_channels: int = HEAD_CHANNELS,
                 num_outputs: int = NUM_OUTPUTS, extra_blocks=None, aspp_dilations=ASPP_DILATIONS):
        super().__init__()
        self.backbone = ResUNetBackbone(in_channels, features, kernel_sizes, strides, extra_blocks, aspp_dilations)
        self.num_tasks = num_tasks
        self.num_outputs = num_outputs
        self.shapes = dynamic_head_shapes(head_channels, num_outputs)
        self.head_features = conv3d(features[0], head_channels, 1, 1, 1, has_bias=True)
        self.controller = conv3d(features[-1] + num_tasks, dynamic_param_count(head_channels, num_outputs),
                                 1, 1, 1, has_bias=True)
        self.deep_supervision = False

    def set_deep_supervision(self, enabled: bool) -> None:
        """DoDNet has a single output; kept so every network answers the same calls."""
        self.deep_supervision = False
        forget_compiled_graphs(self)

    def dynamic_params(self, bottleneck, task_id):
        pooled = bottleneck.mean(axis=(2, 3, 4), keep_dims=True)
        task = ops.one_hot(task_id.astype(ms.int32), self.num_tasks, ops.ones((), pooled.dtype),
                           ops.zeros((), pooled.dtype), -1)
        task = task.reshape(task.shape[0], self.num_tasks, 1, 1, 1)
        params = self.controller(ops.concat((pooled, task), 1))
        return params.reshape(params.shape[0], -1)

    def construct(self, x, task_id):
        bottleneck, decoded = self.backbone(x)
        params = self.dynamic_params(bottleneck, task_id)
        feats = self.head_features(decoded[0])
        batch = feats.shape[0]
        spatial = feats.shape[2:]
        h = feats.reshape(batch, feats.shape[1], -1)
        # layout of the 162 numbers: all weights (layer by layer, row-major), then all biases
        offset = 0
        weights = ()
        for out_ch, in_ch in self.shapes:
            weights = weights + (params[:, offset:offset + out_ch * in_ch].reshape(batch, out_ch, in_ch),)
            offset += out_ch * in_ch
        num_layers = len(self.shapes)
        for i in range(num_layers):
            out_ch = self.shapes[i][0]
            bias = params[:, offset:offset + out_ch].reshape(batch, out_ch, 1)
            offset += out_ch
            h = ops.bmm(weights[i], h) + bias
            if i < num_layers - 1:
                h = ops.relu(h)
        return h.reshape((batch, self.num_outputs) + spatial)
