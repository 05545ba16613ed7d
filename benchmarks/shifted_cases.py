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
from src.files import atomic_produce

FILLS = (("imaging.nii.gz", -1024), ("segmentation.nii.gz", 0))


def shifted(volume: np.ndarray, voxels: int, fill) -> np.ndarray:
    """``volume`` (slices, rows, columns) moved by ``voxels`` towards higher rows and columns."""
    out = np.full_like(volume, fill)
    out[:, voxels:, voxels:] = volume[:, :volume.shape[1] - voxels, :volume.shape[2] - voxels]
    return out


def shift_case(case: Path, out: Path, voxels: int) -> None:
    """Both files of ``case`` shifted into ``out``, each written whole or not at all (``atomic_produce``)."""
    images = {name: nib.load(str(case / name)) for name, _ in FILLS}
    volumes = {name: np.asarray(image.dataobj) for name, image in images.items()}
    seg = volumes["segmentation.nii.gz"]
    if seg.ndim != 3 or seg.shape != volumes["imaging.nii.gz"].shape:
        raise UserError(f"{case}: imaging {volumes['imaging.nii.gz'].shape} and segmentation {seg.shape} are not "
                        "one 3-D grid")
    if np.any(seg[:, seg.shape[1] - voxels:, :]) or np.any(seg[:, :, seg.shape[2] - voxels:]):
        raise UserError(f"{case}: shifting by {voxels} voxels would cut labelled voxels")
    out.mkdir(parents=True, exist_ok=True)
    for name, fill in FILLS:
        moved = nib.Nifti1Image(shifted(volumes[name], voxels, fill), images[name].affine, images[name].header)
        atomic_produce(out / name, lambda partial, image=moved: nib.save(image, str(partial)), suffix=".nii.gz")


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
    for case in cases:
        shift_case(case, args.output / case.name, args.voxels)
    print(f"wrote {len(cases)} case(s) shifted by {args.voxels} voxels to {args.output}")


if __name__ == "__main__":
    main()
