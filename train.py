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
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="yaml config")
    parser.add_argument("--data", required=True, help="preprocessed folder (plans.json, splits.json, cases)")
    parser.add_argument("--fold", required=True, help="fold number (0..num_folds-1) or 'all' (train on every case)")
    parser.add_argument("--output", required=True, help="output folder; the run goes to OUTPUT/fold_F")
    parser.add_argument("--pretrained", default=None, metavar="CKPT",
                        help="initialise from the weights of CKPT whose names and shapes fit")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in OUTPUT/fold_F from checkpoint_latest.ckpt exactly where it "
                               "stopped (repairs what a kill left behind)")
    existing.add_argument("--overwrite", action="store_true",
                          help="delete the run in OUTPUT/fold_F (checkpoints, log, progress, postprocessing "
                               "decision) and start over; without it or --resume an existing run is refused")
    add_config_arguments(parser)
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    from src.msrun_env import is_extra_scheduler

    if is_extra_scheduler():  # node r > 0 sharing node 0's host: node 0's msrun runs the job's scheduler
        return
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from src.train.trainer import train_fold

    train_fold(cfg, args.data, args.fold, args.output, pretrained=args.pretrained, resume=args.resume,
               overwrite=args.overwrite)


if __name__ == "__main__":
    main()
