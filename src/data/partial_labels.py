"""DoDNet's partial labels: a MOTS case's label map -> two binary targets (organ, tumour) per its task.

Each MOTS task annotates only its own structures, so a task maps each of the two output channels to the
label values that make it, or to None when the task does not annotate that channel at all. Such a
channel is all -1 (ignored by the loss): "not annotated" must not be taught as "background".
The mapping comes from ``mots.json``'s ``task_channels`` when present, otherwise from DoDNet's MOTS
definitions by task name, and is stored in ``plans.json`` (``task_channels``) by preprocessing.
"""
from pathlib import Path

import numpy as np

from src.data.layouts import MOTS_INDEX
from src.data.plan import Plan
from src.files import read_json
from src.errors import UserError

CHANNELS = ("organ", "tumor")
IGNORE = -1
# DoDNet (Zhang et al., CVPR 2021) on MOTS: 1 = organ (or vessel), 2 = tumour; colon and lung cancer
# datasets label the tumour as 1 and no organ; spleen labels only the organ.
DODNET_TASK_CHANNELS = {
    "liver": {"organ": [1, 2], "tumor": [2]},
    "kidney": {"organ": [1, 2], "tumor": [2]},
    "hepatic_vessel": {"organ": [1], "tumor": [2]},
    "pancreas": {"organ": [1, 2], "tumor": [2]},
    "colon": {"organ": None, "tumor": [1]},
    "lung": {"organ": None, "tumor": [1]},
    "spleen": {"organ": [1], "tumor": None},
}


def _checked_channels(entry, where: str) -> dict:
    """``{"organ": [values] | None, "tumor": [values] | None}`` with positive ints, one channel at least."""
    if not isinstance(entry, dict) or set(entry) - set(CHANNELS):
        raise UserError(f"{where}: expected {{'organ': [label values] or null, 'tumor': ...}}, got {entry!r}")
    checked = {}
    for channel in CHANNELS:
        values = entry.get(channel)
        if values is None:
            checked[channel] = None
            continue
        if not isinstance(values, list) or not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise UserError(f"{where}: '{channel}' must be a non-empty list of label values > 0 or null, "
                            f"got {values!r}")
        checked[channel] = sorted(set(values))
    if all(v is None for v in checked.values()):
        raise UserError(f"{where}: the task labels neither the organ nor the tumour channel")
    return checked


def resolve_task_channels(tasks: dict, given: dict | None, source: str) -> dict:
    """Task id (str) -> checked channel mapping, from ``given`` (e.g. mots.json's ``task_channels``) or,
    for tasks it does not list, from DoDNet's definitions by task name; UserError for a task neither knows."""
    given = given or {}
    if not isinstance(given, dict):
        raise UserError(f"{source}: 'task_channels' must map task ids to channel definitions")
    resolved = {}
    for task_id, name in tasks.items():
        key = str(task_id)
        if key in given:
            resolved[key] = _checked_channels(given[key], f"{source}: task_channels[{key}]")
        elif str(name) in DODNET_TASK_CHANNELS:
            resolved[key] = _checked_channels(DODNET_TASK_CHANNELS[str(name)], f"DoDNet task {name}")
        else:
            raise UserError(f"{source}: task {key} ({name}) is not a DoDNet MOTS task; add "
                            f"'task_channels': {{\"{key}\": {{\"organ\": [...], \"tumor\": [...]}}}}")
    return resolved


def mots_task_channels(raw_dir, tasks: dict) -> dict:
    """The channel mapping of a MOTS folder's tasks (``raw_dir/mots.json``, DoDNet's defaults otherwise)."""
    path = Path(raw_dir) / MOTS_INDEX
    index = read_json(path, "MOTS index")
    given = index.get("task_channels") if isinstance(index, dict) else None
    return resolve_task_channels(tasks, given, str(path))


def plan_task_channels(plan: Plan, source: str = "plans.json") -> dict:
    """Task id (int) -> (organ values | None, tumour values | None) for a MOTS plan."""
    tasks = plan.tasks
    if not tasks:
        raise UserError(f"{source} lists no MOTS tasks: DoDNet trains on a preprocessed MOTS dataset "
                        f"(prepare.py preprocess --raw <MOTS folder with mots.json>)")
    resolved = resolve_task_channels(tasks, plan.task_channels, source)
    return {int(task): tuple(channels[c] for c in CHANNELS) for task, channels in resolved.items()}


def read_case_tasks(pre_dir, case_ids) -> dict:
    """Case id -> task id from each preprocessed ``<case>.json``."""
    tasks = {}
    for case_id in case_ids:
        path = Path(pre_dir) / f"{case_id}.json"
        task_id = read_json(path, "case file").get("task_id")
        if task_id is None:
            raise UserError(f"{path} has no task_id: DoDNet needs every case's MOTS task")
        tasks[str(case_id)] = int(task_id)
    return tasks


def partial_target(seg: np.ndarray, channels) -> np.ndarray:
    """(2, *seg.shape) int32: 1 where seg is one of the channel's values, else 0; all -1 for a channel
    the task does not label, and -1 wherever seg is negative (ignored voxels)."""
    seg = np.asarray(seg)
    if len(channels) != len(CHANNELS):
        raise ValueError(f"expected {len(CHANNELS)} channel definitions, got {channels!r}")
    target = np.full((len(CHANNELS),) + seg.shape, IGNORE, dtype=np.int32)
    ignored = seg < 0
    for index, values in enumerate(channels):
        if values is None:
            continue
        target[index] = np.isin(seg, values)
        target[index][ignored] = IGNORE
    return target


def partial_targets(segs: np.ndarray, task_ids, task_channels: dict) -> np.ndarray:
    """(B, 2, ...) int32 targets for label maps (B, ...) of the given tasks."""
    segs = np.asarray(segs)
    task_ids = [int(t) for t in np.asarray(task_ids).reshape(-1)]
    if len(task_ids) != segs.shape[0]:
        raise ValueError(f"{segs.shape[0]} label maps but {len(task_ids)} task ids")
    unknown = sorted({t for t in task_ids if t not in task_channels})
    if unknown:
        raise UserError(f"task id(s) {unknown} have no channel definition (known: {sorted(task_channels)})")
    return np.stack([partial_target(seg, task_channels[t]) for seg, t in zip(segs, task_ids)])
