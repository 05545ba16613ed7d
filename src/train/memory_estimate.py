"""How many samples one forward/backward may hold on a CPU: the training memory estimate behind
``micro_batch_size: auto``.

A pure function of (plan, config, bytes available); nothing here reads the machine. The estimate of the
training process's peak (with its data-loader workers), for a forward over ``m`` samples, is

    BASE + BYTES_PER_PARAMETER x parameters + m x BYTES_PER_FEATURE_VOXEL x feature voxels of one sample

- *feature voxels*: the channels x voxels of every tensor the network keeps for its backward pass, at
  the plan's patch: each conv unit (conv + norm + activation) its output (the fused norm's backward works
  from it, so the convolution's own output is freed), each concatenation, residual sum, upsampling or pooling
  output 1 map, each segmentation head its classes (the architecture of each network of ``src/models``
  written out per stage);
- *parameters*: counted the same way (convolution weights, norm affines, biases); per parameter the weights,
  their gradients, the accumulated gradients of micro-batching, the momentum and the temporaries of
  clipping, weight decay and the update;
- *BASE*: the MindSpore runtime, compiled graphs and kernels, the data-loader workers (which read only their
  patches of the memory-mapped cases).

Calibration: the full-size rehearsal (``python -m benchmarks.rehearsal --config C --steps preprocess train``,
docs/PERFORMANCE.md "Every shipped config trains on a 24 GB CPU machine"; float32, two synthetic 100-slice
cases) measured four peaks of the training process tree on a 23 GiB machine: ``kits19_bdci`` (plain U-Net,
80 x 160 x 160, both samples in one forward) 15.15 GB, ``kits21_nnunet`` (the same network at 128^3, one
sample per forward) 11.13 GB, ``kits21_transfer`` (res_unet_aspp, 128^3, 138 M parameters) 20.51 GB and
``mots_dodnet`` (DoDNet, 64 x 192 x 192) 21.61 GB, one sample per forward. The three constants are fitted to
them (each peak within 0.5 GB). The residual networks' many parameters are what needs the large
per-parameter figure: the plain U-Nets alone would fit 16 bytes a parameter.
"""
from dataclasses import dataclass
from math import prod

from src.errors import UserError

BASE_BYTES = 3.6e9
BYTES_PER_PARAMETER = 48
BYTES_PER_FEATURE_VOXEL = 7.9
# the largest share of the available memory the estimate may take
MARGIN = 0.9
GB = 1e9

# maps a conv unit (conv + fused norm and activation) keeps for the backward: its output
CONV_MAPS = 1
# residual encoder blocks per downsampling stage (src/models/res_unet_aspp.py default_extra_blocks)
SEED_EXTRA_BLOCKS = (2, 3, 5, 2)
ASPP_BRANCHES = 4
# DoDNet: the controller maps (bottleneck features, task one-hot) to the 162 dynamic head parameters
DODNET_TASKS = 7
DODNET_HEAD_PARAMS = 162


@dataclass(frozen=True)
class Estimate:
    parameters: int
    feature_voxels: int  # per sample
    fixed_bytes: float  # everything but the activations
    sample_bytes: float  # the activations of one sample

    def bytes_for(self, samples: int) -> float:
        return self.fixed_bytes + samples * self.sample_bytes


@dataclass(frozen=True)
class MicroBatchChoice:
    micro_batch_size: int
    line: str  # the training log's line


def _extra_blocks(downsamplings: int) -> list:
    if downsamplings <= len(SEED_EXTRA_BLOCKS):
        return list(SEED_EXTRA_BLOCKS[:downsamplings - 1]) + [SEED_EXTRA_BLOCKS[-1]]
    return [2, 3] + [5] * (downsamplings - 3) + [2]


