"""Ascend 310 flow, step 3: stitch the window results, restore the original geometry, score.

    python postprocess.py --config CFG --data PRE --fold F --pre_path BINS --result_path RESULTS --output EV [--ref REF_DIR]

Reads BINS/windows.json (step 1) and RESULTS/<case>_<i>_0.bin (float32 logits of each window, step 2),
averages the flips, stitches with the same Gaussian weighting as eval.py, and writes what eval.py
writes: EV/predictions/<case>.nii.gz, EV/metrics.csv, EV/summary.json, EV/eval_info.json.
"""
from src import cli


def build_parser():
    parser = cli.new_parser(__doc__)
    cli.add_config(parser, "postprocess")
    cli.add_data_and_fold(parser, "the fold given to preprocess.py")
    parser.add_argument("--pre_path", required=True, help="output folder of preprocess.py (windows.json)")
    parser.add_argument("--result_path", required=True, help="folder of <name>_0.bin results")
    cli.add_output(parser, "evaluation folder")
    parser.add_argument("--ref", help="references (KiTS case folders or flat <case>.nii.gz); default: found "
                                      "through each case's raw image path")
    return parser


def run(args) -> None:
    cfg = cli.load_config(args)
    from src.infer.offline import evaluate_offline

    summary = evaluate_offline(cfg, args.data, args.fold, args.pre_path, args.result_path, args.output,
                               ref_dir=args.ref)
    print(f"fold {args.fold}: {summary['cases']} cases, kits19 composite {summary['kits19_composite']:.4f}, "
          f"kits21 mean Dice {summary['kits21_mean_dice']:.4f} mean SD {summary['kits21_mean_sd']:.4f}; "
          f"wrote {args.output}/summary.json")


main = cli.entry_point(build_parser, run)

if __name__ == "__main__":
    main()
