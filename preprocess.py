"""Ascend 310 flow, step 1: the fold's sliding windows as raw float32 files.

    python preprocess.py --config CFG --data PRE --fold F --output_path BINS

Writes BINS/00_data/<case>_<i>.bin, each one window of shape (1, C, *patch) in C order, and
BINS/windows.json (window layout per case, flips, shapes) for step 3. With tta_mirror true every
flip of a window is its own input: i = window_index * number_of_flips + flip_index (flips as listed
in windows.json, identity first); with tta_mirror false i is the window index.
Step 2: ascend310_infer (C++ on Ascend 310) or ascend310_infer/mindir_runner.py (CPU/GPU);
step 3: postprocess.py.
"""
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="yaml config (step_size, tta_mirror)")
    parser.add_argument("--data", required=True, help="preprocessed folder (plans.json, splits.json, cases)")
    parser.add_argument("--fold", required=True, help="fold whose validation cases are written")
    parser.add_argument("--output_path", required=True, help="output folder (00_data/ and windows.json)")
    add_config_arguments(parser)
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from src.infer.offline import write_window_bins

    info = write_window_bins(cfg, args.data, args.fold, args.output_path)
    print(f"wrote {info['total_inputs']} window file(s) of shape {info['input_shape']} for "
          f"{len(info['cases'])} case(s) to {args.output_path}/00_data")


if __name__ == "__main__":
    main()
