"""The locator (the first pass of ``src.infer.locate``): trained by train.py after the main network, stored
in the main network's checkpoint so that it travels with the model.

It is a small plain U-Net (4 stages, 8-64 features, 2 classes: background / kidney-or-tumour) on the
preprocessed volumes averaged over blocks of about ``locator_spacing_mm`` (``locate.block_reduce``, the same
function the predictor uses), with foreground = any labelled voxel in the block. ``locator_iters`` steps of
Dice + CE, AdamW, batches of 2 random coarse patches of ``locator_patch_size`` (half centred on foreground,
random flips). Its weights join the checkpoint as ``locator.<name>`` entries and its plan as the meta's
``locator`` key, with its held-out check (``src.infer.locate_check``, on the fold's validation cases) as
``locator_check``; the main network ignores all three (it loads its own names only).
"""
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from mindspore import nn

from src.infer.locate import block_reduce, coarse_factors
from src.infer.postprocess import POSTPROCESSING_FILE
from src.models.locator import build_locator_network, locator_with_weights

PREFIX = "locator."
FEATURES = (8, 16, 32, 64)
LR = 3e-3


def locator_plan(cfg, plan: dict) -> dict:
    """What rebuilds the locator and its coarse grid: features, kernels, strides, patch, block factors."""
    stages = len(FEATURES)
    return {"features": list(FEATURES), "conv_kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), "patch_size": [int(p) for p in cfg.locator_patch_size],
            "factors": list(coarse_factors(plan.get("target_spacing"), cfg.locator_spacing_mm)),
            "spacing_mm": float(cfg.locator_spacing_mm), "num_classes": 2,
            "num_channels": int(plan.get("num_channels", 1))}


def coarse_pair(data: np.ndarray, seg: np.ndarray, factors) -> tuple:
    """(coarse data (C, ...), coarse foreground (...) int32 0/1: any labelled voxel in the block) of one
    preprocessed case."""
    coarse = block_reduce(np.asarray(data, dtype=np.float32), factors, "mean")
    labels = block_reduce(np.asarray(seg)[None].astype(np.int8), factors, "max")[0]
    return coarse, (labels > 0).astype(np.int32)


def coarse_cases(pre_dir, case_ids, plan, factors) -> list:
    """``coarse_pair`` per preprocessed case."""
    from src.data.preprocessed_case import load_case

    cases = []
    for case_id in case_ids:
        case = load_case(pre_dir, case_id, plan.identity)
        cases.append(coarse_pair(case.data, case.seg, factors))
    return cases


