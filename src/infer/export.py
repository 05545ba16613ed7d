"""Export the inference network (deep supervision off, logits out, no softmax) to MindIR or AIR.

The network takes (batch, C, *patch) float32 at the checkpoint plan's patch size and returns
(batch, K, *patch) logits; softmax, mirroring and Gaussian stitching stay outside the graph so the
exported model serves the CPU/GPU predictor and the Ascend 310 program alike. Next to ``NAME.mindir``
goes ``NAME.json``: plan, config, input/output shapes - what a predictor needs to preprocess raw
images and feed the graph.
"""
from pathlib import Path

import numpy as np

from src.config import Config
from src.files import atomic_produce, atomic_write_json
from src.errors import UserError
from src.infer.postprocess import POSTPROCESSING_FILE, load_postprocessing
from src.infer.predictor import load_checkpoint_network, mindir_sidecar

FORMATS = {"MINDIR": ".mindir", "AIR": ".air"}


def export_target(file_name, file_format: str) -> Path:
    """``file_name`` with the format's suffix (added when missing, as mindspore.export does)."""
    suffix = FORMATS[file_format]
    path = Path(file_name)
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def export_network(cfg: Config, ckpt, file_name, file_format: str = "MINDIR", batch_size: int = 1):
    """Write the model file and its ``.json`` sidecar; returns (model path, sidecar path)."""
    import mindspore as ms
    from src.train.device import setup_device

    file_format = str(file_format).upper()
    if file_format not in FORMATS:
        raise UserError(f"--file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    device = setup_device(cfg.device_target, mode="graph")
    if file_format == "AIR" and device != "Ascend":
        raise UserError(f"AIR export works only on Ascend (this run uses {device}); use --file_format MINDIR")
    # MindSpore's own convolution kernels: the exported graph must run on Ascend 310 and in MindSpore Lite
    network, plan, model_cfg = load_checkpoint_network(ckpt, cfg, device, cpu_kernels=False)
    input_shape = [int(batch_size), int(plan.get("num_channels", 1))] + [int(p) for p in plan["patch_size"]]
    example = ms.Tensor(np.zeros(input_shape, dtype=np.float32))
    output_shape = [int(s) for s in network(example).shape]

    target = export_target(file_name, file_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_produce(target, lambda tmp: ms.export(network, example, file_name=str(tmp), file_format=file_format),
                   suffix=target.suffix)
    sidecar = mindir_sidecar(target)
    # the fold's postprocessing decision (eval.py --postprocess auto) travels with the model
    decision = Path(ckpt).parent / POSTPROCESSING_FILE
    atomic_write_json(sidecar, {
        "file_format": file_format,
        "checkpoint": str(ckpt),
        "input_shape": input_shape,
        "output_shape": output_shape,
        "output": "logits (no softmax)",
        "batch_size": int(batch_size),
        "plan": plan,
        "config": model_cfg.to_dict(),
        "postprocessing": load_postprocessing(decision) if decision.is_file() else None,
    })
    return target, sidecar
