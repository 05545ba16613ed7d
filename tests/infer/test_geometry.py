import nibabel as nib
import numpy as np
import pytest

from src.data.io import load_image
from src.data.plan import Plan
from src.data.preprocess import preprocess_image_for_inference
from src.data.resample import needs_separate_z, resample_segmentation
from src.infer.geometry import (argmax_resampled, back_separate_z_axis, paste_into_crop_box,
                                probabilities_to_original, save_prediction)
from tests.data.preprocessed_fixture import make_plan

SPACING = (3.0, 0.78125, 0.78125)
KITS19_AFFINE = np.array([[0, 0, -SPACING[2], 0], [0, -SPACING[1], 0, 0], [-SPACING[0], 0, 0, 0], [0, 0, 0, 1]])


def write_kits19_case(folder, shape=(14, 40, 44)):
    """A KiTS19-style imaging.nii.gz: zero padding on some borders (cropped away), a body, two organs."""
    image = np.full(shape, -1000.0, np.float32)
    image[:, 8:36, 6:40] = 30.0
    label = np.zeros(shape, np.uint8)
    label[3:11, 12:24, 8:20] = 1
    label[5:9, 15:21, 11:17] = 2
    label[4:12, 14:30, 26:36] = 1
    image[label == 1] = 150.0
    image[label == 2] = 80.0
    image[0] = 0.0                     # an all-zero first slice and last columns: outside the nonzero box
    image[:, :, -3:] = 0.0
    label[0] = 0
    label[:, :, -3:] = 0
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(image, KITS19_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, folder / "imaging.nii.gz")
    return folder / "imaging.nii.gz", label


def plan_for(target_spacing):
    return Plan.from_json(dict(make_plan([]), normalization="ct", target_spacing=list(target_spacing),
                               intensity={"mean": 100.0, "std": 50.0, "p005": -100.0, "p995": 300.0}))


def one_hot(label, num_classes):
    return np.stack([(label == k).astype(np.float32) for k in range(num_classes)])


def test_paste_into_crop_box():
    props = {"shape_before_crop": [4, 5, 6], "crop_bbox": [[1, 3], [0, 5], [2, 4]]}
    cropped = np.full((2, 5, 2), 7, np.uint8)
    full = paste_into_crop_box(cropped, props)
    assert full.shape == (4, 5, 6) and full.sum() == 7 * 20
    assert (full[1:3, :, 2:4] == 7).all()


def test_argmax_resampled_matches_full_argmax():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 6, 10, 12)).astype(np.float32)
    label = argmax_resampled(probs, (12, 15, 9), separate_z_axis=0)
    from src.data.resample import resample_probabilities
    reference = np.argmax(resample_probabilities(probs, (12, 15, 9), 0), axis=0)
    np.testing.assert_array_equal(label, reference)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(argmax_resampled(probs, probs.shape[1:], None), np.argmax(probs, axis=0))


def test_round_trip_at_the_original_spacing_is_exact(tmp_path):
    path, label = write_kits19_case(tmp_path / "case_00000")
    image, meta = load_image(path)
    data, props = preprocess_image_for_inference(image, meta, plan_for(SPACING))
    assert props["crop_bbox"] == [[1, 14], [0, 40], [0, 41]]
    cropped = label[tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])]
    assert data.shape[1:] == cropped.shape
    restored = probabilities_to_original(one_hot(cropped, 3), props)
    np.testing.assert_array_equal(restored, label)


def test_round_trip_through_a_coarser_spacing(tmp_path):
    path, label = write_kits19_case(tmp_path / "case_00000")
    image, meta = load_image(path)
    target = (3.2, 1.6, 1.6)
    data, props = preprocess_image_for_inference(image, meta, plan_for(target))
    assert back_separate_z_axis(props) == needs_separate_z(target, SPACING) == 0
    box = tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])
    coarse = resample_segmentation(label[box].astype(np.int16), SPACING, data.shape[1:], 0)
    with pytest.raises(ValueError, match="preprocessed"):
        probabilities_to_original(one_hot(coarse, 3)[:, :-1], props)
    restored = probabilities_to_original(one_hot(coarse, 3), props)
    assert restored.shape == label.shape
    assert not restored[0].any() and not restored[:, :, -3:].any()     # outside the crop box
    for k in (1, 2):
        overlap = np.count_nonzero((restored == k) & (label == k))
        dice = 2 * overlap / (np.count_nonzero(restored == k) + np.count_nonzero(label == k))
        assert dice > 0.75, (k, dice)


def test_saved_prediction_keeps_kits19_affine_and_header(tmp_path):
    path, label = write_kits19_case(tmp_path / "case_00000")
    image, meta = load_image(path)
    _, props = preprocess_image_for_inference(image, meta, plan_for(SPACING))
    out = save_prediction(label, props, tmp_path / "predictions" / "case_00000.nii.gz")
    source, written = nib.load(path), nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
    np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), label)
