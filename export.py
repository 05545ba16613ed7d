"""Export the inference network of a training checkpoint to MindIR (anywhere) or AIR (Ascend only).

    python export.py --config CFG --ckpt CKPT --file_name NAME --file_format MINDIR|AIR [--batch_size B]

The graph takes (B, C, *patch) float32 at the checkpoint plan's patch size and returns logits
(B, K, *patch); deep supervision is off and softmax is left to the caller. B is 1 unless --batch_size
is given on the command line (the yaml's training batch_size is not used here).

Next to the model goes its sidecar NAME.mindir.json (NAME.air.json): the plan, config, shapes, the
checkpoint's postprocessing.json decision and the sha256 of the model file. predict.py/eval.py --mindir
and the Ascend 310 flow read it and refuse a sidecar whose sha256 does not match the model file.
An existing export of that name is replaced only with --overwrite; a file export.py did not write (a
model without our sidecar, a JSON of that name that is not our sidecar) is never replaced. A kill at any
instant leaves the old export, the new one, or one that readers refuse and the next export redoes.
All of this is checked before the checkpoint loads.
"""
from src import cli
from src.infer.mindir import EXPORT_FORMATS


def build_parser():
    parser = cli.new_parser(__doc__)
    cli.add_config(parser, "device_target, amp_level")
    parser.add_argument("--ckpt", required=True, help="training checkpoint (carries plan and config)")
    parser.add_argument("--file_name", required=True, help="output file; .mindir/.air is appended if missing")
    parser.add_argument("--file_format", default="MINDIR", type=str.upper, choices=tuple(EXPORT_FORMATS))
    cli.add_overwrite(parser, "replace an earlier export of this name (never a file export.py did not write)")
    return parser


def run(args) -> None:
    cfg = cli.load_config(args)
    from src.infer.export import export_network

    # the yaml's batch_size is the training batch: the graph takes B > 1 only when the command line asks
    batch_size = cfg.batch_size if args.cfg_batch_size is not None else 1
    model_path, sidecar_path = export_network(cfg, args.ckpt, args.file_name, args.file_format, batch_size,
                                              overwrite=args.overwrite)
    print(f"exported {model_path} (input batch {batch_size}) and {sidecar_path}")


main = cli.entry_point(build_parser, run)

if __name__ == "__main__":
    main()
