"""Evaluate: a model on a fold's validation cases, or existing predictions against references.

    python eval.py --config CFG (--ckpt CKPT [CKPT ...] | --mindir FILE) --data PRE --fold F --output EV [--ref REF_DIR]
    python eval.py --pred PRED_DIR --ref REF_DIR --metric kits19|kits21 --out FILE.csv

With a model: sliding-window inference on the fold's validation cases (splits.json), back to the
original geometry, postprocessing per the config (none | lcc | auto), scored against the raw labels
(found through each case's raw image path, or in --ref); writes EV/predictions/<case>.nii.gz,
EV/metrics.csv, EV/summary.json, EV/eval_info.json (and EV/postprocessing.json when auto decides).
Several --ckpt (e.g. the five folds) are ensembled by averaging their softmax outputs.

Outputs are checked before the model loads (or, scoring, before the first case is scored): EV (or
--out's folder) must be a writable folder, no output may be a folder or replace an input (EV is not the
--data or --ref folder nor a folder holding references; --out is no prediction or reference). EV's results
are derived and a rerun replaces them, crash-consistently: summary.json is removed first and written last
(after metrics.csv and eval_info.json), so a summary.json exists only beside the files of the same run;
predictions of cases this run does not evaluate are removed. Scoring mode likewise removes
<name>_summary.json before writing the CSV and writes it last.

Sharded (model mode): `bash scripts/run_distribute_eval.sh WORKERS eval.py <these arguments>` runs this
under msrun; each worker predicts its share of the cases (case i of the sorted ids goes to rank
i % WORKERS) into EV/predictions and its rows into EV/shards/rank_<r>.json; then the launcher runs the same
command with --merge_shards, which writes metrics.csv, eval_info.json and summary.json from all rows -
and, with postprocess auto and no stored decision, decides the postprocessing on all the cases, applies it
and scores, as a single process does - so the results equal a single-process run's.
"""
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import UserError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="yaml config (model mode)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--ckpt", nargs="+", metavar="CKPT", help="training checkpoint(s); several are ensembled")
    models.add_argument("--mindir", metavar="FILE",
                        help="MindIR exported by export.py (with its sidecar NAME.mindir.json)")
    parser.add_argument("--data", help="preprocessed folder (plans.json, splits.json, cases)")
    parser.add_argument("--fold", help="fold whose validation cases are evaluated")
    parser.add_argument("--output", help="evaluation folder")
    parser.add_argument("--pred", help="folder of <case>.nii.gz predictions (scoring mode)")
    parser.add_argument("--ref", help="references: KiTS case folders or flat <case>.nii.gz (scoring mode; "
                                      "optional in model mode)")
    parser.add_argument("--metric", choices=("kits19", "kits21"), help="label set of the references (scoring mode)")
    parser.add_argument("--out", help="metrics CSV to write (scoring mode); <name>_summary.json goes next to it")
    parser.add_argument("--merge_shards", action="store_true",
                        help="after a sharded run (scripts/run_distribute_eval.sh runs this): write --output's "
                             "results from every worker's share")
    add_config_arguments(parser)
    return parser


def score_existing(args) -> None:
    from pathlib import Path

    from src.files import check_output_file, overlapping_inputs, remove_stale_temporaries
    from src.metrics.report import find_references, score_folders, write_metrics_csv, write_summary_json

    missing = [flag for flag, value in (("--ref", args.ref), ("--metric", args.metric), ("--out", args.out))
               if value is None]
    if missing:
        raise UserError(f"scoring mode (--pred) also needs {', '.join(missing)}")
    out = Path(args.out)
    summary_path = out.with_name(out.stem + "_summary.json")
    # the outputs are checked before a single case is scored
    for path in (out, summary_path):
        check_output_file(path, "--out" if path == out else "summary file")
    pred_dir = Path(args.pred)
    inputs = list(find_references(args.ref).values())
    if pred_dir.is_dir():
        inputs += sorted(pred_dir.glob("*.nii*"))
    clashes = overlapping_inputs((out, summary_path), inputs)
    if clashes:
        raise UserError(f"writing {clashes[0]} would replace an input file; choose another --out")
    remove_stale_temporaries(out.parent)
    rows = score_folders(args.pred, args.ref, args.metric)
    # the summary is the commit record: gone before the CSV changes, written last
    summary_path.unlink(missing_ok=True)
    write_metrics_csv(rows, out)
    summary = write_summary_json(rows, summary_path)
    print(f"scored {summary['cases']} cases: wrote {out}; kits21 mean Dice {summary['kits21_mean_dice']:.4f}, "
          f"kits19 composite {summary['kits19_composite']:.4f}")


def print_summary(fold, summary: dict, output) -> None:
    print(f"fold {fold}: {summary['cases']} cases, kits19 kidney {summary['kits19_kidney_dice']:.4f} "
          f"tumor {summary['kits19_tumor_dice']:.4f} composite {summary['kits19_composite']:.4f}; "
          f"kits21 mean Dice {summary['kits21_mean_dice']:.4f} mean SD {summary['kits21_mean_sd']:.4f}; "
          f"wrote {output}/summary.json")


def evaluate_model(args, shard=None) -> None:
    missing = [flag for flag, value in (("--config", args.config), ("--data", args.data), ("--fold", args.fold),
                                        ("--output", args.output)) if value is None]
    if missing or not (args.ckpt or args.mindir):
        missing += [] if (args.ckpt or args.mindir) else ["--ckpt or --mindir"]
        raise UserError(f"model evaluation needs {', '.join(missing)}")
    cfg = config_from_args(args)
    from src.infer.evaluate import evaluate_fold

    result = evaluate_fold(cfg, args.data, args.fold, args.output, ckpts=args.ckpt, mindir=args.mindir,
                           ref_dir=args.ref, shard=shard)
    if shard is not None:
        print(f"{shard}: predicted {len(result['cases'])} of the {len(result['all_cases'])} cases of fold "
              f"{args.fold}; the merge (--merge_shards) writes {args.output}/summary.json")
        return
    print_summary(args.fold, result, args.output)


def merge_model_evaluation(args) -> None:
    if args.output is None:
        raise UserError("--merge_shards needs --output, the folder the sharded run wrote")
    from src.infer.evaluate import merge_evaluation

    summary = merge_evaluation(args.output)
    print_summary(args.fold, summary, args.output)


@exit_on_user_error
def main(argv=None) -> None:
    from src.msrun_env import is_msrun_scheduler, worker_shard

    if is_msrun_scheduler():  # msrun's scheduler runs the script too; inference needs no scheduler
        return
    args = build_parser().parse_args(argv)
    shard = worker_shard()
    if args.pred is not None:
        if args.ckpt or args.mindir:
            raise UserError("--pred scores existing predictions; it cannot be combined with --ckpt/--mindir")
        if shard is not None or args.merge_shards:
            raise UserError("scoring mode (--pred) runs as one process; shard model evaluation (--ckpt/--mindir)")
        score_existing(args)
    elif args.merge_shards:
        merge_model_evaluation(args)
    else:
        evaluate_model(args, shard)


if __name__ == "__main__":
    main()
