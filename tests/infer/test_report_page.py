"""The case page: numbers a clinician reads, three views in the radiological convention, the model."""
import base64
import io
import json
import re

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from src.data.io import ImageMeta
from src.files import file_digest
from src.infer.case_report import write_case_outputs
from src.infer.report_page import focus_point, render_views

KITS21 = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
KITS19_AFFINE = np.array([[0, 0, -0.8, 0], [0, -0.7, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])  # axes I, P, L
RAS_AFFINE = np.diag([0.9, 0.8, 2.5, 1.0])  # axes R, A, S


def meta_for(affine, shape):
    return ImageMeta(spacing=tuple(np.linalg.norm(affine[:3, :3], axis=0)), shape=shape, affine=affine.tolist(),
                     header_b64="", source="case_00001/imaging.nii.gz")


def kidneys_case():
    """A body with a kidney on each side of the column axis, a tumour on the high-index one, a cyst."""
    image = np.full((10, 24, 28), -1000, np.float32)
    image[:, 2:22, 2:26] = 40
    label = np.zeros(image.shape, np.uint8)
    label[3:7, 8:14, 4:9] = 1
    label[3:7, 8:14, 19:24] = 1
    label[4:6, 9:12, 20:23] = 2
    label[3, 12:14, 5:7] = 3
    return image, label


def test_page_shows_volumes_diameter_views_and_model(tmp_path):
    image, label = kidneys_case()
    meta = meta_for(KITS19_AFFINE, image.shape)
    settings = [("model file", "checkpoint_best.ckpt (sha256:0123456789ab...)"), ("tta_mirror", "True")]
    report = write_case_outputs("case_00001", image, label, meta, KITS21, tmp_path / "r.json", tmp_path / "o.png",
                                page_path=tmp_path / "case_00001_report.html", settings=settings)
    page = (tmp_path / "case_00001_report.html").read_text()
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["page"] == "case_00001_report.html"
    assert stored["page_digest"] == file_digest(tmp_path / "case_00001_report.html")
    volumes = report["volumes_ml"]
    kidney = volumes["kidney"]
    # the KiTS column axis runs to the patient's left: the tumour's kidney (high columns) is the left one
    assert volumes["tumor"]["left"] > 0 and volumes["tumor"]["right"] == 0
    assert f"<td>kidney</td><td>{kidney['right']:.1f}</td><td>{kidney['left']:.1f}</td>" \
           f"<td>{kidney['total']:.1f}</td>" in page
    total = sum(v["total"] for v in volumes.values())
    assert f"<td>{total:.1f}</td></tr>" in page  # kidney with masses
    assert f"Largest tumour diameter: <b>{report['largest_tumor_diameter_mm']:.1f} mm</b>" in page
    assert "Slices through the largest tumour" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    for encoded in images:
        png = matplotlib.image.imread(io.BytesIO(base64.b64decode(encoded)), format="png")
        assert png.ndim == 3 and min(png.shape[:2]) >= 100
    assert "checkpoint_best.ckpt (sha256:0123456789ab...)" in page and "<dt>tta_mirror</dt><dd>True</dd>" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    # nothing in it changes between runs: its sha256 identifies it, as predict.py's resume rule needs
    write_case_outputs("case_00001", image, label, meta, KITS21, tmp_path / "r2.json", tmp_path / "o2.png",
                       page_path=tmp_path / "again.html", settings=settings)
    assert (tmp_path / "again.html").read_bytes() == (tmp_path / "case_00001_report.html").read_bytes()


def test_page_without_a_tumour_goes_through_the_largest_structure(tmp_path):
    image, label = kidneys_case()
    label[label == 2] = 1
    assert focus_point(label, KITS21)[1] == "largest labelled structure"
    write_case_outputs("x", image, label, meta_for(KITS19_AFFINE, image.shape), KITS21, tmp_path / "r.json",
                       tmp_path / "o.png", page_path=tmp_path / "x.html")
    page = (tmp_path / "x.html").read_text()
    assert "no tumour found" in page and "Slices through the largest labelled structure" in page


def _centre_of_white(png: bytes):
    """(row, column) centre of the white pixels as fractions of the image (outlines and marks are coloured)."""
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    rows, columns = np.nonzero(pixels.min(axis=-1) > 0.9)
    return rows.mean() / pixels.shape[0], columns.mean() / pixels.shape[1]


@pytest.mark.parametrize("affine", [KITS19_AFFINE, RAS_AFFINE], ids=["kits19", "ras"])
def test_views_put_right_anterior_head_at_the_top_left(affine):
    """A bright block at the patient's right, front and head shows top left in all three views: the
    patient's right on the image's left (axial, coronal), anterior on the left of the sagittal view and
    at the top of the axial one, head at the top."""
    shape = (12, 16, 20)
    image = np.full(shape, -1000, np.float32)
    label = np.zeros(shape, np.uint8)
    block = tuple(slice(-4, None) if code in "RAS" else slice(0, 4) for code in nib.aff2axcodes(affine))
    image[block] = 1000
    label[block] = 2
    point, what = focus_point(label, KITS21)
    assert what == "largest tumour"
    views = render_views(image, label, affine, np.linalg.norm(affine[:3, :3], axis=0), KITS21, point)
    assert [name for name, _ in views] == ["axial", "coronal", "sagittal"]
    for name, png in views:
        row, column = _centre_of_white(png)
        assert row < 0.5 and column < 0.5, f"{name}: the block shows at ({row:.2f}, {column:.2f})"
