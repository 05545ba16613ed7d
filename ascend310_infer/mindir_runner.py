"""Ascend 310 flow, step 2 on CPU/GPU: the C++ program's file contract with MindSpore's Python API.

    python ascend310_infer/mindir_runner.py --mindir FILE --input BINS/00_data --output RESULTS [--device_target CPU]

For every BINS/00_data/<name>.bin (float32, the MindIR's input shape) writes RESULTS/<name>_0.bin
(float32 logits). The MindIR must be exported at batch 1 and have export.py's <name>.mindir.json sidecar next to it.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src  # noqa: E402,F401  (CPU fast-path environment before anything imports mindspore)
from src.errors import exit_on_user_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mindir", required=True, help="MindIR exported by export.py at batch 1")
    parser.add_argument("--input", required=True, help="folder of .bin inputs (BINS/00_data)")
    parser.add_argument("--output", required=True, help="folder for <name>_0.bin results")
    parser.add_argument("--device_target", default="CPU", help="CPU or GPU (default CPU)")
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from src.infer.offline import run_mindir_on_bins

    count = run_mindir_on_bins(args.mindir, args.input, args.output, args.device_target)
    print(f"ran {count} input(s); results in {args.output}")


if __name__ == "__main__":
    main()
