"""Export the inference network (deep supervision off, logits out, no softmax) to MindIR or AIR.

The network takes (batch, C, *patch) float32 at the checkpoint plan's patch size and returns
(batch, K, *patch) logits; softmax, mirroring and Gaussian stitching stay outside the graph so the
exported model serves the CPU/GPU predictor and the Ascend 310 program alike. Next to ``NAME.mindir``
goes the sidecar ``NAME.mindir.json`` (``NAME.air.json``): plan, config, input/output shapes, the fold's
postprocessing decision (unless ``postprocess: none``) and the model file's sha256, which readers
(``read_mindir_sidecar``) check.

Write order: the sidecar is first replaced by an ``incomplete`` one, then the model is written, then the
complete sidecar with the model's sha256 - so a kill leaves the old export, the new one, or one that
readers refuse and the next export may redo. Existing files are classified before the checkpoint loads
(``check_export_targets``).
"""
from pathlib import Path

import numpy as np

from src.config import Config
from src.files import atomic_produce, atomic_write_json, check_output_file, file_digest, remove_stale_temporaries
from src.errors import UserError
from src.infer.postprocess import POSTPROCESSING_FILE, load_postprocessing
from src.infer.mindir import EXPORT_FORMATS, SIDECAR_COMPLETE, SIDECAR_PRODUCER, mindir_sidecar, read_own_sidecar
from src.infer.predictor import load_checkpoint_network



def export_target(file_name, file_format: str) -> Path:
    """``file_name`` with the format's suffix (added when missing, as mindspore.export does)."""
    suffix = EXPORT_FORMATS[file_format]
    path = Path(file_name)
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def check_export_targets(target: Path, overwrite: bool = False) -> None:
    """Refuse, before any compute, to write where the model or its sidecar cannot go, or over files that
    are not ours (never, whatever ``overwrite`` says), or over a finished export (unless ``overwrite``).

    Ours: a sidecar export.py wrote, and a model file that sidecar names by its sha256 (or, for an export
    that was interrupted, any model file next to its ``incomplete`` sidecar). An interrupted export is
    redone without ``overwrite``: it holds no finished work."""
    sidecar = mindir_sidecar(target)
    for path in (target, sidecar):
        check_output_file(path, "export target")
    info = read_own_sidecar(sidecar) if sidecar.exists() else None
    if sidecar.exists() and info is None:
        raise UserError(f"{sidecar} exists and was not written by export.py; not replacing it (choose another "
                        f"--file_name)")
    finished = info is not None and info.get("status") == SIDECAR_COMPLETE
    if target.exists():
        if info is None:
            raise UserError(f"{target} exists without the sidecar {sidecar.name} export.py writes; not replacing "
                            f"a file export.py cannot tell it wrote (choose another --file_name)")
        if finished and info.get("model_digest") != file_digest(target):
            raise UserError(f"{target} is not the model {sidecar.name} was written for (sha256 differs); not "
                            f"replacing it (choose another --file_name)")
    if finished and not overwrite:
        raise UserError(f"{target} and {sidecar.name} exist (an earlier export); pass --overwrite to replace them")


def export_network(cfg: Config, ckpt, file_name, file_format: str = "MINDIR", batch_size: int = 1,
                   overwrite: bool = False):
    """Write the model file and its sidecar; returns (model path, sidecar path)."""
    import mindspore as ms
    from src.runtime.device import setup_device

    file_format = str(file_format).upper()
    if file_format not in EXPORT_FORMATS:
        raise UserError(f"--file_format must be one of {', '.join(EXPORT_FORMATS)}, got {file_format!r}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    target = export_target(file_name, file_format)
    check_export_targets(target, overwrite)
    # the fold's postprocessing decision (eval.py --postprocess auto) travels with the model; read before the
    # network loads, so that one decided for other weights is refused before any compute
    decision = Path(ckpt).parent / POSTPROCESSING_FILE
    carried = cfg.postprocess != "none" and decision.is_file()
    postprocessing = load_postprocessing(decision, models=[ckpt]) if carried else None
    remove_stale_temporaries(target.parent)
    device = setup_device(cfg.device_target, mode="graph")
    if file_format == "AIR" and device != "Ascend":
        raise UserError(f"AIR export works only on Ascend (this run uses {device}); use --file_format MINDIR")
    # MindSpore's own convolution kernels: the exported graph must run on Ascend 310 and in MindSpore Lite
    network, plan, model_cfg = load_checkpoint_network(ckpt, cfg, device, cpu_kernels=False)
    input_shape = [int(batch_size), plan.num_channels] + plan.patch_size
    example = ms.Tensor(np.zeros(input_shape, dtype=np.float32))
    output_shape = [int(s) for s in network(example).shape]
    sidecar = mindir_sidecar(target)
    info = {
        "producer": SIDECAR_PRODUCER,
        "status": "incomplete",
        "model_file": target.name,
        "file_format": file_format,
        "checkpoint": str(ckpt),
        "checkpoint_digest": file_digest(ckpt),
        "input_shape": input_shape,
        "output_shape": output_shape,
        "output": "logits (no softmax)",
        "batch_size": int(batch_size),
        "plan": plan.to_json(),
        "config": model_cfg.to_dict(),
        # refused when it was decided for another checkpoint (a retrained one, another fold)
        "postprocessing": postprocessing,
    }
    # the old sidecar goes first: from here until the new one lands, readers refuse the export
    atomic_write_json(sidecar, info)
    atomic_produce(target, lambda tmp: ms.export(network, example, file_name=str(tmp), file_format=file_format),
                   suffix=target.suffix)
    from src.infer.locate_model import export_locator

    locator = export_locator(ckpt, target, file_format)  # the first pass (src/infer/locate.py) travels too
    atomic_write_json(sidecar, {**info, "status": SIDECAR_COMPLETE, "model_digest": file_digest(target),
                                "locator": locator})
    return target, sidecar
