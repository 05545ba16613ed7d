import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from src.data.io import ImageMeta, load_image, load_label, read_geometry, save_label
from src.errors import UserError

# KiTS19 stores (slice, row, col) with every axis negated in the affine.
KITS19_AFFINE = np.array([[0, 0, -0.78125, 0], [0, -0.78125, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])


def write_nifti(path, array, affine=None, spacing=None):
    """Write a NIfTI file (parents created); ``spacing`` builds a diagonal affine."""
    if affine is None:
        affine = np.diag(list(spacing or (1.0, 1.0, 1.0)) + [1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def phantom(shape=(16, 20, 24), seed=0):
    """A CT-like image (zero border, 'body' of HU values) and a label with kidney (1) and tumour (2)."""
    rng = np.random.RandomState(seed)
    image = np.zeros(shape, np.int16)
    body = tuple(slice(2, s - 2) for s in shape)
    image[body] = rng.randint(-200, 300, size=[s - 4 for s in shape])
    image[body][image[body] == 0] = 1  # the body must be nonzero everywhere for exact crop boxes
    label = np.zeros(shape, np.uint8)
    centre = [s // 2 for s in shape]
    label[centre[0] - 3:centre[0] + 3, centre[1] - 4:centre[1] + 4, centre[2] - 4:centre[2] + 4] = 1
    label[centre[0] - 1:centre[0] + 1, centre[1] - 2:centre[1] + 2, centre[2] - 2:centre[2] + 2] = 2
    image[label == 1] = 150
    image[label == 2] = 60
    return image, label


def write_mots_raw(raw, tasks, task_channels=None):
    """A MOTS-layout folder: two phantom cases per task, ``RAW/<id>_<task>/<case>[_seg].nii.gz`` + mots.json."""
    entries = []
    for task_id, task in tasks.items():
        for k in range(2):
            image, label = phantom(seed=k)
            case_id = f"{task}_{k}"
            write_nifti(raw / f"{task_id}_{task}" / f"{case_id}.nii.gz", image)
            write_nifti(raw / f"{task_id}_{task}" / f"{case_id}_seg.nii.gz", label)
            entries.append({"case_id": case_id, "task_id": task_id, "image": f"{task_id}_{task}/{case_id}.nii.gz",
                            "label": f"{task_id}_{task}/{case_id}_seg.nii.gz"})
    index = {"tasks": {str(k): v for k, v in tasks.items()}, "cases": entries}
    if task_channels is not None:
        index["task_channels"] = task_channels
    (raw / "mots.json").write_text(json.dumps(index))


def write_kits_case(root, case_id, shape=(16, 20, 24), seed=0, spacing=(3.0, 0.8, 0.8), label_name=None,
                    with_label=True):
    image, label = phantom(shape, seed)
    affine = np.array([[0, 0, -spacing[2], 0], [0, -spacing[1], 0, 0], [-spacing[0], 0, 0, 0], [0, 0, 0, 1]])
    write_nifti(root / case_id / "imaging.nii.gz", image, affine)
    if with_label:
        write_nifti(root / case_id / (label_name or "segmentation.nii.gz"), label, affine)
    return image, label


# ---------------------------------------------------------------- images


def test_load_image_float32_spacing_in_storage_order(tmp_path):
    image, _ = phantom()
    path = write_nifti(tmp_path / "ct.nii.gz", image, KITS19_AFFINE)
    array, meta = load_image(path)
    assert array.dtype == np.float32 and array.shape == image.shape
    np.testing.assert_array_equal(array, image.astype(np.float32))
    assert meta.spacing == pytest.approx((3.0, 0.78125, 0.78125))
    assert meta.shape == image.shape
    np.testing.assert_allclose(meta.affine, KITS19_AFFINE)
    assert ImageMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta


def test_load_image_applies_scaling(tmp_path):
    stored = np.arange(16 * 16 * 16, dtype=np.int16).reshape(16, 16, 16) % 2000
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    array, _ = load_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(array, stored.astype(np.float32) - 1024)


def test_trailing_singleton_axis_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "four.nii.gz", np.ones((16, 17, 18, 1), np.int16))
    array, meta = load_image(path)
    assert array.shape == (16, 17, 18) and meta.shape == (16, 17, 18)


def test_kits19_affine_and_header_round_trip(tmp_path):
    image, label = phantom()
    source = nib.Nifti1Image(image, KITS19_AFFINE)
    source.header.set_qform(KITS19_AFFINE, code=1)
    source.header.set_sform(KITS19_AFFINE, code=1)
    source.header["descrip"] = b"kits19 style"
    nib.save(source, str(tmp_path / "imaging.nii.gz"))
    _, meta = load_image(tmp_path / "imaging.nii.gz")
    # the meta travels through JSON (case.json) before predictions are written
    meta = ImageMeta.from_json(json.loads(json.dumps(meta.to_json())))
    out = tmp_path / "pred.nii.gz"
    save_label(label, meta, out)

    written = nib.load(str(out))
    original = nib.load(str(tmp_path / "imaging.nii.gz"))
    assert written.header.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), label)
    np.testing.assert_array_equal(written.affine, original.affine)
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    expected_changes = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_min", "cal_max", "vox_offset"}
    for key in original.header.keys():
        if key not in expected_changes:
            assert np.array_equal(written.header[key], original.header[key]), key
    assert written.header.get_zooms() == original.header.get_zooms()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    # loading the written label against the source geometry works
    np.testing.assert_array_equal(load_label(out, meta), label)


def test_save_label_plain_nii_and_overwrite(tmp_path):
    image, label = phantom()
    write_nifti(tmp_path / "ct.nii", image, spacing=(2.0, 1.0, 1.5))
    _, meta = load_image(tmp_path / "ct.nii")
    out = tmp_path / "seg.nii"
    save_label(np.zeros_like(label), meta, out)
    save_label(label, meta, out)
    with open(out, "rb") as handle:
        assert handle.read(2) != b"\x1f\x8b"  # not gzipped
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), label)
    with pytest.raises(ValueError):
        save_label(label[:-1], meta, out)


