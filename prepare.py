"""Data preparation: synthetic datasets and nnU-Net-style planning + preprocessing.

    python prepare.py synth --format kits19|kits21|mots|dicom --cases N --out RAW [--seed S]
    python prepare.py preprocess --raw RAW --out PRE --config CFG [--workers N] [--key value ...]
"""
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic (phantom) cases in a dataset's on-disk layout")
    synth.add_argument("--format", required=True, choices=("kits19", "kits21", "mots", "dicom"),
                       help="dicom: one CT series folder per case (the KiTS19 phantoms of this seed; needs "
                            "requirements-dicom.txt)")
    synth.add_argument("--cases", type=int, required=True, help="number of cases")
    synth.add_argument("--out", required=True, help="output folder (created)")
    synth.add_argument("--seed", type=int, default=0)

    pre = commands.add_parser("preprocess", help="fingerprint, plan, crop, normalize and resample every case")
    pre.add_argument("--raw", required=True, help="raw dataset folder (KiTS19/KiTS21/MSD/MOTS layout)")
    pre.add_argument("--out", required=True, help="preprocessed output folder")
    pre.add_argument("--config", required=True, help="yaml config (target_spacing, patch_size, ...)")
    pre.add_argument("--workers", type=int, default=None,
                     help="parallel processes (default: config num_workers; capped at the CPUs this process may use)")
    add_config_arguments(pre)
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from src.data.synthetic import write_synthetic_dataset

        if args.cases < 1:
            raise UserError("--cases must be at least 1")
        if args.format == "dicom":
            from src.data.synthetic_dicom import write_synthetic_dicom

            ids = write_synthetic_dicom(args.out, args.cases, args.seed)
            print(f"wrote {len(ids)} synthetic CT DICOM series to {args.out}/<case> (the kits19 phantoms of seed "
                  f"{args.seed})")
            return
        ids = write_synthetic_dataset(args.out, args.format, args.cases, args.seed)
        print(f"wrote {len(ids)} synthetic {args.format} cases to {args.out}")
        return

    from src.data.preprocess import preprocess_dataset

    cfg = config_from_args(args)
    workers = args.workers if args.workers is not None else cfg.num_workers
    plan = preprocess_dataset(
        args.raw, args.out,
        target_spacing=cfg.target_spacing, patch_size=cfg.patch_size,
        patch_budget_voxels=cfg.patch_budget_voxels, image_budget_voxels=cfg.image_budget_voxels,
        base_features=cfg.base_features, max_features=cfg.max_features, max_stages=cfg.max_stages,
        batch_size=cfg.batch_size,
        normalization=cfg.normalization, clip_window=cfg.clip_window, num_folds=cfg.num_folds,
        workers=max(1, workers), progress=True,
    )
    print(f"preprocessed {len(plan.cases)} cases to {args.out}: target spacing "
          f"{plan.target_spacing}, patch {plan.patch_size}, {len(plan.strides)} stages")


if __name__ == "__main__":
    main()
