"""Export the inference network of a training checkpoint to MindIR (anywhere) or AIR (Ascend only).

    python export.py --config CFG --ckpt CKPT --file_name NAME --file_format MINDIR|AIR [--batch_size B]

The graph takes (B, C, *patch) float32 at the checkpoint plan's patch size and returns logits
(B, K, *patch); deep supervision is off and softmax is left to the caller. B is 1 unless --batch_size
is given on the command line (the yaml's training batch_size is not used here). NAME.json next to
the model holds the plan and shapes that predict.py/eval.py --mindir and the Ascend 310 flow read.
"""
import argparse

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from src.config import add_config_arguments, config_from_args
from src.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="yaml config (device_target, amp_level)")
    parser.add_argument("--ckpt", required=True, help="training checkpoint (carries plan and config)")
    parser.add_argument("--file_name", required=True, help="output file; .mindir/.air is appended if missing")
    parser.add_argument("--file_format", default="MINDIR", type=str.upper, choices=("MINDIR", "AIR"))
    add_config_arguments(parser)
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from src.infer.export import export_network

    batch_size = cfg.batch_size if args.cfg_batch_size is not None else 1
    model, sidecar = export_network(cfg, args.ckpt, args.file_name, args.file_format, batch_size)
    print(f"exported {model} (input batch {batch_size}) and {sidecar}")


if __name__ == "__main__":
    main()