def test_load_label_checks_shape_and_values(tmp_path):
    image, label = phantom()
    write_nifti(tmp_path / "ct.nii.gz", image)
    _, meta = load_image(tmp_path / "ct.nii.gz")
    write_nifti(tmp_path / "seg.nii.gz", label)
    loaded = load_label(tmp_path / "seg.nii.gz", meta)
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded, label)

    write_nifti(tmp_path / "short.nii.gz", label[:-1])
    with pytest.raises(UserError, match="short.nii.gz.*shape"):
        load_label(tmp_path / "short.nii.gz", meta)
    write_nifti(tmp_path / "neg.nii.gz", label.astype(np.int16) - 1)
    with pytest.raises(UserError, match="outside"):
        load_label(tmp_path / "neg.nii.gz", meta)
    write_nifti(tmp_path / "frac.nii.gz", label.astype(np.float32) * 0.5)
    with pytest.raises(UserError, match="non-integer"):
        load_label(tmp_path / "frac.nii.gz", meta)


@pytest.mark.parametrize("problem", ["missing", "truncated", "garbage", "nan", "inf", "2d", "4d", "directory"])
def test_broken_images_raise_user_error(tmp_path, problem):
    image, _ = phantom()
    path = tmp_path / "ct.nii.gz"
    if problem == "missing":
        pattern = "not found"
    elif problem == "truncated":
        write_nifti(path, image)
        payload = path.read_bytes()
        path.write_bytes(payload[: len(payload) // 2])
        pattern = "cannot read image"
    elif problem == "garbage":
        path.write_bytes(gzip.compress(b"this is not a nifti header" * 40))
        pattern = "cannot read image"
    elif problem in ("nan", "inf"):
        bad = image.astype(np.float32)
        bad[3, 4, 5] = np.nan if problem == "nan" else np.inf
        write_nifti(path, bad)
        pattern = "NaN or infinite"
    elif problem == "2d":
        write_nifti(path, image[0])
        pattern = "3D"
    elif problem == "4d":
        write_nifti(path, np.stack([image, image], axis=-1))
        pattern = "3D"
    else:
        path.mkdir()
        pattern = "not a file"
    with pytest.raises(UserError, match=pattern) as info:
        load_image(path)
    assert "ct.nii.gz" in str(info.value)


# ---------------------------------------------------------------- header geometry

# KiTS-like orientation with the 3.62 mm slices of the observed pixdim-0 file.
SLICE_362 = np.array([[0, 0, -0.8, 10.0], [0, -0.8, 0, -20.0], [-3.62, 0, 0, 30.0], [0, 0, 0, 1]])


def rotated(affine, axis, degrees):
    """``affine`` turned by ``degrees`` about a world ``axis`` (through the world origin)."""
    from scipy.spatial.transform import Rotation
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * np.deg2rad(degrees)).as_matrix()
    return turn @ affine


def flipped(affine, axis, size):
    """The same world grid stored with array ``axis`` (of ``size`` voxels) reversed."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] += out[:3, axis] * (size - 1)
    out[:3, axis] *= -1
    return out


def shifted(affine, millimetres):
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] += millimetres
    return out


def scaled(affine, factor):
    out = np.array(affine, dtype=np.float64)
    out[:3, :3] *= factor
    return out


# Turned 179.9355 degrees: the qform's float32 quaternion alone moves its direction cosines by ~1e-3.
NEAR_HALF_TURN = rotated(np.diag([3.0, 0.8, 0.8, 1.0]), (1, 4, 8), 179.9355)


def write_header_variant(path, data=None, sform=None, qform=None, pixdim=None, fields=None,
                         header_class=nib.Nifti1Header):
    """A NIfTI file holding exactly the stated header: an sform/qform (code 1) only when given, pixdim
    from the given transform unless stated, then raw ``fields``; nibabel fixes nothing when writing."""
    data = np.zeros((4, 5, 6), np.int16) if data is None else data
    image_class = nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image
    image = image_class(data, None)
    header = image.header  # edited in place: a header passed to the constructor would be "fixed" first
    if qform is not None:
        header.set_qform(qform, code=1)
    if sform is not None:
        header.set_sform(sform, code=1)
        if qform is None:
            header["pixdim"][1:4] = np.linalg.norm(np.asarray(sform)[:3, :3], axis=0)
    if pixdim is not None:
        header["pixdim"][1:4] = pixdim
    for field, value in (fields or {}).items():
        header[field] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _with_zero_axis(affine, axis):
    out = np.array(affine, dtype=np.float64)
    out[:3, axis] = 0
    return out


def _with_nearly_parallel_axes(affine):
    out = np.array(affine, dtype=np.float64)
    out[:3, 2] = rotated(out, (1, 0, 0), 2)[:3, 1]  # axis 2 two degrees from axis 1
    return out


BAD_HEADERS = [  # (name, write_header_variant arguments, what the one error line must say)
    ("pixdim 0 under an sform (nibabel reads 1 mm)", dict(sform=SLICE_362, pixdim=(0, 0.8, 0.8)),
     r"invalid voxel spacing: pixdim \(0, 0\.8, 0\.8\) vs sform \(3\.62, 0\.8, 0\.8\) mm"),
    ("negative pixdim under an sform", dict(sform=SLICE_362, pixdim=(-3.62, 0.8, 0.8)),
     r"invalid voxel spacing: pixdim \(-3\.62, 0\.8, 0\.8\) vs sform"),
    ("pixdim 0 under a qform", dict(qform=SLICE_362, pixdim=(0, 0.8, 0.8)),
     r"invalid voxel spacing: pixdim \(0, 0\.8, 0\.8\) vs qform"),
    ("pixdim 0 and no transform", dict(pixdim=(0, 1, 1)),
     r"invalid voxel spacing: pixdim \(0, 1, 1\) and neither an sform nor a qform"),
    ("NaN pixdim and no transform", dict(pixdim=(np.nan, 1, 1)), r"pixdim \(nan, 1, 1\) and neither"),
    ("pixdim disagrees with the sform", dict(sform=SLICE_362, pixdim=(1, 0.8, 0.8)),
     r"inconsistent voxel spacing: pixdim \(1, 0\.8, 0\.8\) mm vs sform \(3\.62, 0\.8, 0\.8\) mm"),
    ("qform spacing 1.5x the sform's", dict(sform=SLICE_362, qform=scaled(SLICE_362, 1.5)),
     r"inconsistent voxel spacing: pixdim \(5\.43, 1\.2, 1\.2\) mm vs sform \(3\.62"),
    ("singular sform: a zero axis", dict(sform=_with_zero_axis(SLICE_362, 2), pixdim=(3.62, 0.8, 0.8)),
     r"singular \(or nearly singular\) sform affine"),
    ("singular sform: nearly parallel axes", dict(sform=_with_nearly_parallel_axes(SLICE_362)),
     r"singular \(or nearly singular\) sform affine"),
    ("NaN in the sform", dict(sform=SLICE_362, fields={"srow_x": [0, 0, -0.8, np.nan]}),
     r"non-finite sform affine"),
    ("infinite qform offset", dict(qform=SLICE_362, fields={"qoffset_y": np.inf}), r"non-finite qform affine"),
    ("qform 40 mm from the sform", dict(sform=SLICE_362, qform=shifted(SLICE_362, 40)),
     r"sform and qform describe different geometries \(sform origin \(10, -20, 30\) mm vs qform \(50, 20, 70\)"),
    ("qform flipped against the sform", dict(sform=SLICE_362, qform=flipped(SLICE_362, 2, 6)),
     r"sform and qform describe different geometries \(sform axis directions .* vs qform"),
    ("qform turned 1 degree from the sform", dict(sform=SLICE_362, qform=rotated(SLICE_362, (0, 0, 1), 1)),
     r"sform and qform describe different geometries \(sform axis directions"),
    ("unknown sform_code", dict(sform=SLICE_362, fields={"sform_code": 7}), r"invalid sform_code 7"),
    ("unknown qform_code", dict(qform=SLICE_362, fields={"qform_code": -1}), r"invalid qform_code -1"),
    ("NIfTI-2 with pixdim 0", dict(sform=SLICE_362, pixdim=(0, 0.8, 0.8), header_class=nib.Nifti2Header),
     r"invalid voxel spacing: pixdim \(0, 0\.8, 0\.8\)"),
]


def _good_meta(tmp_path):
    return load_image(write_header_variant(tmp_path / "good" / "ct.nii.gz", sform=SLICE_362, qform=SLICE_362))[1]


@pytest.mark.parametrize("reader", ["load_image", "read_geometry", "load_label"])
@pytest.mark.parametrize("name, variant, message", BAD_HEADERS, ids=[row[0] for row in BAD_HEADERS])
def test_inconsistent_headers_are_refused_naming_the_file(tmp_path, reader, name, variant, message):
    like = _good_meta(tmp_path)
    path = write_header_variant(tmp_path / "bad.nii.gz", **variant)
    read = {"load_image": load_image, "read_geometry": read_geometry,
            "load_label": lambda p: load_label(p, like=like)}[reader]
    with pytest.raises(UserError, match=message) as info:
        read(path)
    assert str(path) in str(info.value)
    assert str(info.value).startswith("label " if reader == "load_label" else "image ")


GOOD_HEADERS = [  # (name, write_header_variant arguments, spacing in array order, affine in use)
    ("sform only (nibabel's default)", dict(sform=SLICE_362), (3.62, 0.8, 0.8), SLICE_362),
    ("qform only (many converters)", dict(qform=SLICE_362), (3.62, 0.8, 0.8), SLICE_362),
    ("qform and sform equal (KiTS19)", dict(sform=KITS19_AFFINE, qform=KITS19_AFFINE), (3.0, 0.78125, 0.78125),
     KITS19_AFFINE),
    ("pixdim rounded against the sform", dict(sform=SLICE_362, pixdim=(3.62 * (1 + 4e-4), 0.8, 0.8)),
     (3.62 * (1 + 4e-4), 0.8, 0.8), SLICE_362),
    ("qform quaternion rounding near a half turn", dict(sform=NEAR_HALF_TURN, qform=NEAR_HALF_TURN),
     (3.0, 0.8, 0.8), NEAR_HALF_TURN),
    ("oblique, both transforms", dict(sform=rotated(SLICE_362, (1, 1, 0), 20), qform=rotated(SLICE_362, (1, 1, 0), 20)),
     (3.62, 0.8, 0.8), rotated(SLICE_362, (1, 1, 0), 20)),
    ("gantry tilt: sheared sform", dict(sform=SLICE_362 @ np.array([[1, 0, 0, 0], [0.36, 1, 0, 0], [0, 0, 1, 0],
                                                                     [0, 0, 0, 1]]), pixdim=(3.62 * np.hypot(1, 0.36 * 0.8 / 3.62), 0.8, 0.8)),
     (3.62 * np.hypot(1, 0.36 * 0.8 / 3.62), 0.8, 0.8),
     SLICE_362 @ np.array([[1, 0, 0, 0], [0.36, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
    ("left-handed qform (qfac -1)", dict(qform=np.diag([-0.8, 0.8, 3.0, 1.0])), (0.8, 0.8, 3.0),
     np.diag([-0.8, 0.8, 3.0, 1.0])),
    ("no transform: pixdim alone", dict(pixdim=(2.0, 1.0, 1.5)), (2.0, 1.0, 1.5), None),
    ("qform_code 0 over different qform values", dict(sform=SLICE_362, qform=shifted(SLICE_362, 40),
                                                      fields={"qform_code": 0}), (3.62, 0.8, 0.8), SLICE_362),
    ("4D with a trailing singleton", dict(data=np.zeros((4, 5, 6, 1), np.int16), sform=SLICE_362, qform=SLICE_362),
     (3.62, 0.8, 0.8), SLICE_362),
    ("NIfTI-2", dict(sform=SLICE_362, qform=SLICE_362, header_class=nib.Nifti2Header), (3.62, 0.8, 0.8), SLICE_362),
]


@pytest.mark.parametrize("name, variant, spacing, affine", GOOD_HEADERS, ids=[row[0] for row in GOOD_HEADERS])
def test_consistent_headers_are_read_with_their_geometry(tmp_path, name, variant, spacing, affine):
    path = write_header_variant(tmp_path / "ok.nii.gz", **variant)
    array, meta = load_image(path)
    assert array.shape == meta.shape == (4, 5, 6)
    assert meta.spacing == pytest.approx(spacing, rel=1e-6)
    if affine is not None:
        np.testing.assert_allclose(meta.affine, affine, atol=1e-5)
    assert read_geometry(path) == meta
    np.testing.assert_array_equal(load_label(path, like=meta), np.zeros((4, 5, 6)))


PAIRS = [  # (name, image header, label header, None when accepted or what the refusal must say)
    ("x1.5 spacing and +40 mm origin", dict(sform=SLICE_362), dict(sform=shifted(scaled(SLICE_362, 1.5), 40)),
     r"label spacing \(5\.43, 1\.2, 1\.2\) mm vs image \(3\.62, 0\.8, 0\.8\) mm"),
    ("+40 mm origin", dict(sform=SLICE_362), dict(sform=shifted(SLICE_362, 40)),
     r"label origin \(50, 20, 70\) mm vs image \(10, -20, 30\) mm"),
    ("half a voxel off", dict(sform=SLICE_362), dict(sform=shifted(SLICE_362, [0.4, 0, 0])), r"label origin"),
    ("stored flipped (same world grid)", dict(sform=SLICE_362), dict(sform=flipped(SLICE_362, 1, 5)),
     r"label axis directions IAL vs image IPL"),
    ("turned 1 degree", dict(sform=SLICE_362), dict(sform=rotated(SLICE_362, (0, 0, 1), 1)), r"label axis directions"),
    ("label qform only, image both", dict(sform=SLICE_362, qform=SLICE_362), dict(qform=SLICE_362), None),
    ("origin 1e-4 mm off (float rounding)", dict(sform=SLICE_362), dict(sform=shifted(SLICE_362, 1e-4)), None),
    ("quaternion rounding: label qform only, image sform only", dict(sform=NEAR_HALF_TURN),
     dict(qform=NEAR_HALF_TURN), None),
]


@pytest.mark.parametrize("name, image_header, label_header, message", PAIRS, ids=[row[0] for row in PAIRS])
def test_label_must_lie_on_its_image_grid(tmp_path, name, image_header, label_header, message):
    image_path = write_header_variant(tmp_path / "case" / "imaging.nii.gz", **image_header)
    label_path = write_header_variant(tmp_path / "case" / "segmentation.nii.gz",
                                      data=np.ones((4, 5, 6), np.uint8), **label_header)
    _, meta = load_image(image_path)
    if message is None:
        np.testing.assert_array_equal(load_label(label_path, like=meta), np.ones((4, 5, 6)))
        return
    with pytest.raises(UserError, match=message) as info:
        load_label(label_path, like=meta)
    assert f"label {label_path} does not lie on the voxel grid of its image {image_path}" in str(info.value)


def test_the_refusal_is_the_only_message(tmp_path, capfd, caplog):
    """nibabel would also log that it "fixed" the pixdim it is about to be refused for."""
    path = write_header_variant(tmp_path / "bad.nii.gz", sform=SLICE_362, pixdim=(0, 0.8, 0.8))
    with pytest.raises(UserError, match="invalid voxel spacing"):
        load_image(path)
    assert "setting 0 dims" not in capfd.readouterr().err + caplog.text
