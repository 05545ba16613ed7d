"""Ascend 310 flow, step 2 on CPU/GPU: the C++ program's file contract with MindSpore's Python API.

    python ascend310_infer/mindir_runner.py --mindir FILE --input BINS/00_data --output RESULTS [--device_target CPU]

For every BINS/00_data/<name>.bin (float32, the MindIR's input shape) writes RESULTS/<name>_0.bin
(float32 logits). The MindIR must be exported at batch 1 and have export.py's <name>.mindir.json sidecar next to it.
"""
import sys
from pathlib import Path

# run as a file from ascend310_infer/, which Python puts on the path instead of the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import cli  # noqa: E402


def build_parser():
    parser = cli.new_parser(__doc__)
    parser.add_argument("--mindir", required=True, help="MindIR exported by export.py at batch 1")
    parser.add_argument("--input", required=True, help="folder of .bin inputs (BINS/00_data)")
    cli.add_output(parser, "folder for <name>_0.bin results")
    parser.add_argument("--device_target", default="CPU", help="CPU or GPU (default CPU)")
    return parser


def run(args) -> None:
    from src.infer.offline import run_mindir_on_bins

    input_count = run_mindir_on_bins(args.mindir, args.input, args.output, args.device_target)
    print(f"ran {input_count} input(s); results in {args.output}")


main = cli.entry_point(build_parser, run)

if __name__ == "__main__":
    main()
