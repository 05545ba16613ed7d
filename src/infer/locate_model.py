"""The locator a model carries (``src.train.locator_training`` put it there), loaded next to the model.

A training checkpoint holds it as ``locator.<name>`` weights and the meta's ``locator`` plan. A MindIR
export holds it as a second file ``<name>.locator.mindir`` named, with its sha256, in the sidecar's
``locator`` entry. ``attach_locator`` gives the predictor the first model's locator when the config's
``locate`` is ``auto`` (crop mode), ``windows`` or ``crop``; ``off`` never loads it.
"""
from pathlib import Path
from typing import Optional, Sequence

from src.errors import UserError
from src.files import file_digest
from src.infer.locate import LocateSettings, Locator

PREFIX = "locator."


def settings_for(cfg) -> Optional[LocateSettings]:
    if cfg.locate == "off":
        return None
    # auto is crop: on the demo's held-out and test cases it was never worse than the whole volume on a class's
    # mean Dice, with 4.3x fewer windows (docs/PERFORMANCE.md, "Locate, then segment")
    return LocateSettings.from_config(cfg, "windows" if cfg.locate == "windows" else "crop")


def restored_locator(path):
    """(locator network with the checkpoint's weights, in inference mode, its plan), or (None, None) when
    the checkpoint ``path`` carries no locator."""
    import mindspore as ms

    from src.runtime.checkpoint import read_training_checkpoint, restore_parameters
    from src.models.locator import build_locator_network

    params, meta = read_training_checkpoint(path)
    lplan = meta.get("locator")
    if not lplan:
        return None, None
    network = build_locator_network(lplan)
    weights = {name[len(PREFIX):]: ms.Parameter(value.data, name=name[len(PREFIX):])
               for name, value in params.items() if name.startswith(PREFIX)}
    restore_parameters(network, weights, f"{path} (locator)")
    network.set_train(False)
    return network, lplan


def checkpoint_locator(path, settings: LocateSettings) -> Optional[Locator]:
    from src.infer.predictor import CellNetFn
    from src.models.cpu_kernels import select_cpu_kernels

    network, lplan = restored_locator(path)
    if network is None:
        return None
    select_cpu_kernels(network)
    return Locator(CellNetFn(network), lplan["patch_size"], lplan["factors"], settings)


def mindir_locator(mindir, sidecar: dict, settings: LocateSettings) -> Optional[Locator]:
    import mindspore as ms
    from mindspore import nn

    from src.infer.predictor import CellNetFn, FixedBatchNetFn

    entry = sidecar.get("locator")
    if not entry:
        return None
    path = Path(mindir).with_name(entry["file"])
    if not path.is_file() or file_digest(path) != entry.get("sha256"):
        raise UserError(f"{path}: the locator file the sidecar of {mindir} names is missing or was changed; "
                        f"export again or run with --locate off")
    net_fn = FixedBatchNetFn(CellNetFn(nn.GraphCell(ms.load(str(path)))), 1)
    return Locator(net_fn, entry["plan"]["patch_size"], entry["plan"]["factors"], settings)


def attach_locator(predictor, cfg, ckpts: Optional[Sequence] = None, mindir=None, sidecar=None) -> None:
    """Set ``predictor.locator`` (None when switched off or the model carries none)."""
    settings = settings_for(cfg)
    predictor.locator = None
    if settings is None:
        return
    if mindir is not None:
        predictor.locator = mindir_locator(mindir, sidecar or {}, settings)
    elif ckpts:
        predictor.locator = checkpoint_locator(ckpts[0], settings)
    if predictor.locator is None and cfg.locate in ("windows", "crop"):
        raise UserError(f"--locate {cfg.locate}: the model carries no locator (train with --locator_iters N)")


def locator_file(target) -> Path:
    """``<name>.locator.mindir`` next to ``<name>.mindir``."""
    target = Path(target)
    return target.with_name(f"{target.stem}.locator{target.suffix}")


def export_locator(ckpt, target, file_format: str) -> Optional[dict]:
    """Export the checkpoint's locator next to the model file ``target`` (MindSpore's own kernels, batch 1);
    the sidecar entry naming it, or None when the checkpoint carries none (or the format is not MindIR)."""
    import mindspore as ms
    import numpy as np

    from src.files import atomic_produce

    if str(file_format).upper() != "MINDIR":
        return None
    network, lplan = restored_locator(ckpt)
    if network is None:
        return None
    example = ms.Tensor(np.zeros([1, int(lplan["num_channels"])] + [int(p) for p in lplan["patch_size"]],
                                 dtype=np.float32))
    path = locator_file(target)
    atomic_produce(path, lambda tmp: ms.export(network, example, file_name=str(tmp), file_format="MINDIR"),
                   suffix=path.suffix)
    return {"file": path.name, "sha256": file_digest(path), "plan": lplan}
