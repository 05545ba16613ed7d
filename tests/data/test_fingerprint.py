import nibabel as nib
import numpy as np
import pytest

from src.data.fingerprint import (FOREGROUND_SAMPLE_SEED, analyze_case, bounding_box, compute_fingerprint,
                                  crop_to_nonzero, intensity_statistics, labels_present, memory_order_axes,
                                  nonzero_mask)
from src.data.layouts import find_cases
from src.errors import UserError
from tests.data.test_io import phantom, write_kits_case, write_nifti


def test_crop_fills_holes_and_marks_outside_background_ignored():
    image = np.zeros((1, 16, 16, 16), np.float32)
    image[0, 3:12, 4:13, 2:10] = 5.0
    image[0, 6:8, 7:9, 5:7] = 0.0  # an enclosed hole (e.g. air inside the body) stays inside the mask
    image[0, 3, 4, 2] = 0.0  # a corner voxel of the box is outside the mask
    seg = np.zeros((16, 16, 16), np.int16)
    seg[6:8, 7:9, 5:7] = 2  # label inside the hole
    seg[3, 4, 2] = 1  # foreground outside the mask is kept
    seg[3, 4, 3] = 0
    cropped, cropped_seg, bbox = crop_to_nonzero(image, seg)
    assert bbox == [[3, 12], [4, 13], [2, 10]]
    assert cropped.shape == (1, 9, 9, 8) and cropped_seg.shape == (9, 9, 8)
    assert cropped_seg[0, 0, 0] == 1
    assert (cropped_seg[3:5, 3:5, 3:5] == 2).all()
    assert (cropped_seg == -1).sum() == 0  # only the one corner voxel is outside, and it is foreground
    image[0, 3, 4, 2] = 0.0
    seg[3, 4, 2] = 0
    _, cropped_seg, _ = crop_to_nonzero(image, seg)
    assert cropped_seg[0, 0, 0] == -1 and (cropped_seg == -1).sum() == 1
    _, no_seg, _ = crop_to_nonzero(image)
    assert no_seg is None


def _body_with_holes(shape=(18, 20, 22), seed=0):
    """(image (1, ...), seg): a zero border, an enclosed zero cavity, scattered zero voxels, labels."""
    image, label = phantom(shape, seed)
    image = image.astype(np.float32)
    image[6:9, 7:10, 8:12] = 0.0  # enclosed: filled
    image[2, 5:9, 6:9] = 0.0  # open to the zero border: stays outside
    rng = np.random.RandomState(seed)
    image[rng.rand(*shape) < 0.02] = 0.0
    return image[None], label.astype(np.int16)


@pytest.mark.parametrize("image_order, seg_order", [("F", "F"), ("F", "C"), ("C", "F")])
def test_crop_does_not_depend_on_memory_layout(image_order, seg_order):
    image, seg = _body_with_holes()
    expected_image, expected_seg, expected_bbox = crop_to_nonzero(image, seg)
    assert (expected_seg == -1).any() and expected_bbox != [[0, 18], [0, 20], [0, 22]]
    image_in = np.asarray(image[0], order=image_order)[None]
    seg_in = np.asarray(seg, order=seg_order)
    assert np.array_equal(nonzero_mask(image_in), nonzero_mask(image))
    cropped, cropped_seg, bbox = crop_to_nonzero(image_in, seg_in)
    assert bbox == expected_bbox
    assert np.array_equal(cropped, expected_image) and np.array_equal(cropped_seg, expected_seg)
    assert cropped_seg.flags.f_contiguous == (seg_order == "F")  # a copy in the seg's own layout


def test_memory_order_axes():
    volume = np.zeros((3, 4, 5), np.int16)
    assert memory_order_axes(volume) == (0, 1, 2)
    assert memory_order_axes(np.asfortranarray(volume)) == (2, 1, 0)
    assert memory_order_axes(volume.transpose(1, 2, 0)) == (2, 0, 1)
    assert memory_order_axes(volume[:, ::-1]) == (0, 1, 2)


def test_labels_present_counts_every_value():
    seg = np.zeros((4, 5, 6), np.int16, order="F")
    seg[1, 2, 3], seg[3, 4, 5] = 7, 2
    assert labels_present(seg) == [0, 2, 7]
    assert labels_present(np.full((2, 2, 2), 3, np.int16)) == [3]


