"""Data preparation: synthetic datasets and nnU-Net-style planning + preprocessing.

    python prepare.py synth --format kits19|kits21|mots|dicom --cases N --output RAW [--seed S]
    python prepare.py preprocess --raw RAW --output PRE --config CFG [--workers N] [--key value ...]

(--out is --output's older spelling and still accepted.)
"""
from src import cli
from src.data.synthetic import FORMATS as SYNTHETIC_FORMATS
from src.errors import UserError


def build_parser():
    parser = cli.new_parser(__doc__)
    commands = cli.add_commands(parser)

    synth = cli.add_command(commands, "synth", "write synthetic (phantom) cases in a dataset's on-disk layout")
    synth.add_argument("--format", required=True, choices=SYNTHETIC_FORMATS + ("dicom",),
                       help="dicom: one CT series folder per case (the KiTS19 phantoms of this seed; needs "
                            "requirements-dicom.txt)")
    synth.add_argument("--cases", type=int, required=True, help="number of cases")
    cli.add_output(synth, "output folder (created)", "--out")
    synth.add_argument("--seed", type=int, default=0)

    pre = cli.add_command(commands, "preprocess", "fingerprint, plan, crop, normalize and resample every case")
    pre.add_argument("--raw", required=True, help="raw dataset folder (KiTS19/KiTS21/MSD/MOTS layout)")
    cli.add_output(pre, "preprocessed output folder", "--out")
    cli.add_config(pre, "target_spacing, patch_size, ...")
    pre.add_argument("--workers", type=int, default=None,
                     help="parallel processes (default: config num_workers; capped at the CPUs this process may use)")
    return parser


def write_synthetic(args) -> None:
    from src.data.synthetic import write_synthetic_dataset

    if args.cases < 1:
        raise UserError("--cases must be at least 1")
    if args.format == "dicom":
        from src.data.synthetic_dicom import write_synthetic_dicom

        case_ids = write_synthetic_dicom(args.output, args.cases, args.seed)
        print(f"wrote {len(case_ids)} synthetic CT DICOM series to {args.output}/<case> (the kits19 phantoms of "
              f"seed {args.seed})")
        return
    case_ids = write_synthetic_dataset(args.output, args.format, args.cases, args.seed)
    print(f"wrote {len(case_ids)} synthetic {args.format} cases to {args.output}")


def preprocess(args) -> None:
    from src.data.preprocess import preprocess_dataset

    cfg = cli.load_config(args)
    workers = args.workers if args.workers is not None else cfg.num_workers
    plan = preprocess_dataset(
        args.raw, args.output,
        target_spacing=cfg.target_spacing, patch_size=cfg.patch_size,
        patch_budget_voxels=cfg.patch_budget_voxels, image_budget_voxels=cfg.image_budget_voxels,
        base_features=cfg.base_features, max_features=cfg.max_features, max_stages=cfg.max_stages,
        batch_size=cfg.batch_size,
        normalization=cfg.normalization, clip_window=cfg.clip_window, num_folds=cfg.num_folds,
        workers=max(1, workers), progress=True,
    )
    print(f"preprocessed {len(plan.cases)} cases to {args.output}: target spacing "
          f"{plan.target_spacing}, patch {plan.patch_size}, {len(plan.strides)} stages")


def run(args) -> None:
    {"synth": write_synthetic, "preprocess": preprocess}[args.command](args)


main = cli.entry_point(build_parser, run)

if __name__ == "__main__":
    main()
