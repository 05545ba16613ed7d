"""What the fault rows share: copies of the workspace and hand-made NIfTI files."""
import shutil

import nibabel as nib
import numpy as np

from tests.infer.tiny_model import write_tiny_kits19


def copy_from(ws, name, to):
    target = to / name
    if (ws / name).is_dir():
        shutil.copytree(ws / name, target)
    else:
        shutil.copy(ws / name, target)
    return target


def write_nifti(path, array, affine, pixdim=None, sform_code=1, qform_code=1):
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=sform_code)
    image.header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    if qform_code:
        image.set_qform(affine, code=qform_code)
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def one_raw_case(root, name="case_00000"):
    """A KiTS19 folder with one sound case; returns (folder, image array, label array, affine)."""
    raw = root / "bad_raw"
    write_tiny_kits19(raw, num_cases=1)
    image = nib.load(raw / name / "imaging.nii.gz")
    label = nib.load(raw / name / "segmentation.nii.gz")
    return raw, np.asanyarray(image.dataobj), np.asanyarray(label.dataobj), image.affine