def _stage_voxels(plan) -> list:
    size = [int(p) for p in plan.patch_size]
    voxels = []
    for stride in plan.strides:
        size = [-(-s // int(st)) for s, st in zip(size, stride)]
        voxels.append(prod(size))
    return voxels


def _plain_unet(plan, cfg, heads: int):
    """(feature voxels, parameters) of src/models/unet3d.py."""
    features, voxels = plan.features, _stage_voxels(plan)
    kernels = [prod(k) for k in plan.conv_kernel_sizes]
    maps, params = 0, 0
    channels = plan.num_channels
    for s, (f, v, k) in enumerate(zip(features, voxels, kernels)):
        pools = cfg.downsample == "maxpool" and s > 0
        maps += 2 * CONV_MAPS * f * v + (channels * v if pools else 0)
        params += k * (channels * f + f * f) + 4 * f
        channels = f
    for s in range(len(features) - 1):
        f, v, k = features[s], voxels[s], kernels[s]
        maps += (f + 2 * f) * v + 2 * CONV_MAPS * f * v  # upsampled, concatenated, two conv units
        params += prod(plan.strides[s + 1]) * features[s + 1] * f + k * (2 * f * f + f * f) + 4 * f
        params += f * plan.num_classes + plan.num_classes
        if s < heads:
            maps += plan.num_classes * v
    return maps, params


def _residual_unet(plan, heads: int, outputs: int):
    """(feature voxels, parameters) of the ResUNetBackbone (src/models/res_unet_aspp.py) and its heads."""
    features, voxels = plan.features, _stage_voxels(plan)
    kernels = [prod(k) for k in plan.conv_kernel_sizes]
    blocks = [1] + [1 + n for n in _extra_blocks(len(features) - 1)]
    maps, params = 0, 0
    channels = plan.num_channels
    for f, v, k, count in zip(features, voxels, kernels, blocks):
        # each block: 3 conv units and the residual sum; the first one a 1x1x1 projection too
        maps += count * (3 * CONV_MAPS + 1) * f * v + CONV_MAPS * f * v
        params += k * (channels * f + 2 * f * f) + channels * f + 8 * f
        params += (count - 1) * (3 * k * f * f + 6 * f)
        channels = f
    f, v, k = features[-1], voxels[-1], kernels[-1]
    maps += (ASPP_BRANCHES * CONV_MAPS + (ASPP_BRANCHES + 1) + 2 + CONV_MAPS) * f * v
    params += f * f + (ASPP_BRANCHES - 1) * k * f * f + f * f + (ASPP_BRANCHES + 1) * f * f + 11 * f
    for s in range(len(features) - 1):
        f, v, k = features[s], voxels[s], kernels[s]
        # upsampled, concatenated (2f), two conv units, a 1x1x1 projection, the residual sum
        maps += (1 + 2 + 3 * CONV_MAPS + 1) * f * v
        params += prod(plan.strides[s + 1]) * features[s + 1] * f + k * (2 * f * f + f * f) + 2 * f * f + 6 * f
        if s < heads:
            maps += outputs * v
            params += f * outputs + outputs
    return maps, params


def feature_voxels_and_parameters(plan, cfg) -> tuple:
    """(channels x voxels kept per sample, parameters) of ``cfg.network`` at the plan's patch."""
    deep = cfg.variant.deep_supervision and cfg.deep_supervision
    heads = len(plan.features) - 1 if deep else 1
    if cfg.network == "plain_unet":
        return _plain_unet(plan, cfg, heads)
    if cfg.network == "res_unet_aspp":
        return _residual_unet(plan, heads, plan.num_classes)
    # DoDNet: the backbone, an 8-channel head and three dynamic 1x1x1 convs at full resolution
    maps, params = _residual_unet(plan, 0, 0)
    full = _stage_voxels(plan)[0]
    tasks = len(plan.tasks) if plan.tasks else DODNET_TASKS
    head = 8 * plan.features[0] + 8 + (plan.features[-1] + tasks + 1) * DODNET_HEAD_PARAMS
    return maps + (8 * 3 + 2) * full, params + head


def estimate(plan, cfg) -> Estimate:
    maps, params = feature_voxels_and_parameters(plan, cfg)
    fixed = BASE_BYTES + BYTES_PER_PARAMETER * params
    return Estimate(int(params), int(maps), float(fixed), float(BYTES_PER_FEATURE_VOXEL * maps))


def choose_micro_batch_size(plan, cfg, device: str, available_bytes) -> MicroBatchChoice:
    """``cfg.micro_batch_size`` resolved: an integer as given; ``auto``: the whole batch on Ascend and GPU
    (and when the available memory is unknown), on CPU the largest divisor of ``batch_size`` whose
    estimate fits ``MARGIN`` of ``available_bytes``, else 1 with a warning while one sample's estimate is within
    ``available_bytes``; beyond it a ``UserError`` (one line: a run that the kernel's OOM killer would stop after
    minutes of compiling). A size given explicitly is taken as it is."""
    batch = int(cfg.batch_size)
    if cfg.micro_batch_size != "auto":
        size = int(cfg.micro_batch_size)
        return MicroBatchChoice(size, _line(batch, size, f"micro_batch_size {size}"))
    if device != "CPU":
        return MicroBatchChoice(batch, _line(batch, batch, f"micro_batch_size auto on {device}"))
    if not available_bytes:
        return MicroBatchChoice(batch, _line(batch, batch, "micro_batch_size auto: available memory unknown"))
    est = estimate(plan, cfg)
    budget = MARGIN * float(available_bytes)
    why = f"estimated {est.bytes_for(batch) / GB:.1f} GB for the whole batch, {available_bytes / GB:.1f} GB available"
    fitting = [m for m in range(batch, 0, -1) if batch % m == 0 and est.bytes_for(m) <= budget]
    if fitting:
        size = fitting[0]
        if size < batch:
            why += f", {est.bytes_for(size) / GB:.1f} GB as micro-batches"
        return MicroBatchChoice(size, _line(batch, size, why))
    one = est.bytes_for(1)
    if one > available_bytes:
        patch = " x ".join(str(int(p)) for p in plan.patch_size)
        raise UserError(f"training {cfg.network} at patch {patch} on CPU needs about {one / GB:.1f} GB even with one "
                        f"sample per forward (estimate), more than the {available_bytes / GB:.1f} GB this process may "
                        f"use: train with a smaller --patch_size (the {est.sample_bytes / GB:.1f} GB of activations "
                        f"scale with its voxels), on a machine with more memory or on Ascend, or force it with "
                        f"--micro_batch_size 1")
    line = _line(batch, 1, f"{why}; warning: even 1 sample is estimated at {one / GB:.1f} GB, "
                           f"more than {MARGIN:.0%} of the available memory: training may run out of memory "
                           f"(a smaller --patch_size needs less)")
    return MicroBatchChoice(1, line)


def _line(batch: int, size: int, why: str) -> str:
    if size == batch:
        return f"batch {batch} as one forward ({why})"
    return f"batch {batch} as {batch // size} micro-batches of {size} ({why})"
