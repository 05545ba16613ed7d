"""nnU-Net's training augmentation as small transforms with one job each.

Every transform is called as ``transform(data, seg, rng) -> (data, seg)`` with data (C, z, y, x) float32,
seg (z, y, x) integer (-1 = outside the volume, ignored) and a ``numpy.random.Generator``; it draws its own
probability and parameters from ``rng``, so a sample is reproducible from one seed, and it skips all work
when it does not fire. Probabilities and ranges are nnU-Net v2's (``nnUNetTrainer.get_training_transforms``).
"""
import math

import numpy as np
from scipy import ndimage

from src.data.resample import ANISOTROPY_THRESHOLD
from src.data.sampler import PAD_DATA, PAD_SEG, crop_with_padding

# Extra input voxels around what a rotated/scaled patch touches: 2 for the cubic spline support, 2 more so
# the spline prefilter's edge effect (decaying as 0.268^n) is small where the patch reads.
SPATIAL_MARGIN = 4
# Zero padding before the prefilter when the patch reads near the region's edge (standalone use).
SPLINE_PAD = 12


def _draw_factor(rng, low, high):
    """nnU-Net's factor draw: with probability 1/2 below 1, else above 1, so shrink and grow are balanced."""
    if low < 1.0 and rng.random() < 0.5:
        return rng.uniform(low, 1.0)
    return rng.uniform(max(low, 1.0), high)


def is_anisotropic_patch(patch_size) -> bool:
    """nnU-Net augments such patches in-plane only (rotation about axis 0, no scaling along it)."""
    return max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD


def rotation_matrix(angles) -> np.ndarray:
    """Rotation by angles[i] (radians) about array axis i, applied for axis 0, then 1, then 2."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        if angle == 0:
            continue
        a, b = [d for d in range(3) if d != axis]
        step = np.eye(3)
        step[a, a] = step[b, b] = math.cos(angle)
        step[a, b], step[b, a] = -math.sin(angle), math.sin(angle)
        matrix = step @ matrix
    return matrix


class SpatialTransform:
    """Rotation and scaling about the patch centre in one interpolation, cut to ``patch_size``.

    ``sample(rng)`` draws the 3x3 matrix taking output offsets from the patch centre to input offsets
    (None when neither rotation nor scaling fires); ``required_input_shape(matrix)`` is the centred input
    region it reads, so the loader cuts exactly that much; ``apply`` interpolates data with order 3
    (border 0) and each label's mask with order 1, a voxel taking the last label whose mask is >= 0.5
    (border -1).
    """

    def __init__(self, patch_size, max_rotation=(math.pi / 6,) * 3, p_rotation=0.2, scale_range=(0.7, 1.4),
                 p_scale=0.2, in_plane_only=False, data_order=3, seg_order=1):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.max_rotation = (math.pi, 0.0, 0.0) if in_plane_only else tuple(max_rotation)
        self.p_rotation = p_rotation
        self.scale_range = scale_range
        self.p_scale = p_scale
        self.in_plane_only = in_plane_only
        self.data_order = data_order
        self.seg_order = seg_order

    def sample(self, rng):
        rotate = rng.random() < self.p_rotation
        scale = rng.random() < self.p_scale
        if not (rotate or scale):
            return None
        matrix = np.eye(3)
        if rotate:
            matrix = rotation_matrix([rng.uniform(-m, m) if m > 0 else 0.0 for m in self.max_rotation])
        if scale:
            factor = _draw_factor(rng, *self.scale_range)
            matrix = matrix @ np.diag((1.0 if self.in_plane_only else factor, factor, factor))
        return matrix

    def required_input_shape(self, matrix) -> tuple:
        patch = np.array(self.patch_size)
        if matrix is None:
            return tuple(self.patch_size)
        half_out = (patch - 1) / 2.0
        half_in = np.abs(matrix) @ half_out + SPATIAL_MARGIN
        grow = np.ceil(np.maximum(half_in - half_out, 0)).astype(int)
        return tuple(int(v) for v in patch + 2 * grow)

    def __call__(self, data, seg, rng):
        return self.apply(data, seg, self.sample(rng))

    def apply(self, data, seg, matrix):
        """``data``/``seg`` are a region centred on the patch centre, at least the patch size when matrix is None."""
        in_shape = np.array(seg.shape)
        patch = np.array(self.patch_size)
        if matrix is None:
            lo = (in_shape - patch) // 2
            if np.any(lo < 0):
                raise ValueError(f"region {tuple(in_shape)} is smaller than the patch {self.patch_size}")
            box = tuple(slice(a, a + p) for a, p in zip(lo, patch))
            return data[(slice(None), *box)], seg[box]
        offset = (in_shape - 1) / 2.0 - matrix @ ((patch - 1) / 2.0)
        out_data = np.empty((data.shape[0], *self.patch_size), dtype=np.float32)
        clearance = _clearance(matrix, offset, patch, in_shape)
        for c in range(data.shape[0]):
            _interpolate_channel(np.asarray(data[c], dtype=np.float32), matrix, offset, self.data_order,
                                 clearance < SPATIAL_MARGIN - 0.5, out_data[c])
        return out_data, _transform_labels(seg, matrix, offset, self.patch_size, self.seg_order, clearance < 0)


def _interpolate_channel(channel, matrix, offset, order, near_edge, out):
    """Spline interpolation with zeros beyond the region. Near the region's edge the region is zero-padded
    before the spline prefilter (as scipy does for mode 'grid-constant'), so grid values come back exactly;
    a region cut with SPATIAL_MARGIN to spare skips that copy."""
    if order > 1:
        if near_edge:
            channel = np.pad(channel, SPLINE_PAD)
            offset = offset + SPLINE_PAD
        channel = ndimage.spline_filter(channel, order, output=np.float32, mode="mirror")
    ndimage.affine_transform(channel, matrix, offset, output_shape=out.shape, output=out, order=order,
                             mode="grid-constant", cval=PAD_DATA, prefilter=False)


def _clearance(matrix, offset, patch, in_shape) -> float:
    """Smallest distance (voxels) from the input points the patch reads to the region's edge; < 0 outside."""
    corners = np.array(np.meshgrid(*[(0, p - 1) for p in patch], indexing="ij")).reshape(3, -1)
    mapped = matrix @ corners + offset[:, None]
    return float(min(mapped.min(), ((in_shape - 1)[:, None] - mapped).min()))


