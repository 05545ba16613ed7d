"""Ascend 310 flow, step 1: the fold's sliding windows as raw float32 files.

    python preprocess.py --config CFG --data PRE --fold F --output BINS

(--output_path is --output's older spelling and still accepted.)

Writes BINS/00_data/<case>_<i>.bin, each one window of shape (1, C, *patch) in C order, and
BINS/windows.json (window layout per case, flips, shapes) for step 3. With tta_mirror true every
flip of a window is its own input: i = window_index * number_of_flips + flip_index (flips as listed
in windows.json, identity first); with tta_mirror false i is the window index.
Step 2: ascend310_infer (C++ on Ascend 310) or ascend310_infer/mindir_runner.py (CPU/GPU);
step 3: postprocess.py.
"""
from src import cli


def build_parser():
    parser = cli.new_parser(__doc__)
    cli.add_config(parser, "step_size, tta_mirror")
    cli.add_data_and_fold(parser, "fold whose validation cases are written")
    cli.add_output(parser, "output folder (00_data/ and windows.json)", "--output_path")
    return parser


def run(args) -> None:
    cfg = cli.load_config(args)
    from src.infer.offline import write_window_bins

    windows = write_window_bins(cfg, args.data, args.fold, args.output)
    print(f"wrote {windows['total_inputs']} window file(s) of shape {windows['input_shape']} for "
          f"{len(windows['cases'])} case(s) to {args.output}/00_data")


main = cli.entry_point(build_parser, run)

if __name__ == "__main__":
    main()
