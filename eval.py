"""Evaluate: a model on a fold's validation cases, or existing predictions against references.

    python eval.py model --config CFG (--ckpt CKPT [CKPT ...] | --mindir FILE) --data PRE --fold F --output EV [--ref REF_DIR]
    python eval.py score --pred PRED_DIR --ref REF_DIR --metric kits19|kits21 --output FILE.csv

The subcommand may be left out: a command line with --pred is `score` (its --out is --output's older
spelling), any other is `model`, so `eval.py --config ... --ckpt ...` and `eval.py --pred ... --out FILE.csv`
work as they always have.

model: sliding-window inference on the fold's validation cases (splits.json), back to the original
geometry, postprocessing per the config (none | lcc | auto), scored against the raw labels (found through
each case's raw image path, or in --ref); writes EV/predictions/<case>.nii.gz, EV/metrics.csv,
EV/summary.json, EV/eval_info.json (and EV/postprocessing.json when auto decides). Several --ckpt (e.g.
the five folds) are ensembled by averaging their softmax outputs.

Outputs are checked before the model loads (or, scoring, before the first case is scored): EV (or the
score CSV's folder) must be a writable folder, no output may be a folder or replace an input (EV is not
the --data or --ref folder nor a folder holding references; the CSV is no prediction or reference). EV's
results are derived and a rerun replaces them, crash-consistently: summary.json is removed first and written
last (after metrics.csv and eval_info.json), so a summary.json exists only beside the files of the same run;
predictions of cases this run does not evaluate are removed. score likewise removes <name>_summary.json
before writing the CSV and writes it last.

Sharded (model): `bash scripts/run_distribute_eval.sh WORKERS eval.py <these arguments>` runs this under
msrun; each worker predicts its share of the cases (case i of the sorted ids goes to rank i % WORKERS) into
EV/predictions and its rows into EV/shards/rank_<r>.json; then the launcher runs the same command with
--merge_shards, which writes metrics.csv, eval_info.json and summary.json from all rows - and, with
postprocess auto and no stored decision, decides the postprocessing on all the cases, applies it and
scores, as a single process does - so the results equal a single-process run's.
"""
from src import cli
from src.metrics.report import METRIC_LABELS
from src.errors import UserError
from src.msrun_env import is_msrun_scheduler, worker_shard


def implied_command(argv) -> str:
    """The subcommand a command line without one means (the forms DESIGN.md and the README give)."""
    return "score" if any(word == "--pred" or word.startswith("--pred=") for word in argv) else "model"


def build_parser():
    parser = cli.new_parser(__doc__, imply_command=implied_command)
    commands = cli.add_commands(parser)

    model = cli.add_command(commands, "model", "predict and score a fold's validation cases")
    cli.add_config(model, "device, mirroring, window batch, postprocess")
    cli.add_model_files(model)
    cli.add_data_and_fold(model, "fold whose validation cases are evaluated")
    cli.add_output(model, "evaluation folder")
    model.add_argument("--ref", help="references (KiTS case folders or flat <case>.nii.gz); default: found "
                                     "through each case's raw image path")
    cli.add_merge_shards(model, "write --output's results from every worker's share")

    score = cli.add_command(commands, "score", "score existing predictions against references")
    score.add_argument("--pred", required=True, help="folder of <case>.nii.gz predictions")
    score.add_argument("--ref", required=True, help="references: KiTS case folders or flat <case>.nii.gz")
    score.add_argument("--metric", required=True, choices=tuple(METRIC_LABELS), help="label set of the references")
    cli.add_output(score, "metrics CSV to write; <name>_summary.json goes next to it", "--out")
    return parser


def score_existing(args) -> None:
    from pathlib import Path

    from src.files import check_output_file, overlapping_inputs, remove_stale_temporaries
    from src.metrics.report import find_references, score_folders, write_metrics_csv, write_summary_json

    csv_path = Path(args.output)
    summary_path = csv_path.with_name(csv_path.stem + "_summary.json")
    # the outputs are checked before a single case is scored
    for path in (csv_path, summary_path):
        check_output_file(path, "--output" if path == csv_path else "summary file")
    pred_dir = Path(args.pred)
    inputs = list(find_references(args.ref).values())
    if pred_dir.is_dir():
        inputs += sorted(pred_dir.glob("*.nii*"))
    clashes = overlapping_inputs((csv_path, summary_path), inputs)
    if clashes:
        raise UserError(f"writing {clashes[0]} would replace an input file; choose another --output")
    remove_stale_temporaries(csv_path.parent)
    rows = score_folders(args.pred, args.ref, args.metric)
    # the summary is the commit record: gone before the CSV changes, written last
    summary_path.unlink(missing_ok=True)
    write_metrics_csv(rows, csv_path)
    summary = write_summary_json(rows, summary_path)
    print(f"scored {summary['cases']} cases: wrote {csv_path}; kits21 mean Dice {summary['kits21_mean_dice']:.4f}, "
          f"kits19 composite {summary['kits19_composite']:.4f}")


def print_summary(fold, summary: dict, output) -> None:
    print(f"fold {fold}: {summary['cases']} cases, kits19 kidney {summary['kits19_kidney_dice']:.4f} "
          f"tumor {summary['kits19_tumor_dice']:.4f} composite {summary['kits19_composite']:.4f}; "
          f"kits21 mean Dice {summary['kits21_mean_dice']:.4f} mean SD {summary['kits21_mean_sd']:.4f}; "
          f"wrote {output}/summary.json")


def evaluate_model(args, shard) -> None:
    if args.merge_shards:
        from src.infer.evaluate import merge_evaluation

        print_summary(args.fold, merge_evaluation(args.output), args.output)
        return
    cfg = cli.load_config(args)
    from src.infer.evaluate import evaluate_fold

    evaluation = evaluate_fold(cfg, args.data, args.fold, args.output, ckpts=args.ckpt, mindir=args.mindir,
                               ref_dir=args.ref, shard=shard)
    if shard is not None:
        print(f"{shard}: predicted {len(evaluation['cases'])} of the {len(evaluation['all_cases'])} cases of fold "
              f"{args.fold}; the merge (--merge_shards) writes {args.output}/summary.json")
        return
    print_summary(args.fold, evaluation, args.output)


def run(args) -> None:
    shard = worker_shard()
    if args.command == "model":
        evaluate_model(args, shard)
    elif shard is not None:
        raise UserError("eval.py score (--pred) runs as one process; shard model evaluation (--ckpt/--mindir)")
    else:
        score_existing(args)


# msrun's scheduler runs the script too; inference needs no scheduler
main = cli.entry_point(build_parser, run, step_aside=is_msrun_scheduler)

if __name__ == "__main__":
    main()