def _transform_labels(seg, matrix, offset, out_shape, order, reaches_border):
    seg = np.asarray(seg)
    if order == 0:
        return ndimage.affine_transform(seg, matrix, offset, output_shape=out_shape, order=0, mode="grid-constant",
                                        cval=PAD_SEG)
    out = np.zeros(out_shape, dtype=seg.dtype)
    lowest = min(int(seg.min()), PAD_SEG) if reaches_border else int(seg.min())
    weights = np.empty(out_shape, dtype=np.float32)
    # Background first would only write 0 onto the zeros, so it is skipped when nothing lies below it.
    for label in range(1 if lowest == 0 else lowest, int(seg.max()) + 1):
        mask = seg == label
        outside = 1.0 if label == PAD_SEG else 0.0
        if not mask.any() and not (reaches_border and outside):
            continue
        ndimage.affine_transform(mask.view(np.uint8), matrix, offset, output_shape=out_shape, output=weights,
                                 order=order, mode="grid-constant", cval=outside)
        out[weights >= 0.5] = label
    return out


class AddGaussianNoise:
    """Zero-mean Gaussian noise with std ~ U(std_range), p 0.1.

    nnU-Net's setting is named noise_variance=(0, 0.1), but batchgenerators passes the drawn number to
    np.random.normal as its scale, so it acts as the standard deviation; that behaviour is kept.
    """

    def __init__(self, p=0.1, std_range=(0.0, 0.1)):
        self.p, self.std_range = p, std_range

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        std = np.float32(rng.uniform(*self.std_range))
        return data + rng.standard_normal(data.shape, dtype=np.float32) * std, seg


class GaussianBlur:
    """Blur each channel with p_per_channel, sigma ~ U(sigma_range) per channel; p 0.2 per sample."""

    def __init__(self, p=0.2, p_per_channel=0.5, sigma_range=(0.5, 1.0)):
        self.p, self.p_per_channel, self.sigma_range = p, p_per_channel, sigma_range

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        out = None
        for c in range(data.shape[0]):
            if rng.random() < self.p_per_channel:
                out = np.array(data, dtype=np.float32) if out is None else out
                out[c] = ndimage.gaussian_filter(data[c], rng.uniform(*self.sigma_range), output=np.float32)
        return (data if out is None else out), seg