def sample_batch(cases: list, patch, batch: int, rng: np.random.Generator):
    """(data (B, C, *patch) float32, target (B, 1, *patch) int32): random crops (zero/background padded),
    every second one centred on a foreground voxel when the case has one; random flips."""
    patch = [int(p) for p in patch]
    channels = cases[0][0].shape[0]
    data = np.zeros((batch, channels, *patch), dtype=np.float32)
    target = np.zeros((batch, 1, *patch), dtype=np.int32)
    for b in range(batch):
        volume, seg = cases[int(rng.integers(len(cases)))]
        shape = seg.shape
        foreground = np.argwhere(seg > 0) if b % 2 == 1 else None
        if foreground is not None and len(foreground):
            centre = foreground[int(rng.integers(len(foreground)))]
        else:
            centre = [int(rng.integers(s)) for s in shape]
        lo = [int(c) - p // 2 for c, p in zip(centre, patch)]
        src = tuple(slice(max(l, 0), min(l + p, s)) for l, p, s in zip(lo, patch, shape))
        dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
        data[(b, slice(None)) + dst] = volume[(slice(None),) + src]
        target[(b, 0) + dst] = seg[src]
        for axis in range(3):
            if rng.random() < 0.5:
                data[b] = np.flip(data[b], axis=axis + 1)
                target[b] = np.flip(target[b], axis=axis + 1)
    return data, target


def train_locator(cfg, plan: dict, pre_dir, case_ids, log=print):
    """(trained locator network, its plan, {"iters", "seconds", "last_loss"})."""
    lplan = locator_plan(cfg, plan)
    started = time.time()
    cases = coarse_cases(pre_dir, case_ids, plan, lplan["factors"])
    network, stats = train_locator_on(cfg, lplan, cases, log)
    stats["seconds"] = round(time.time() - started, 1)
    return network, lplan, stats


def train_locator_on(cfg, lplan: dict, cases: list, log=print):
    """(trained locator network, stats) from coarse (data, foreground) pairs (``coarse_cases``)."""
    import mindspore as ms

    from src.losses import DiceCELoss
    from src.models.cpu_kernels import select_cpu_kernels
    from src.train.train_cell import build_train_cell

    started = time.time()
    ms.set_seed(cfg.seed + 1)
    network = build_locator_network(lplan)
    select_cpu_kernels(network)
    optimizer = nn.AdamWeightDecay(network.trainable_params(), learning_rate=LR, weight_decay=3e-5)
    loss_fn = _SingleOutputLoss(DiceCELoss(2))
    train_cell = build_train_cell(network, loss_fn, optimizer, 12.0, "O0")
    train_cell.set_train(True)
    rng = np.random.default_rng(cfg.seed + 1)
    loss = float("nan")
    for step in range(int(cfg.locator_iters)):
        data, target = sample_batch(cases, lplan["patch_size"], 2, rng)
        loss = float(train_cell(ms.Tensor(data), ms.Tensor(target)).asnumpy())
        if (step + 1) % 100 == 0 or step + 1 == cfg.locator_iters:
            log(f"locator: step {step + 1}/{cfg.locator_iters} loss {loss:.4f}")
    network.set_train(False)
    return network, {"iters": int(cfg.locator_iters), "seconds": round(time.time() - started, 1), "last_loss": loss}


class _SingleOutputLoss(nn.Cell):
    """The training cell hands the loss a tuple of targets; the locator has one output and one target."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def construct(self, logits, targets):
        return self.inner(logits, targets[0])


def attach_locator(ckpt_path, network, lplan: dict, check: Optional[dict] = None) -> None:
    """Rewrite the training checkpoint ``ckpt_path`` (atomically) with the locator's weights, plan and held-out
    check added."""
    _attach(ckpt_path, {p.name: p for p in network.get_parameters()}, lplan, check)


def _attach(ckpt_path, weights: dict, lplan: dict, check: Optional[dict]) -> None:
    """``attach_locator`` with the locator's ``weights`` by name (without the prefix)."""
    import mindspore as ms

    from src.files import atomic_produce
    from src.runtime.checkpoint import META_KEY, load_checkpoint_file, split_checkpoint

    path = Path(ckpt_path)
    params, meta = split_checkpoint(load_checkpoint_file(path), path)
    entries = [{"name": name, "data": value} for name, value in params.items() if not name.startswith(PREFIX)]
    entries += [{"name": PREFIX + name, "data": value} for name, value in weights.items()]
    meta = dict(meta or {}, locator=lplan)
    meta.pop("locator_check", None)
    if check is not None:
        meta["locator_check"] = check
    atomic_produce(path, lambda tmp: ms.save_checkpoint(entries, str(tmp), append_dict={META_KEY: json.dumps(meta)}),
                   suffix=".ckpt")


def stored_locator(ckpt_path):
    """``(weights by name without the prefix, plan, held-out check or None)`` of the locator the checkpoint
    carries, or None."""
    from src.runtime.checkpoint import load_checkpoint_file, split_checkpoint

    path = Path(ckpt_path)
    params, meta = split_checkpoint(load_checkpoint_file(path), path)
    weights = {name[len(PREFIX):]: value for name, value in params.items() if name.startswith(PREFIX)}
    lplan = (meta or {}).get("locator")
    return (weights, lplan, (meta or {}).get("locator_check")) if lplan and weights else None


def same_locator(one, other) -> bool:
    """Whether two ``stored_locator`` results are the same locator: equal plans, equal weights bit for bit."""
    (weights, lplan, _), (other_weights, other_plan, _) = one, other
    return lplan == other_plan and weights.keys() == other_weights.keys() and all(
        np.array_equal(value.asnumpy(), other_weights[name].asnumpy()) for name, value in weights.items())


def check_network(cfg, plan, network, lplan: dict, cases) -> dict:
    """The held-out check (``src.infer.locate_check``) of the locator ``network`` on ``cases`` ((case id,
    preprocessed data, labels) on the plan's grid), with the configured locate settings."""
    from src.infer.locate import LocateSettings, Locator
    from src.infer.locate_check import check_locator
    from src.infer.predictor import CellNetFn

    locator = Locator(CellNetFn(network), lplan["patch_size"], lplan["factors"],
                      LocateSettings.from_config(cfg, "crop"))
    return check_locator(locator, cases, plan.target_spacing, plan.patch_size, cfg.step_size)


def check_on_cases(cfg, plan, pre_dir, case_ids, network, lplan: dict) -> dict:
    """``check_network`` on the preprocessed ``case_ids`` of ``pre_dir``, one case in memory at a time."""
    from src.data.preprocessed_case import load_case

    def cases():
        for case_id in case_ids:
            case = load_case(pre_dir, case_id, plan.identity)
            yield case_id, np.asarray(case.data, dtype=np.float32), np.asarray(case.seg)

    return check_network(cfg, plan, network, lplan, cases())


CHECKPOINTS = ("checkpoint_best.ckpt", "checkpoint_latest.ckpt")  # the order the locator is written in


def train_and_attach(cfg, plan: dict, pre_dir, case_ids, fold_dir, log=print, val_ids=()) -> dict:
    """train.py's hook: train the locator on the fold's training cases, check it on its validation cases
    (``val_ids``) and add both to the fold's checkpoints.

    Crash consistency: each checkpoint is rewritten in one rename, the best before the latest, so a kill
    leaves each checkpoint with the locator or without it. A finished run that runs this again (``--resume``
    of a finished or killed run) first looks at what the checkpoints carry: a locator in every checkpoint
    is kept (not trained again; checked and rewritten when it has no check yet); a locator in one and none
    in the other is completed from the one that has it (the same weights in both, no training) when it was
    made for the configured plan; two different locators are reported and left as they are. Only a fold
    without one trains it. Returns the training stats with the check, or ``{"reused": <checkpoint name>}``
    (with the check when it was made now) / ``{"differ": [names]}``.
    """
    from src.infer.locate_check import check_summary

    fold_dir = Path(fold_dir)
    paths = [fold_dir / name for name in CHECKPOINTS if (fold_dir / name).is_file()]
    stored = {path.name: stored_locator(path) for path in paths}
    carrying = [name for name in stored if stored[name] is not None]

    def check_of(network, lplan) -> dict:
        check = check_on_cases(cfg, plan, pre_dir, val_ids, network, lplan)
        log(f"locator: held-out check: {check_summary(check)}")
        return check

    if carrying:
        weights, lplan, check = stored[carrying[0]]
        if any(not same_locator(stored[carrying[0]], stored[name]) for name in carrying[1:]):
            log(f"warning: {' and '.join(carrying)} carry different locators (a run of an older version killed "
                f"while storing it, or files copied by hand); left as they are: predictions from each file "
                f"locate with its own")
            return {"differ": carrying}
        complete = len(carrying) == len(paths)
        if complete or lplan == locator_plan(cfg, plan):
            unchecked = [name for name in carrying if stored[name][2] is None]
            checks = [stored[name][2] for name in carrying if stored[name][2] is not None]
            made = not checks  # a check one checkpoint already carries is copied, not made again
            check = check_of(locator_with_weights(lplan, weights, "the stored locator"), lplan) if made \
                else checks[0]
            for path in paths:
                if stored[path.name] is None or stored[path.name][2] is None:
                    _attach(path, weights, lplan, check)
            if unchecked and (fold_dir / POSTPROCESSING_FILE).is_file():
                log(f"note: {fold_dir / POSTPROCESSING_FILE} was decided for these checkpoints before the check "
                    f"was added to them; predict.py and export.py refuse it until `eval.py ... --postprocess auto` "
                    f"decides it again")
            if not complete:
                log(f"locator: completed {', '.join(p.name for p in paths if stored[p.name] is None)} with the "
                    f"locator of {carrying[0]} (a run stopped while storing it); not trained again")
            else:
                other = "" if lplan == locator_plan(cfg, plan) else \
                    " (it was made for other locator settings than the configured ones, which are not applied)"
                log(f"locator: already stored in {', '.join(carrying)}; not trained again{other}")
            return {"reused": carrying[0], **({"check": check} if made else {})}
        log(f"locator: the one in {carrying[0]} was made for other settings than the configured ones; "
            f"training it again")
    network, lplan, stats = train_locator(cfg, plan, pre_dir, case_ids, log)
    stats["check"] = check_of(network, lplan)
    for path in paths:
        attach_locator(path, network, lplan, stats["check"])
    log(f"locator: {stats['iters']} steps in {stats['seconds']} s, last loss {stats['last_loss']:.4f}, "
        f"coarse blocks {lplan['factors']}, patch {lplan['patch_size']}; stored in the fold's checkpoints")
    return stats
