"""Segment kidneys and kidney tumours in raw CT: NIfTI, NRRD or MHA files, or a DICOM series.

    python predict.py --config CFG (--ckpt CKPT [CKPT ...] | --mindir FILE) --input FILE_OR_DIR --output DIR
                      [--output_format nifti|dicom_seg|nrrd] [--series UID]

Input: one .nii/.nii.gz/.nrrd/.mha file, a folder (KiTS case folders, MSD imagesTr, or a flat folder of
such files), or a DICOM folder holding one CT series (--series UID picks one of several); no labels
needed. Reading DICOM and writing DICOM-SEG need `pip install -r requirements-dicom.txt`.
Output per case: the labels as DIR/<case>.nii.gz (uint8 with the input's shape, affine and header; a
DICOM or NRRD input gets a header stating its own geometry), DIR/<case>.nrrd (--output_format nrrd) or
DIR/<case>_seg.dcm (--output_format dicom_seg: a DICOM Segmentation referencing the input series, kidney
/ tumour / cyst segments with SNOMED CT codes; DICOM input only), DIR/<case>_report.json (volumes in mL
per label and side, largest tumour diameter in mm), DIR/<case>_report.html (one page: volumes per side,
largest tumour diameter, axial/coronal/sagittal slices through the largest tumour with outlines, the
model and settings) and DIR/<case>_overlay.png (the axial slice with the largest tumour area, outlines
on the CT windowed to -160..240 HU). Several --ckpt are ensembled (softmax average).
Left/right: the image affine's left-right axis (the column axis for KiTS files), split at the
centroid of the body (voxels above -500 HU).

Outputs never replace inputs, and a run never replaces finished work unless told to:
- Checked before the model loads, one error line each: DIR is an input file, the folder holding an
  input image or label (outputs there would replace inputs or be read as inputs next time), or any
  file; DIR cannot be written; an output file would replace an input file (also through a hard link);
  a folder sits where an output file goes.
- <case>_report.json is written last and records the model files' sha256, the settings that change
  the labels (tta_mirror, step_size, postprocess and the decision file auto reads), the input image's
  sha256 and the label's and overlay's sha256. A case whose three files match that record for this
  model, settings and image is skipped ("skipped N of M case(s)"), so a rerun of a killed run only
  predicts what is missing. A case left incomplete (report says incomplete, or the label/overlay is
  missing) is predicted again.
- Outputs of another model, other settings or another input image, outputs changed since they were
  written, and files under these names that predict.py did not write are refused unless --overwrite;
  --overwrite replaces them (complete outputs of this same model and settings are still skipped).
- A kill at any instant leaves each case complete-old, complete-new or incomplete by its report (the
  old report is replaced by an "incomplete" one before the label is touched); leftover temporaries of
  killed runs are removed at the start.
- A case that fails (unreadable file, an error of any type) does not stop the others: each failed case
  is listed as "failed: <case>: <reason>" at the end, DIR/failures.log holds the tracebacks, and the
  exit status is 2.

Sharded: `bash scripts/run_distribute_eval.sh WORKERS predict.py <these arguments>` runs this under msrun;
each worker predicts its share of the cases (case i of the sorted ids goes to rank i % WORKERS), with all
the rules above, and records what it did in DIR/shards/rank_<r>.json; then the launcher runs the same
command with --merge_shards, which sums up the run, lists every rank's failed cases (DIR/failures.log)
and exits with status 2 if any case failed.
"""
from src import cli
from src.infer.output_formats import OUTPUT_FORMATS
from src.msrun_env import is_msrun_scheduler, worker_shard


def build_parser():
    parser = cli.new_parser(__doc__)
    cli.add_config(parser, "device, mirroring, window batch, postprocess")
    cli.add_model_files(parser)
    parser.add_argument("--input", required=True,
                        help="NIfTI/NRRD/MHA file, folder of cases, or a DICOM series folder")
    parser.add_argument("--output_format", default="nifti", choices=OUTPUT_FORMATS,
                        help="labels as <case>.nii.gz (default), <case>_seg.dcm (DICOM-SEG of a DICOM input "
                             "series) or <case>.nrrd")
    parser.add_argument("--series", metavar="UID", default=None,
                        help="SeriesInstanceUID to read when the --input DICOM folder holds several series")
    cli.add_output(parser, "output folder")
    cli.add_overwrite(parser, "replace outputs of another model/settings/image and files predict.py did not "
                              "write (refused otherwise); complete outputs of this model are skipped either way")
    cli.add_merge_shards(parser, "sum up every worker's share in --output and report all failed cases")
    return parser


def print_run(predicted: int, skipped: int, output) -> None:
    skipped_note = f" ({skipped} complete case(s) skipped)" if skipped else ""
    print(f"wrote {predicted} prediction(s), report(s), report page(s) and overlay(s) to {output}{skipped_note}")


def run(args) -> None:
    if args.merge_shards:
        from src.infer.predict_cases import merge_predictions

        print_run(*merge_predictions(args.output), args.output)
        return
    cfg = cli.load_config(args)
    shard = worker_shard()
    from src.infer.predict_cases import predict_files

    outcome = predict_files(cfg, args.input, args.output, ckpts=args.ckpt, mindir=args.mindir,
                            overwrite=args.overwrite, shard=shard, output_format=args.output_format,
                            series=args.series)
    if shard is not None:
        failed = f", {len(outcome.failures)} failed" if outcome.failures else ""
        print(f"{shard}: predicted {len(outcome.reports)} case(s){failed}; the merge (--merge_shards) sums up the run")
        return
    print_run(len(outcome.reports), outcome.skipped, args.output)


# msrun's scheduler runs the script too; inference needs no scheduler
main = cli.entry_point(build_parser, run, step_aside=is_msrun_scheduler)

if __name__ == "__main__":
    main()
