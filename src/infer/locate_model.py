"""The locator a model carries (``src.train.locator_training`` put it there), loaded next to the model.

A training checkpoint holds it as ``locator.<name>`` weights and the meta's ``locator`` plan. A MindIR
export holds it as a second file ``<name>.locator.mindir`` named, with its sha256, in the sidecar's
``locator`` entry. Both carry its held-out check (``src.infer.locate_check``). ``attach_locator`` gives the
predictor the first model's locator when the config's ``locate`` is ``auto`` (crop mode, and only when the
check passed), ``windows`` or ``crop`` (whatever the check says, with a warning when it did not pass); ``off``
never loads it.
"""
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from src.errors import UserError
from src.files import file_digest
from src.infer.locate import LocateSettings, Locator
from src.infer.locate_check import check_verdict

PREFIX = "locator."


def settings_for(cfg) -> Optional[LocateSettings]:
    if cfg.locate == "off":
        return None
    # auto is crop: on the demo's held-out and test cases it was never worse than the whole volume on a class's
    # mean Dice, with 4.3x fewer windows (docs/PERFORMANCE.md, "Locate, then segment")
    return LocateSettings.from_config(cfg, "windows" if cfg.locate == "windows" else "crop")


def restored_locator(path):
    """(locator network with the checkpoint's weights, in inference mode, its plan, its held-out check or
    None), or (None, None, None) when the checkpoint ``path`` carries no locator."""
    from src.runtime.checkpoint import read_training_checkpoint
    from src.models.locator import locator_with_weights

    params, meta = read_training_checkpoint(path)
    lplan = meta.get("locator")
    if not lplan:
        return None, None, None
    weights = {name[len(PREFIX):]: value for name, value in params.items() if name.startswith(PREFIX)}
    return locator_with_weights(lplan, weights, f"{path} (locator)"), lplan, meta.get("locator_check")


def checkpoint_locator(path, settings: LocateSettings) -> Tuple[Optional[Locator], Optional[dict]]:
    """(the checkpoint's locator, its held-out check), or (None, None)."""
    from src.infer.predictor import CellNetFn
    from src.models.cpu_kernels import select_cpu_kernels

    network, lplan, check = restored_locator(path)
    if network is None:
        return None, None
    select_cpu_kernels(network)
    return Locator(CellNetFn(network), lplan["patch_size"], lplan["factors"], settings), check


def mindir_locator(mindir, sidecar: dict, settings: LocateSettings) -> Tuple[Optional[Locator], Optional[dict]]:
    """(the locator the MindIR export names, its held-out check), or (None, None)."""
    import mindspore as ms
    from mindspore import nn

    from src.infer.predictor import CellNetFn, FixedBatchNetFn

    entry = sidecar.get("locator")
    if not entry:
        return None, None
    path = Path(mindir).with_name(entry["file"])
    if not path.is_file() or file_digest(path) != entry.get("sha256"):
        raise UserError(f"{path}: the locator file the sidecar of {mindir} names is missing or was changed; "
                        f"export again or run with --locate off")
    net_fn = FixedBatchNetFn(CellNetFn(nn.GraphCell(ms.load(str(path)))), 1)
    return Locator(net_fn, entry["plan"]["patch_size"], entry["plan"]["factors"], settings), entry.get("check")


def attach_locator(predictor, cfg, ckpts: Optional[Sequence] = None, mindir=None, sidecar=None) -> None:
    """Set ``predictor.locator`` (None when switched off, the model carries none, or ``auto`` finds its
    held-out check against it: then one stderr line says why the whole volume is predicted)."""
    settings = settings_for(cfg)
    predictor.locator = None
    if settings is None:
        return
    locator, check = None, None
    if mindir is not None:
        locator, check = mindir_locator(mindir, sidecar or {}, settings)
    elif ckpts:
        locator, check = checkpoint_locator(ckpts[0], settings)
    if locator is None:
        if cfg.locate in ("windows", "crop"):
            raise UserError(f"--locate {cfg.locate}: the model carries no locator (train with --locator_iters N)")
        return
    verdict = check_verdict(check, settings, cfg.locate_min_coverage)
    if verdict is not None and cfg.locate == "auto":
        print(f"locate: the model's first pass is not used: {verdict}; predicting the whole volume "
              f"(--locate crop or windows would use it anyway)", file=sys.stderr, flush=True)
        return
    if verdict is not None:
        print(f"warning: --locate {cfg.locate} uses a first pass its held-out check does not vouch for: {verdict}",
              file=sys.stderr, flush=True)
    predictor.locator = locator


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
    network, lplan, check = restored_locator(ckpt)
    if network is None:
        return None
    example = ms.Tensor(np.zeros([1, int(lplan["num_channels"])] + [int(p) for p in lplan["patch_size"]],
                                 dtype=np.float32))
    path = locator_file(target)
    atomic_produce(path, lambda tmp: ms.export(network, example, file_name=str(tmp), file_format="MINDIR"),
                   suffix=path.suffix)
    return {"file": path.name, "sha256": file_digest(path), "plan": lplan, "check": check}
