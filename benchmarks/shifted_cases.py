"""Copies of KiTS-format cases whose in-plane content is moved by ``--voxels`` along both in-plane axes (air and
background fill the side it leaves, the same amount is cut on the other), so that a whole-volume sliding window
falls on other positions of the same anatomy. ``benchmarks/locate_dice.sh`` (``SHIFTS=...``) uses it to measure how
much a case's Dice moves with the window layout alone.

    python -m benchmarks.shifted_cases --input CASES --output SHIFTED --voxels 4

Refuses when the cut would remove labelled voxels.
"""
import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from src.errors import UserError, exit_on_user_error
from src.data.geometry_checks import geometry_difference
from src.files import commit, overlapping_inputs, temporary_path

FILLS = (("imaging.nii.gz", -1024), ("segmentation.nii.gz", 0))


def shifted(volume: np.ndarray, voxels: int, fill) -> np.ndarray:
    """``volume`` (slices, rows, columns) moved by ``voxels`` towards higher rows and columns."""
    out = np.full_like(volume, fill)
    out[:, voxels:, voxels:] = volume[:, :volume.shape[1] - voxels, :volume.shape[2] - voxels]
    return out


def shift_case(case: Path, out: Path, voxels: int) -> None:
    """Both files of ``case`` shifted into ``out``. Both are written to temporaries before either replaces its
    target (``src.files.commit``), so a failure leaves the old pair and a kill at most the gap of one rename."""
    images = {name: nib.load(str(case / name)) for name, _ in FILLS}
    volumes = {name: np.asarray(image.dataobj) for name, image in images.items()}
    seg, image = volumes["segmentation.nii.gz"], volumes["imaging.nii.gz"]
    grids = geometry_difference(images["imaging.nii.gz"].affine, images["segmentation.nii.gz"].affine,
                                "imaging", "segmentation")
    if seg.ndim != 3 or seg.shape != image.shape or grids:
        raise UserError(f"{case}: imaging {image.shape} and segmentation {seg.shape} are not one 3-D grid"
                        + (f" ({grids})" if grids else ""))
    if np.any(seg[:, seg.shape[1] - voxels:, :]) or np.any(seg[:, :, seg.shape[2] - voxels:]):
        raise UserError(f"{case}: shifting by {voxels} voxels would cut labelled voxels")
    out.mkdir(parents=True, exist_ok=True)
    temporaries = {name: temporary_path(out / name, ".nii.gz") for name, _ in FILLS}
    try:
        for name, fill in FILLS:
            moved = nib.Nifti1Image(shifted(volumes[name], voxels, fill), images[name].affine, images[name].header)
            nib.save(moved, str(temporaries[name]))
        for name, tmp in temporaries.items():
            commit(tmp, out / name)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="folder of case folders (imaging, segmentation)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--voxels", required=True, type=int)
    args = parser.parse_args(argv)
    if args.voxels < 1:
        raise UserError(f"--voxels must be at least 1, got {args.voxels}")
    if args.output.resolve() == args.input.resolve() or args.input.resolve() in args.output.resolve().parents:
        raise UserError(f"--output {args.output} is inside --input {args.input}: the cases would be overwritten")
    cases = sorted(p for p in args.input.iterdir() if (p / "segmentation.nii.gz").is_file())
    if not cases:
        raise UserError(f"{args.input}: no case folder with imaging.nii.gz and segmentation.nii.gz")
    # the output folder may reach the inputs another way (a case folder that is a link, as locate_dice.sh makes)
    replaced = overlapping_inputs([args.output / case.name / name for case in cases for name, _ in FILLS],
                                  [case / name for case in cases for name, _ in FILLS])
    if replaced:
        raise UserError(f"--output {args.output} would replace the input {replaced[0]}; choose another output")
    for case in cases:
        shift_case(case, args.output / case.name, args.voxels)
    print(f"wrote {len(cases)} case(s) shifted by {args.voxels} voxels to {args.output}")


if __name__ == "__main__":
    main()