def test_foreground_samples_follow_file_order(tmp_path):
    """nnU-Net v2 draws its samples from the foreground voxels in file order with seed 1234."""
    rng = np.random.RandomState(3)
    image = np.zeros((16, 20, 24), np.int16)
    image[2:-2, 2:-2, 2:-2] = rng.randint(1, 1000, size=(12, 16, 20))
    label = np.zeros(image.shape, np.uint8)
    label[4:12, 5:15, 6:18] = 1
    label[6:9, 7:10, 8:12] = 2
    write_nifti(tmp_path / "case_00000" / "imaging.nii.gz", image, spacing=(3.0, 0.8, 0.8))
    write_nifti(tmp_path / "case_00000" / "segmentation.nii.gz", label, spacing=(3.0, 0.8, 0.8))
    foreground_in_file_order = image.ravel(order="F")[label.ravel(order="F") > 0].astype(np.float32)
    expected = np.random.RandomState(FOREGROUND_SAMPLE_SEED).choice(foreground_in_file_order, 50)
    in_c_order = np.random.RandomState(FOREGROUND_SAMPLE_SEED).choice(image[label > 0], 50)
    assert not np.array_equal(expected, in_c_order)  # the order matters for this volume
    result = analyze_case(find_cases(tmp_path)[0], 50)
    assert np.array_equal(result["foreground_samples"], expected)
    assert result["labels_present"] == [0, 1, 2]


def test_bounding_box_of_empty_mask_is_whole_volume():
    assert bounding_box(np.zeros((4, 5, 6), bool)) == [[0, 4], [0, 5], [0, 6]]


def test_intensity_statistics_from_unclipped_pool():
    pool = np.concatenate([np.arange(1000, dtype=np.float32), [1e6]])
    stats = intensity_statistics(pool)
    assert stats["mean"] == pytest.approx(pool.mean())  # the outlier counts: the pool is not clipped
    assert stats["std"] == pytest.approx(pool.std())
    assert stats["p005"] == pytest.approx(np.percentile(pool, 0.5))
    assert stats["p995"] == pytest.approx(np.percentile(pool, 99.5))
    assert stats["max"] == 1e6


def _dataset(tmp_path, count=3):
    for i in range(count):
        write_kits_case(tmp_path, f"case_{i:05d}", shape=(16 + 2 * i, 20, 24), seed=i,
                        spacing=(3.0 + i, 0.8, 0.8))
    return find_cases(tmp_path)


def test_fingerprint_shapes_spacings_and_foreground_statistics(tmp_path):
    cases = _dataset(tmp_path)
    fingerprint = compute_fingerprint(cases, workers=1, pool_size=30_000)
    assert fingerprint["case_ids"] == ["case_00000", "case_00001", "case_00002"]
    assert np.allclose(fingerprint["spacings"], [[3.0, 0.8, 0.8], [4.0, 0.8, 0.8], [5.0, 0.8, 0.8]])
    assert fingerprint["shapes_before_crop"] == [[16, 20, 24], [18, 20, 24], [20, 20, 24]]
    # phantom(): the body is the volume minus a 2-voxel zero border
    assert fingerprint["shapes_after_crop"] == [[12, 16, 20], [14, 16, 20], [16, 16, 20]]
    assert fingerprint["labels_present"] == [[0, 1, 2]] * 3
    assert fingerprint["failed"] == {}
    # phantom foreground: kidney 150 HU (6*8*8 - 2*4*4 voxels), tumour 60 HU (2*4*4 voxels)
    kidney, tumour = 6 * 8 * 8 - 32, 32
    expected_mean = (150 * kidney + 60 * tumour) / (kidney + tumour)
    stats = fingerprint["intensity"]
    assert stats["mean"] == pytest.approx(expected_mean, abs=1.5)
    assert stats["p005"] == 60 and stats["p995"] == 150
    assert stats["min"] == 60 and stats["max"] == 150
    again = compute_fingerprint(cases, workers=1, pool_size=30_000)
    assert again["intensity"] == stats


def test_fingerprint_in_worker_processes_matches_serial(tmp_path):
    cases = _dataset(tmp_path)
    serial = compute_fingerprint(cases, workers=1, pool_size=3000)
    parallel = compute_fingerprint(cases, workers=2, pool_size=3000)
    assert parallel == serial


def test_fingerprint_failures_name_the_case(tmp_path):
    cases = _dataset(tmp_path)
    broken = cases[1].image
    payload = broken.read_bytes()
    broken.write_bytes(payload[: len(payload) // 3])
    with pytest.raises(UserError, match="case_00001"):
        compute_fingerprint(cases, workers=1, pool_size=3000)
    collected = compute_fingerprint(cases, workers=1, pool_size=3000, collect_failures=True)
    assert collected["case_ids"] == ["case_00000", "case_00002"]
    assert list(collected["failed"]) == ["case_00001"]
    assert "imaging.nii.gz" in collected["failed"]["case_00001"]


def test_fingerprint_rejects_unknown_labels_missing_labels_and_no_foreground(tmp_path):
    cases = _dataset(tmp_path, count=2)
    with pytest.raises(UserError, match=r"case_00001.*\[2\]"):
        compute_fingerprint(cases[1:], workers=1, pool_size=100, label_values=[0, 1])
    with pytest.raises(UserError, match="no label"):
        compute_fingerprint([cases[0].__class__("x", cases[0].image, None)], workers=1, pool_size=100)
    write_nifti(cases[0].label, np.zeros((16, 20, 24), np.uint8), nib.load(cases[0].image).affine)
    with pytest.raises(UserError, match="no foreground"):
        compute_fingerprint(cases[:1], workers=1, pool_size=100)
