"""Residual 3D U-Net with ASPP at the bottleneck (the KiTS21 transfer-learning seed's network).

Encoder: a full-resolution stem block, then one stage per downsampling; the first residual block of
a stage downsamples, then 2, 3, 5, 2 more blocks (for other depths see ``default_extra_blocks``).
Encoder block: conv-IN-LReLU-conv-IN-LReLU-conv-IN, plus identity or projected shortcut, then
LReLU (the seed writes "conv-IN-conv-IN-conv-IN-LeakyReLU"; the activations between the convs are
our reading, as in every residual block of that family). Decoder block: conv-IN-LReLU-conv-IN plus
a projected shortcut, then LReLU; one per stage, after transposed-conv upsampling and skip concat.
"""
from mindspore import nn, ops

from src.models.layers import (ConvNormAct, LeakyReLU, conv3d, forget_compiled_graphs, head_conv,
                               transposed_conv3d)
from src.models.unet3d import check_topology

SEED_EXTRA_BLOCKS = (2, 3, 5, 2)
ASPP_DILATIONS = (1, 2, 3)


def default_extra_blocks(num_downsamplings: int) -> list:
    """2, 3, 5, 2 for the seed's 4 downsamplings; shallower nets keep the head of that list and end in 2,
    deeper ones repeat 5 in the middle."""
    if num_downsamplings <= len(SEED_EXTRA_BLOCKS):
        return list(SEED_EXTRA_BLOCKS[:num_downsamplings - 1]) + [SEED_EXTRA_BLOCKS[-1]]
    middle = [5] * (num_downsamplings - 3)
    return [2, 3] + middle + [2]


class ResidualBlock(nn.Cell):
    """num_convs ConvNormAct units, the last without activation, added to the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, num_convs: int = 3):
        super().__init__()
        stride = tuple(stride) if not isinstance(stride, int) else (stride,) * 3
        units = [ConvNormAct(in_channels, out_channels, kernel_size, stride, 1, True)]
        for i in range(1, num_convs):
            units.append(ConvNormAct(out_channels, out_channels, kernel_size, 1, 1, i < num_convs - 1))
        self.units = nn.SequentialCell(units)
        needs_projection = in_channels != out_channels or any(s != 1 for s in stride)
        self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, 1, False) if needs_projection else None
        self.activation = LeakyReLU()

    def construct(self, x):
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.activation(self.units(x) + residual)


class ASPP(nn.Cell):
    """Parallel 1x1x1, dilated 3x3x3 and global-pooling branches, concatenated, 1x1x1 projection."""

    def __init__(self, channels: int, kernel_size, dilations=ASPP_DILATIONS):
        super().__init__()
        branches = [ConvNormAct(channels, channels, 1, 1, 1, True)]
        branches += [ConvNormAct(channels, channels, kernel_size, 1, d, True) for d in dilations]
        self.branches = nn.CellList(branches)
        # no norm on the pooled branch: instance norm of a single voxel is always zero
        self.pool_conv = conv3d(channels, channels, 1, 1, 1, has_bias=True)
        self.pool_activation = LeakyReLU()
        self.project = ConvNormAct(channels * (len(branches) + 1), channels, 1, 1, 1, True)

    def construct(self, x):
        outputs = ()
        for branch in self.branches:
            outputs = outputs + (branch(x),)
        pooled = self.pool_activation(self.pool_conv(x.mean(axis=(2, 3, 4), keep_dims=True)))
        outputs = outputs + (ops.broadcast_to(pooled, x.shape),)
        return self.project(ops.concat(outputs, 1))


class ResDecoderStage(nn.Cell):
    def __init__(self, below_channels, skip_channels, kernel_size, stride):
        super().__init__()
        self.up = transposed_conv3d(below_channels, skip_channels, stride)
        self.block = ResidualBlock(2 * skip_channels, skip_channels, kernel_size, 1, num_convs=2)

    def construct(self, below, skip):
        return self.block(ops.concat((self.up(below), skip), 1))


class ResUNetBackbone(nn.Cell):
    """Encoder + ASPP + decoder, shared by ResUNetASPP and DoDNet (same parameter names in both).

    Returns (bottleneck features after ASPP, decoder features highest resolution first).
    """

    def __init__(self, in_channels: int, features: list, kernel_sizes: list, strides: list,
                 extra_blocks=None, aspp_dilations=ASPP_DILATIONS):
        super().__init__()
        check_topology(features, kernel_sizes, strides)
        self.num_stages = len(features)
        if extra_blocks is None:
            extra_blocks = default_extra_blocks(self.num_stages - 1)
        if len(extra_blocks) != self.num_stages - 1:
            raise ValueError(f"extra_blocks needs one count per downsampling stage ({self.num_stages - 1}), "
                             f"got {list(extra_blocks)}")
        encoder = [ResidualBlock(in_channels, features[0], kernel_sizes[0], strides[0], 3)]
        for s in range(1, self.num_stages):
            blocks = [ResidualBlock(features[s - 1], features[s], kernel_sizes[s], strides[s], 3)]
            blocks += [ResidualBlock(features[s], features[s], kernel_sizes[s], 1, 3) for _ in range(extra_blocks[s - 1])]
            encoder.append(nn.SequentialCell(blocks))
        self.encoder = nn.CellList(encoder)
        self.aspp = ASPP(features[-1], kernel_sizes[-1], aspp_dilations)
        decoder = []
        for s in range(self.num_stages - 2, -1, -1):
            decoder.append(ResDecoderStage(features[s + 1], features[s], kernel_sizes[s], strides[s + 1]))
        self.decoder = nn.CellList(decoder)

    def construct(self, x):
        skips = ()
        for stage in self.encoder:
            x = stage(x)
            skips = skips + (x,)
        bottleneck = self.aspp(x)
        x = bottleneck
        decoded = ()
        num_decoder = self.num_stages - 1
        for i in range(num_decoder):
            x = self.decoder[i](x, skips[num_decoder - 1 - i])
            decoded = (x,) + decoded
        return bottleneck, decoded


class ResUNetASPP(nn.Cell):
    """Same output contract as PlainUNet3D (tuple with deep supervision in training, else a tensor)."""

    def __init__(self, in_channels: int, num_classes: int, features: list, kernel_sizes: list, strides: list,
                 deep_supervision: bool = True, extra_blocks=None, aspp_dilations=ASPP_DILATIONS):
        super().__init__()
        self.backbone = ResUNetBackbone(in_channels, features, kernel_sizes, strides, extra_blocks, aspp_dilations)
        self.num_classes = num_classes
        self.deep_supervision = bool(deep_supervision)
        self.num_heads = len(features) - 1
        self.seg_heads = nn.CellList([head_conv(features[s], num_classes) for s in range(self.num_heads)])

    def set_deep_supervision(self, enabled: bool) -> None:
        self.deep_supervision = bool(enabled)
        forget_compiled_graphs(self)

    def construct(self, x):
        _, decoded = self.backbone(x)
        if self.deep_supervision and self.training:
            outputs = ()
            for i in range(self.num_heads):
                outputs = outputs + (self.seg_heads[i](decoded[i]),)
            return outputs
        return self.seg_heads[0](decoded[0])