class ScaleBrightness:
    """Multiply each channel by U(multiplier_range), p 0.15."""

    def __init__(self, p=0.15, multiplier_range=(0.75, 1.25)):
        self.p, self.multiplier_range = p, multiplier_range

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        factors = rng.uniform(*self.multiplier_range, size=data.shape[0]).astype(np.float32)
        return data * factors.reshape(-1, 1, 1, 1), seg


class ScaleContrast:
    """Stretch each channel about its mean by a factor in contrast_range, clipped back to its range; p 0.15."""

    def __init__(self, p=0.15, contrast_range=(0.75, 1.25), preserve_range=True):
        self.p, self.contrast_range, self.preserve_range = p, contrast_range, preserve_range

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        out = np.empty_like(data, dtype=np.float32)
        for c in range(data.shape[0]):
            factor = np.float32(_draw_factor(rng, *self.contrast_range))
            channel = data[c]
            mean = np.float32(channel.mean())
            out[c] = (channel - mean) * factor + mean
            if self.preserve_range:
                np.clip(out[c], channel.min(), channel.max(), out=out[c])
        return out, seg


class SimulateLowResolution:
    """Per channel (p_per_channel), shrink by zoom ~ U(zoom_range) with nearest neighbour and grow back
    with cubic splines; axes in ``ignore_axes`` keep full resolution; p 0.25 per sample."""

    def __init__(self, p=0.25, p_per_channel=0.5, zoom_range=(0.5, 1.0), ignore_axes=()):
        self.p, self.p_per_channel, self.zoom_range = p, p_per_channel, zoom_range
        self.ignore_axes = tuple(ignore_axes)

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        out = None
        shape = data.shape[1:]
        for c in range(data.shape[0]):
            if rng.random() >= self.p_per_channel:
                continue
            zoom = rng.uniform(*self.zoom_range)
            small = [s if axis in self.ignore_axes else max(int(round(s * zoom)), 1) for axis, s in enumerate(shape)]
            out = np.array(data, dtype=np.float32) if out is None else out
            out[c] = resize_cubic(resize_nearest(data[c], small), shape)
        return (data if out is None else out), seg


def _source_positions(n_in, n_out):
    """Input coordinates of output voxel centres when n_in voxels are resized to n_out (edges aligned)."""
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def resize_nearest(volume, shape):
    index = [np.clip(np.floor(_source_positions(n_in, n_out) + 0.5).astype(np.intp), 0, n_in - 1)
             for n_in, n_out in zip(volume.shape, shape)]
    return volume[np.ix_(*index)]


