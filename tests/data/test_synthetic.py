"""Synthetic phantom datasets: layouts, geometry, labels, orientation, determinism, tissue HU."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from src.data import io, layouts
from src.data.phantom import STRUCTURE_IDS, make_phantom, sample_geometry, sample_phantom
from src.data.synthetic import MOTS_TASKS, case_options, write_synthetic_dataset
from src.errors import UserError

SEED = 3


@pytest.fixture(scope="module")
def kits19(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits19")
    return out, write_synthetic_dataset(out, "kits19", 10, SEED, progress=False)


@pytest.fixture(scope="module")
def kits21(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits21")
    return out, write_synthetic_dataset(out, "kits21", 2, SEED, progress=False)


@pytest.fixture(scope="module")
def mots(tmp_path_factory):
    out = tmp_path_factory.mktemp("mots")
    return out, write_synthetic_dataset(out, "mots", 7, SEED, progress=False)


def load_case(path):
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


def kits_affine(spacing):
    slice_mm, row_mm, col_mm = spacing
    return np.array([[0, 0, -col_mm, 0], [0, -row_mm, 0, 0], [-slice_mm, 0, 0, 0], [0, 0, 0, 1]])


def check_geometry(image_nifti, label_nifti, image, label, record):
    spacing = image_nifti.header.get_zooms()[:3]
    np.testing.assert_allclose(spacing, record["spacing"], rtol=1e-6)
    assert image.ndim == 3 and image.shape == label.shape == tuple(record["shape"])
    assert image.dtype == np.int16 and label.dtype == np.uint8
    np.testing.assert_allclose(label_nifti.affine, image_nifti.affine)
    assert 38 <= image.shape[0] <= 102 and all(95 <= n <= 255 for n in image.shape[1:])
    assert 1.0 <= spacing[0] <= 5.0 and all(0.6 <= s <= 2.5 for s in spacing[1:])
    assert spacing[1] == spacing[2]


def test_kits19_layout_geometry_and_affine(kits19):
    out, ids = kits19
    assert ids == [f"case_{i:05d}" for i in range(10)]
    records = {r["case_id"]: r for r in json.loads((out / "synthetic_cases.json").read_text())["cases"]}
    for case_id in ids:
        image, image_nifti = load_case(out / case_id / "imaging.nii.gz")
        label, label_nifti = load_case(out / case_id / "segmentation.nii.gz")
        check_geometry(image_nifti, label_nifti, image, label, records[case_id])
        np.testing.assert_allclose(image_nifti.affine, kits_affine(image_nifti.header.get_zooms()[:3]), atol=1e-6)
        assert set(np.unique(label)) <= {0, 1, 2}
        assert -1024 <= image.min() and image.max() <= 3071
    shapes = np.array([records[i]["shape"] for i in ids])
    assert len({tuple(s) for s in shapes}) == len(ids), "array shapes should vary between cases"
    assert not list(out.rglob("*.tmp-*")), "atomic writes left temporary files"


def test_kits21_uses_majority_label_file_and_cyst_label(kits21):
    out, ids = kits21
    for case_id in ids:
        assert (out / case_id / "aggregated_MAJ_seg.nii.gz").exists()
        assert not (out / case_id / "segmentation.nii.gz").exists()
        label, label_nifti = load_case(out / case_id / "aggregated_MAJ_seg.nii.gz")
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        np.testing.assert_allclose(label_nifti.affine, kits_affine(label_nifti.header.get_zooms()[:3]), atol=1e-6)
    # The same phantom labelled both ways: KiTS19 folds cysts into the kidney, KiTS21 keeps label 3.
    phantom = sample_phantom(np.random.default_rng(1), "kits21", kidneys="both", tumours=1, cysts=1)
    kits21_label, kits19_label = phantom.labels("kits21"), phantom.labels("kits19")
    assert (kits21_label == 3).sum() > 50 and not (kits19_label == 3).any()
    np.testing.assert_array_equal(kits19_label, np.where(kits21_label == 3, 1, kits21_label))


def test_layouts_are_read_by_the_io_module(kits19, kits21, mots):
    assert layouts.detect_layout(kits19[0]) == "kits19"
    assert layouts.detect_layout(kits21[0]) == "kits21"
    assert layouts.detect_layout(mots[0]) == "mots"
    cases = layouts.find_cases(mots[0])
    assert sorted(c.case_id for c in cases) == sorted(mots[1])
    for case in layouts.find_cases(kits21[0]):
        image, meta = io.load_image(case.image)
        assert io.load_label(case.label, meta).shape == image.shape


def test_mots_layout_index_and_per_task_labels(mots):
    out, ids = mots
    index = json.loads((out / "mots.json").read_text())
    assert index["tasks"] == {str(k): v for k, v in MOTS_TASKS.items()}
    assert "SYNTHETIC" in index["description"]
    assert len({c["case_id"] for c in index["cases"]}) == len(ids) == 7
    allowed = {"liver": {0, 1, 2}, "kidney": {0, 1, 2}, "hepatic_vessel": {0, 1, 2}, "pancreas": {0, 1, 2},
               "colon": {0, 1}, "lung": {0, 1}, "spleen": {0, 1}}
    records = {r["case_id"]: r for r in json.loads((out / "synthetic_cases.json").read_text())["cases"]}
    for case in index["cases"]:
        task = MOTS_TASKS[case["task_id"]]
        assert case["image"].startswith(f"{case['task_id']}_{task}/") and case["label"].startswith(f"{case['task_id']}_{task}/")
        image, image_nifti = load_case(out / case["image"])
        label, label_nifti = load_case(out / case["label"])
        check_geometry(image_nifti, label_nifti, image, label, records[case["case_id"]])
        present = set(np.unique(label).tolist())
        # Every task's organ and lesion are present (the kidney task case of seed 3 has a tumour).
        assert present == allowed[task], (task, present)
        if task == "kidney":
            np.testing.assert_allclose(image_nifti.affine, kits_affine(image_nifti.header.get_zooms()[:3]), atol=1e-6)
        else:
            assert image_nifti.affine[2, 0] > 0, "non-kidney MOTS tasks are stored with a head-up slice axis"


def world_centroid(owner, structure, affine):
    index = np.argwhere(owner == STRUCTURE_IDS[structure]).mean(axis=0)
    return (affine @ np.append(index, 1.0))[:3]


@pytest.mark.parametrize("fmt, index", [("kits19", 1), ("mots", 0)])
def test_files_match_the_phantom_and_the_affine_orients_it(kits19, mots, fmt, index):
    """Regenerating case ``index`` from (seed, index) alone gives the stored voxels (cases do not depend
    on the number of cases), and through the file's affine (RAS world) the anatomy is where it belongs."""
    out, ids = kits19 if fmt == "kits19" else mots
    records = json.loads((out / "synthetic_cases.json").read_text())["cases"]
    rng = np.random.default_rng([SEED, index])
    phantom = sample_phantom(rng, **case_options(fmt, index, rng))
    image, nifti = load_case(out / records[index]["image"])
    flipped = nifti.affine[2, 0] > 0
    owner = phantom.owner[::-1] if flipped else phantom.owner
    np.testing.assert_array_equal(image, (phantom.image[::-1] if flipped else phantom.image).astype(np.int16))
    liver, spleen, kidney, spine, vessels = (world_centroid(owner, name, nifti.affine)
                                             for name in ("liver", "spleen", "kidney", "bone", "vessel"))
    assert liver[0] > spleen[0], "RAS: the liver (patient right) has the larger x"
    assert spine[1] < vessels[1], "RAS: the spine is posterior (smaller y) to the aorta and IVC"
    assert liver[2] > kidney[2], "RAS: the liver is above (larger z) the kidneys"


