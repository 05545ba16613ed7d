"""Segment kidneys and kidney tumours in raw CT NIfTI files.

    python predict.py --config CFG (--ckpt CKPT [CKPT ...] | --mindir FILE) --input FILE_OR_DIR --output DIR

Input: one .nii/.nii.gz file or a folder (KiTS case folders, MSD imagesTr, or a flat folder of NIfTI
files); no labels needed. Output per case: DIR/<case>.nii.gz (uint8 labels with the input's shape,
affine and header), DIR/<case>_report.json (volumes in mL per label and side, largest tumour
diameter in mm) and DIR/<case>_overlay.png (the axial slice with the largest tumour area, outlines
on the CT windowed to -160..240 HU). Several --ckpt are ensembled (softmax average).
Left/right: the image affine's left-right axis (the column axis for KiTS files), split at the
centroid of the body (voxels above -500 HU).
"""
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="yaml config (device, mirroring, window batch, postprocess)")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--ckpt", nargs="+", metavar="CKPT", help="training checkpoint(s); several are ensembled")
    models.add_argument("--mindir", metavar="FILE", help="MindIR exported by export.py (with its .json)")
    parser.add_argument("--input", required=True, help="NIfTI file or folder of cases")
    parser.add_argument("--output", required=True, help="output folder")
    add_config_arguments(parser)
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from src.infer.predict_cases import predict_files

    reports = predict_files(cfg, args.input, args.output, ckpts=args.ckpt, mindir=args.mindir)
    print(f"wrote {len(reports)} prediction(s), report(s) and overlay(s) to {args.output}")


if __name__ == "__main__":
    main()