def resize_cubic(volume, shape):
    """Cubic B-spline resize, one axis at a time (4 taps per axis, edge values repeated beyond the border)."""
    pad = 12
    out = np.asarray(volume, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        widths = [(pad, pad) if a == axis else (0, 0) for a in range(3)]
        coeffs = ndimage.spline_filter1d(np.pad(out, widths, mode="edge"), 3, axis=axis, output=np.float32,
                                         mode="mirror")
        pos = _source_positions(n_in, n_out)
        base = np.floor(pos).astype(np.intp)
        t = (pos - base).astype(np.float32)
        weights = ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6, (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6,
                   t ** 3 / 6)
        view = [1, 1, 1]
        view[axis] = n_out
        result = None
        for k, w in enumerate(weights):
            term = np.take(coeffs, base + (k - 1) + pad, axis=axis) * w.reshape(view)
            result = term if result is None else result + term
        out = result
    return out


class GammaCorrection:
    """Per channel, x -> x^gamma on the range-normalized intensities (optionally of the inverted image),
    gamma drawn from gamma_range (half the time below 1), mean and std restored; p 0.3 (0.1 inverted)."""

    def __init__(self, p=0.3, gamma_range=(0.7, 1.5), invert=False, retain_stats=True):
        self.p, self.gamma_range, self.invert, self.retain_stats = p, gamma_range, invert, retain_stats

    def __call__(self, data, seg, rng):
        if rng.random() >= self.p:
            return data, seg
        sign = np.float32(-1.0 if self.invert else 1.0)
        out = np.empty_like(data, dtype=np.float32)
        for c in range(data.shape[0]):
            channel = data[c] * sign
            mean, std = channel.mean(), channel.std()
            gamma = _draw_factor(rng, *self.gamma_range)
            low = channel.min()
            span = np.float32(channel.max() - low + 1e-7)
            result = np.power((channel - low) / span, np.float32(gamma)) * span + low
            if self.retain_stats:
                result = (result - result.mean()) * np.float32(std / (result.std() + 1e-8)) + np.float32(mean)
            out[c] = result * sign
        return out, seg


class MirrorAxes:
    """Flip data and seg together along each of ``axes`` with probability p_per_axis."""

    def __init__(self, axes=(0, 1, 2), p_per_axis=0.5):
        self.axes, self.p_per_axis = tuple(axes), p_per_axis

    def __call__(self, data, seg, rng):
        flips = [axis for axis in self.axes if rng.random() < self.p_per_axis]
        if flips:
            data = np.flip(data, axis=[a + 1 for a in flips])
            seg = np.flip(seg, axis=flips)
        return data, seg


class IgnoreToBackground:
    """Set the ignore label -1 (border padding, outside the body mask) to background, as nnU-Net does."""

    def __call__(self, data, seg, rng):
        return data, np.where(seg == PAD_SEG, 0, seg).astype(seg.dtype, copy=False)


class TrainTransforms:
    """The spatial transform, then the others in order. ``augment_region(cut, rng)`` asks ``cut(shape)``
    for the centred input region the drawn spatial transform needs, so the loader reads no more."""

    def __init__(self, spatial: SpatialTransform, others):
        self.spatial = spatial
        self.others = list(others)

    def augment_region(self, cut, rng):
        matrix = self.spatial.sample(rng)
        data, seg = cut(self.spatial.required_input_shape(matrix))
        data, seg = self.spatial.apply(data, seg, matrix)
        for transform in self.others:
            data, seg = transform(data, seg, rng)
        return data, seg

    def __call__(self, data, seg, rng):
        """Augment a region centred on the patch (at least the patch size; larger avoids border padding)."""
        return self.augment_region(lambda shape: _centre_crop_or_pad(data, seg, shape), rng)


def _centre_crop_or_pad(data, seg, shape):
    box = [((have - want) // 2, (have - want) // 2 + want) for have, want in zip(seg.shape, shape)]
    return crop_with_padding(data, box, PAD_DATA), crop_with_padding(seg, box, PAD_SEG)


def build_train_transforms(patch_size, in_plane_only=None) -> TrainTransforms:
    """nnU-Net's training augmentation for ``patch_size``; in-plane only for very anisotropic patches."""
    if in_plane_only is None:
        in_plane_only = is_anisotropic_patch(patch_size)
    return TrainTransforms(
        SpatialTransform(patch_size, in_plane_only=in_plane_only),
        [AddGaussianNoise(), GaussianBlur(), ScaleBrightness(), ScaleContrast(),
         SimulateLowResolution(ignore_axes=(0,) if in_plane_only else ()),
         GammaCorrection(p=0.1, invert=True), GammaCorrection(p=0.3, invert=False),
         MirrorAxes(), IgnoreToBackground()])


def deep_supervision_strides(stage_strides, deep_supervision=True) -> list:
    """Target scales, highest resolution first: the cumulative strides of every decoder stage (one per
    stage but the bottleneck), or only full resolution without deep supervision."""
    cumulative, scales = np.ones(3, dtype=int), []
    for stride in stage_strides[:-1]:
        cumulative = cumulative * np.asarray(stride, dtype=int)
        scales.append(tuple(int(s) for s in cumulative))
    return scales if deep_supervision else scales[:1]


def downsample_seg_for_deep_supervision(seg, ds_strides) -> list:
    """Nearest-neighbour targets per scale for seg (..., z, y, x): the voxel nearest each coarse voxel's
    centre, i.e. every s-th voxel starting at s // 2."""
    return [np.ascontiguousarray(seg[(Ellipsis, *(slice(s // 2, None, s) for s in stride))])
            for stride in ds_strides]
