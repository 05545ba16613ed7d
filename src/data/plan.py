"""The experiment plan as a type: what ``plans.json`` holds, read, checked and written in this module only.

``prepare.py preprocess`` plans (``src/data/planning.py``) and writes the plan; training, evaluation, export
and the Ascend 310 flow read it, and every checkpoint and MindIR sidecar carries a copy. A ``Plan`` keeps the
JSON entries exactly as written (so plans.json, checkpoints and sidecars keep their format, extra and
descriptive entries included) and gives typed, checked access to the entries the code reads, as nnU-Net's
``PlansManager`` does for its plans. A plan is never changed in place: ``replace`` returns a new one.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

from src.errors import UserError
from src.files import atomic_write_json, read_json

PLAN_FILE = "plans.json"
PREPROCESS_HINT = " (run prepare.py preprocess first)"
RERUN_HINT = "run prepare.py preprocess again (an interrupted or still running preprocessing leaves this)"
# Entries that fix the network's shapes: a checkpoint only fits data planned with the same values.
TOPOLOGY_KEYS = ("num_channels", "num_classes", "patch_size", "features", "conv_kernel_sizes", "strides")
REQUIRED_KEYS = tuple(key for key in TOPOLOGY_KEYS if key != "num_channels")  # older plans lack num_channels
INTENSITY_KEYS = ("mean", "std", "p005", "p995")


def _int_list(value, length=None) -> list:
    values = [int(v) for v in value]
    if length is not None and len(values) != length:
        raise ValueError(f"{values} needs {length} values")
    return values


@dataclass(frozen=True)
class Plan:
    entries: Mapping = field(repr=False)
    where: str = field(default=PLAN_FILE, compare=False)

    def __post_init__(self):
        if not isinstance(self.entries, Mapping):
            raise UserError(f"{self.where} must hold a JSON object")
        # a private copy, as JSON values (what it is on disk), behind a read-only view: nobody holding the
        # dict it came from can change it, and two plans compare as their files would
        try:
            entries = json.loads(json.dumps(dict(self.entries)))
        except (TypeError, ValueError) as err:
            raise UserError(f"{self.where} holds a value JSON cannot store ({err})") from None
        object.__setattr__(self, "entries", MappingProxyType(entries))
        missing = [key for key in REQUIRED_KEYS if key not in self.entries]
        if missing:
            raise UserError(f"{self.where} lacks {', '.join(missing)}")
        try:
            patch_size, strides = self.patch_size, self.strides
            _ = (self.conv_kernel_sizes, self.features, self.num_classes, self.num_channels)  # their types
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{self.where}: invalid network topology ({err})") from None
        if not strides or any(len(stride) != 3 for stride in strides):
            raise UserError(f"{self.where}: patch_size {patch_size} must have 3 values and strides one per stage")

    def __reduce__(self):
        # worker processes receive plans by pickling, which a read-only mapping view does not support
        return Plan, (self.to_json(), self.where)

    @classmethod
    def from_json(cls, entries, where: str = PLAN_FILE) -> "Plan":
        return cls(entries, where)

    @classmethod
    def read(cls, path, hint: str = PREPROCESS_HINT) -> "Plan":
        """A plans.json file; one line for a missing, malformed or incomplete file."""
        return cls(read_json(path, "plans file", hint), f"plans file {path}")

    def write(self, path) -> None:
        atomic_write_json(path, self.to_json())

    def to_json(self) -> dict:
        """The entries as JSON values, in their written order (what plans.json, checkpoints and sidecars hold)."""
        return copy.deepcopy(dict(self.entries))

    def replace(self, **changes) -> "Plan":
        """A plan with ``changes`` (new entries go last, as a dict update puts them)."""
        return Plan({**self.to_json(), **changes}, self.where)

    def get(self, key: str, default=None):
        """A descriptive entry the code does not interpret (``dataset``, ``median_shape`` ...), as written."""
        return copy.deepcopy(self.entries.get(key, default))

    # ------------------------------------------------------------ the network's topology

    @property
    def num_classes(self) -> int:
        return int(self.entries["num_classes"])

    @property
    def num_channels(self) -> int:
        return int(self.entries.get("num_channels", 1))

    @property
    def patch_size(self) -> list:
        return _int_list(self.entries["patch_size"], 3)

    @property
    def features(self) -> list:
        return _int_list(self.entries["features"])

    @property
    def conv_kernel_sizes(self) -> list:
        return [_int_list(kernel, 3) for kernel in self.entries["conv_kernel_sizes"]]

    @property
    def strides(self) -> list:
        return [_int_list(stride) for stride in self.entries["strides"]]

    def topology(self) -> dict:
        """The topology entries present, as written (what a checkpoint must share with the data)."""
        return {key: self.get(key) for key in TOPOLOGY_KEYS}

    # ------------------------------------------------------------ what the preprocessed voxels are

    @property
    def labels(self) -> dict:
        """Label name -> value, background 0 included."""
        return {str(name): int(value) for name, value in self.entries["labels"].items()}

    @property
    def target_spacing(self) -> list:
        return [float(s) for s in self.entries["target_spacing"]]

    @property
    def normalization(self) -> str:
        return str(self.entries.get("normalization", "ct"))

    @property
    def clip_window(self) -> Optional[list]:
        window = self.entries.get("clip_window")
        return None if window is None else [float(v) for v in window]

    @property
    def intensity(self) -> dict:
        """The foreground intensity statistics of CT normalization: mean, std, p005, p995."""
        return {key: float(self.entries["intensity"][key]) for key in INTENSITY_KEYS}

    @property
    def identity(self) -> str:
        """A digest of what decides a preprocessed case's voxels: the target spacing, the normalization and
        its parameters. Topology (patch size, widths) and label names may change without touching the cases;
        each ``<case>.json`` and ``<case>.npz`` records the identity of the plan it was written for."""
        try:
            content = {"target_spacing": self.target_spacing, "normalization": self.normalization,
                       "clip_window": self.clip_window, "intensity": self.intensity}
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the plan lacks a valid target_spacing or intensity entry ({err}): {RERUN_HINT}") \
                from None
        text = json.dumps(content, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    # ------------------------------------------------------------ the cases and folds

    @property
    def cases(self) -> list:
        cases = self.entries.get("cases")
        return list(cases) if isinstance(cases, list) else []

    @property
    def num_folds(self):
        """The folds splits.json holds (None in plans of older versions)."""
        return self.entries.get("num_folds")

    @property
    def tasks(self) -> Optional[dict]:
        """MOTS task id (str) -> task name, for DoDNet's partially labelled data; None otherwise."""
        return self.get("tasks")

    @property
    def task_channels(self) -> Optional[dict]:
        return self.get("task_channels")


def plan_file(pre_dir) -> Path:
    return Path(pre_dir) / PLAN_FILE
