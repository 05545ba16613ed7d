"""Train one fold of the nnU-Net-style 3D U-Net (or the transfer-learning / DoDNet variants).

    python train.py --config CFG --data PRE --fold F --output OUT [--pretrained CKPT]
                    [--resume | --overwrite] [--key value ...]

Writes OUT/fold_F/: checkpoint_latest.ckpt (and checkpoint_latest.prev.ckpt, the epoch before it),
checkpoint_best.ckpt, training_log.txt, progress.png, config.yaml, plans.json (and transfer_report.json
with --pretrained). Every config key is a flag.

A fold folder that already holds a run (finished or not) is never replaced silently: --resume continues
it, --overwrite deletes it first (checkpoints, log, progress, the postprocessing decision eval.py stored
there, copies); without either, train.py stops with one line and touches nothing. A run killed at any
moment, or stopped by a failed write (disk full), continues with --resume.
"""
from src import cli
from src.msrun_env import is_extra_scheduler


def build_parser():
    parser = cli.new_parser(__doc__)
    cli.add_config(parser, "network, schedule, augmentation, device")
    cli.add_data_and_fold(parser, "fold number (0..num_folds-1) or 'all' (train on every case)")
    cli.add_output(parser, "output folder; the run goes to OUTPUT/fold_F")
    parser.add_argument("--pretrained", default=None, metavar="CKPT",
                        help="initialise from the weights of CKPT whose names and shapes fit")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in OUTPUT/fold_F from checkpoint_latest.ckpt exactly where it "
                               "stopped (repairs what a kill left behind)")
    cli.add_overwrite(existing, "delete the run in OUTPUT/fold_F (checkpoints, log, progress, postprocessing "
                                "decision) and start over; without it or --resume an existing run is refused")
    return parser


def run(args) -> None:
    cfg = cli.load_config(args)
    from src.train.trainer import train_fold

    train_fold(cfg, args.data, args.fold, args.output, pretrained=args.pretrained, resume=args.resume,
               overwrite=args.overwrite)


# a scheduler msrun starts on node r > 0 sharing node 0's host steps aside: node 0's msrun runs the job's one
main = cli.entry_point(build_parser, run, step_aside=is_extra_scheduler)

if __name__ == "__main__":
    main()