def test_tumours_touch_kidneys_and_are_not_tiny(kits19):
    out, ids = kits19
    tumour_cases = 0
    for case_id in ids:
        label, nifti = load_case(out / case_id / "segmentation.nii.gz")
        tumour = label == 2
        if not tumour.any():
            continue
        tumour_cases += 1
        components, count = ndimage.label(tumour)
        grown = ndimage.binary_dilation(components > 0, ndimage.generate_binary_structure(3, 3))
        for component in range(1, count + 1):
            touching = ndimage.binary_dilation(components == component, ndimage.generate_binary_structure(3, 3))
            assert (touching & (label == 1)).any(), f"{case_id}: tumour component {component} floats free"
        assert (grown & (label == 1)).any()
        voxel_mm3 = float(np.prod(nifti.header.get_zooms()[:3]))
        radius = (3 * tumour.sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
        assert 5.0 <= radius <= 40.0, f"{case_id}: tumour equivalent radius {radius:.1f} mm"
    assert tumour_cases >= 7


def test_ten_cases_include_tumour_free_and_single_kidney(kits19):
    out, ids = kits19
    tumour_free, single_kidney = [], []
    for case_id in ids:
        label, _ = load_case(out / case_id / "segmentation.nii.gz")
        if not (label == 2).any():
            tumour_free.append(case_id)
        components, count = ndimage.label(label > 0)
        sizes = np.bincount(components.ravel())[1:]
        if (sizes > 0.05 * sizes.sum()).sum() == 1:
            single_kidney.append(case_id)
    assert "case_00003" in tumour_free and "case_00007" in single_kidney
    assert len(single_kidney) < len(ids) // 2


def test_determinism_and_independence_from_case_count(kits19, tmp_path):
    out, _ = kits19
    ids = write_synthetic_dataset(tmp_path / "again", "kits19", 2, SEED, progress=False)
    assert ids == ["case_00000", "case_00001"]
    for case_id in ids:
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            assert (tmp_path / "again" / case_id / name).read_bytes() == (out / case_id / name).read_bytes()
    write_synthetic_dataset(tmp_path / "other", "kits19", 1, SEED + 1, progress=False)
    other = (tmp_path / "other" / "case_00000" / "imaging.nii.gz").read_bytes()
    assert other != (out / "case_00000" / "imaging.nii.gz").read_bytes()


def test_tissue_hounsfield_units():
    ids = STRUCTURE_IDS
    for seed in range(2):
        phantom = sample_phantom(np.random.default_rng([100, seed]), "kits21", kidneys="both", tumours=1, cysts=1,
                                 lesions=("liver",))
        image, owner = phantom.image, phantom.owner

        def median(name):
            values = image[owner == ids[name]]
            assert values.size > 100, name
            return float(np.median(values))

        assert median("air") < -950
        assert -130 < median("fat") < -60
        assert 25 < median("muscle") < 70
        assert 40 < median("liver") < 85
        assert median("kidney") > median("fat") + 150 and median("kidney") > median("liver")
        kidney = image[owner == ids["kidney"]]
        assert np.percentile(kidney, 90) > 140, "arterial-phase cortex is bright"
        assert np.percentile(kidney, 10) < 110, "medulla is darker than cortex"
        assert 30 < median("kidney_tumour") < 120
        assert -10 < median("kidney_cyst") < 30
        assert median("liver_tumour") < median("liver") - 10
        assert np.percentile(image[owner == ids["bone"]], 90) > 400
        assert median("lung") < -700
        tumour_spread = np.subtract(*np.percentile(image[owner == ids["kidney_tumour"]], [90, 10]))
        cyst_spread = np.subtract(*np.percentile(image[owner == ids["kidney_cyst"]], [90, 10]))
        assert tumour_spread > cyst_spread + 10, "tumours are textured, cysts homogeneous"


def test_sampled_geometry_ranges():
    rng = np.random.default_rng(0)
    geometries = [sample_geometry(rng) for _ in range(400)]
    slices = np.array([g.shape[0] for g in geometries])
    inplane = np.array([g.shape[1:] for g in geometries])
    spacing = np.array([g.spacing for g in geometries])
    assert 40 <= slices.min() and slices.max() <= 100 and slices.max() - slices.min() > 40
    assert 100 <= inplane.min() and inplane.max() <= 251 and np.ptp(inplane) > 100
    assert 1.0 <= spacing[:, 0].min() and spacing[:, 0].max() <= 5.0 and np.ptp(spacing[:, 0]) > 3
    assert 0.6 <= spacing[:, 1].min() < 0.7 and 2.3 < spacing[:, 1].max() <= 2.5
    scale = np.array([g.body_scale for g in geometries])
    assert 0.45 <= scale.min() and scale.max() <= 0.8


def test_make_phantom_on_a_fixed_small_grid():
    image, label, spacing = make_phantom(np.random.default_rng(5), labels="kits19", kidneys="left", tumours=1,
                                         cysts=0, spacing=(4.0, 4.0, 4.0), shape=(24, 32, 32))
    assert image.shape == label.shape == (24, 32, 32) and spacing == (4.0, 4.0, 4.0)
    assert image.dtype == np.float32 and set(np.unique(label)) == {0, 1, 2}
    assert (label[:, :, 16:] > 0).sum() > (label[:, :, :16] > 0).sum(), "left kidney is at larger column index"
    with pytest.raises(ValueError):
        make_phantom(np.random.default_rng(0), labels="brain")
    with pytest.raises(ValueError):
        make_phantom(np.random.default_rng(0), spacing=(1.0, 1.0, 1.0))


def test_output_folder_rules(tmp_path):
    with pytest.raises(UserError, match="format"):
        write_synthetic_dataset(tmp_path / "x", "msd", 1, 0)
    with pytest.raises(UserError, match="at least 1"):
        write_synthetic_dataset(tmp_path / "x", "kits19", 0, 0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic_dataset(foreign, "kits19", 1, 0)
    target = tmp_path / "synth"
    write_synthetic_dataset(target, "kits19", 2, 0, progress=False)
    assert "SYNTHETIC" in (target / "SYNTHETIC_README.txt").read_text()
    write_synthetic_dataset(target, "kits19", 1, 0, progress=False)
    assert not (target / "case_00001").exists(), "a rerun with fewer cases leaves no stale case behind"
    assert [c.case_id for c in layouts.find_cases(target)] == ["case_00000"]
