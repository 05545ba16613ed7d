"""The plain nnU-Net 3D U-Net, built for any number of stages from the plan's features/kernels/strides."""
from mindspore import nn, ops

from src.models.layers import StackedConvs, forget_compiled_graphs, head_conv, max_pool, transposed_conv3d


def check_topology(features, kernel_sizes, strides) -> None:
    if not (len(features) == len(kernel_sizes) == len(strides)):
        raise ValueError(f"features ({len(features)}), kernel_sizes ({len(kernel_sizes)}) and strides "
                         f"({len(strides)}) must have one entry per stage")
    if len(features) < 2:
        raise ValueError("a U-Net needs at least 2 stages")


class EncoderStage(nn.Cell):
    def __init__(self, in_channels, out_channels, kernel_size, stride, downsample: str, conv_bias: bool):
        super().__init__()
        pools = downsample == "maxpool" and any(s != 1 for s in stride)
        self.pool = max_pool(stride) if pools else None
        self.convs = StackedConvs(in_channels, out_channels, kernel_size, 1 if pools else stride, 2, conv_bias)

    def construct(self, x):
        if self.pool is not None:
            x = self.pool(x)
        return self.convs(x)


class DecoderStage(nn.Cell):
    """Upsample the deeper map, concatenate the skip, two convs, and a 1x1x1 segmentation head."""

    def __init__(self, below_channels, skip_channels, kernel_size, stride, num_classes, conv_bias: bool):
        super().__init__()
        self.up = transposed_conv3d(below_channels, skip_channels, stride, conv_bias)
        self.convs = StackedConvs(2 * skip_channels, skip_channels, kernel_size, 1, 2, conv_bias)
        self.head = head_conv(skip_channels, num_classes)

    def construct(self, below, skip):
        return self.convs(ops.concat((self.up(below), skip), 1))


class PlainUNet3D(nn.Cell):
    """Training with deep supervision returns a tuple of logits, highest resolution first (one per
    decoder stage); otherwise one logits tensor (B, num_classes, d0, d1, d2).

    ``downsample="conv"`` downsamples by the stride of each stage's first conv (nnU-Net);
    ``"maxpool"`` puts a stride-shaped max pooling before that stage's convs (the BDCI text).
    """

    def __init__(self, in_channels: int, num_classes: int, features: list, kernel_sizes: list,
                 strides: list, downsample: str = "conv", deep_supervision: bool = True,
                 conv_bias: bool = False):
        super().__init__()
        check_topology(features, kernel_sizes, strides)
        if downsample not in ("conv", "maxpool"):
            raise ValueError(f"downsample must be 'conv' or 'maxpool', got {downsample!r}")
        self.num_stages = len(features)
        self.num_classes = num_classes
        self.deep_supervision = bool(deep_supervision)
        encoder = []
        channels = in_channels
        for feat, kernel, stride in zip(features, kernel_sizes, strides):
            encoder.append(EncoderStage(channels, feat, kernel, stride, downsample, conv_bias))
            channels = feat
        self.encoder = nn.CellList(encoder)
        # decoder[0] is the deepest decoder stage
        decoder = []
        for s in range(self.num_stages - 2, -1, -1):
            decoder.append(DecoderStage(features[s + 1], features[s], kernel_sizes[s], strides[s + 1],
                                        num_classes, conv_bias))
        self.decoder = nn.CellList(decoder)

    def set_deep_supervision(self, enabled: bool) -> None:
        self.deep_supervision = bool(enabled)
        forget_compiled_graphs(self)

    def construct(self, x):
        skips = ()
        for stage in self.encoder:
            x = stage(x)
            skips = skips + (x,)
        with_all_heads = self.deep_supervision and self.training
        outputs = ()
        num_decoder = self.num_stages - 1
        for i in range(num_decoder):
            stage = self.decoder[i]
            x = stage(x, skips[num_decoder - 1 - i])
            if with_all_heads:
                outputs = (stage.head(x),) + outputs
        if with_all_heads:
            return outputs
        return self.decoder[num_decoder - 1].head(x)
