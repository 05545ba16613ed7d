"""Typed experiment configuration: yaml file -> ``Config``, every key overridable as ``--key value``.

The config is an ordinary immutable value passed to the functions that need it; nothing reads a
global. Unknown keys, wrong types and out-of-range choices are reported as one ``UserError`` line.
"""
import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import yaml

from src.errors import UserError
from src.files import atomic_write_text
from src.variants import LOSSES, NETWORKS, NetworkVariant, network_variant

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
DATASETS = ("kits19", "kits21", "mots", "msd")
NORMALIZATIONS = ("ct", "ct_clip_scale")
# The allowed values of every config key that takes a name; each list is defined once, here or in
# src/variants.py, and the modules that dispatch on a key import its list.
CHOICES = {
    "device_target": DEVICE_TARGETS,
    "dataset": DATASETS,
    "normalization": NORMALIZATIONS,
    "network": NETWORKS,
    "downsample": ("conv", "maxpool"),
    "loss": LOSSES,
    "optimizer": ("sgd", "adamw"),
    "amp_level": ("auto", "O0", "O2"),
    "postprocess": ("none", "auto", "lcc"),
    "locate": ("off", "auto", "windows", "crop"),
    "inference_precision": ("auto", "fp32", "bf16"),
}
LIST_LENGTHS = {"target_spacing": 3, "patch_size": 3, "clip_window": 2, "hec_weights": 2, "locator_patch_size": 3}


@dataclass(frozen=True)
class Config:
    # run
    name: str = "kits19_nnunet"
    device_target: str = "CPU"
    seed: int = 12345
    num_workers: int = 2
    # data and experiment plan
    dataset: str = "kits19"
    target_spacing: Optional[List[float]] = None
    patch_size: Optional[List[int]] = None
    patch_budget_voxels: int = 128 * 128 * 128
    image_budget_voxels: Optional[int] = None
    normalization: str = "ct"
    clip_window: List[float] = field(default_factory=lambda: [-325.0, 325.0])
    num_folds: int = 5
    # network
    network: str = "plain_unet"
    base_features: int = 32
    max_features: int = 320
    max_stages: Optional[int] = None
    downsample: str = "conv"
    deep_supervision: bool = True
    ds_weights: Optional[List[float]] = None
    # optimisation
    batch_size: int = 2
    # samples per forward/backward: "auto" (the whole batch, on CPU what fits the memory) or a divisor of
    # batch_size; the gradients of the micro-batches add up to the whole batch's (src/train/micro_batches.py)
    micro_batch_size: str = "auto"
    epochs: int = 1000
    # minutes of training wall time: the first epoch is measured and ``epochs`` lowered to what fits
    train_minutes: Optional[float] = None
    iters_per_epoch: int = 250
    val_iters: int = 50
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    poly_exponent: float = 0.9
    oversample_foreground: float = 0.33
    loss: str = "dice_ce"
    hec_weights: List[float] = field(default_factory=lambda: [0.1, 0.3])
    augment: bool = True
    amp_level: str = "auto"
    ema_alpha: float = 0.9
    # inference
    step_size: float = 0.5
    tta_mirror: bool = True
    sw_batch_size: int = 2
    postprocess: str = "auto"
    # locate, then segment (src/infer/locate.py): a first pass trained by train.py when locator_iters > 0
    # and stored in the checkpoint; auto uses it (crop mode) when the model carries one that passed its
    # held-out check (src/infer/locate_check.py)
    locate: str = "auto"
    locate_margin_mm: float = 20.0
    locate_threshold: float = 0.5
    locate_include: float = 0.1
    locate_max_unsure: float = 0.5
    locate_min_coverage: float = 1.0
    locator_iters: int = 0
    locator_spacing_mm: float = 8.0
    locator_patch_size: List[int] = field(default_factory=lambda: [32, 48, 48])
    # bf16 convolutions where the CPU has AVX512-BF16 or AMX (src/cpu_precision.py); never elsewhere
    inference_precision: str = "auto"

    @property
    def variant(self) -> NetworkVariant:
        """What differs with ``network`` outside the network class (batches, loss, validation, prediction)."""
        return network_variant(self.network)

    def replace(self, **changes) -> "Config":
        return _validated(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types():
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _unwrap_optional(tp):
    """Return (inner type, allows None) for ``Optional[X]``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _coerce(key, value, tp):
    inner, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if optional:
            return None
        raise UserError(f"config key '{key}' must not be null")
    if typing.get_origin(inner) in (list, List):
        (item_type,) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce_scalar(key, v, item_type) for v in value]
    return _coerce_scalar(key, value, inner)


# how a yaml or command-line value becomes a number: the name in the error, and which numbers convert
# exactly (an int key takes 3 and 3.0, not 3.5; a float key takes any number)
NUMBERS = {int: ("an integer", lambda v: float(v).is_integer()), float: ("a number", lambda v: True)}


def _coerce_scalar(key, value, tp):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"config key '{key}' expects true or false, got {value!r}")
    if tp in NUMBERS:
        what, exact = NUMBERS[tp]
        if not isinstance(value, bool):
            if isinstance(value, (int, float)) and exact(value):
                return tp(value)
            if isinstance(value, str):
                try:
                    return tp(value)
                except ValueError:
                    pass
        raise UserError(f"config key '{key}' expects {what}, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' expects a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} for {key}")


def _validated(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    for key, length in LIST_LENGTHS.items():
        value = getattr(cfg, key)
        if value is not None and len(value) != length:
            raise UserError(f"config key '{key}' needs {length} values, got {len(value)}")
    if cfg.target_spacing is not None and min(cfg.target_spacing) <= 0:
        raise UserError("config key 'target_spacing' must be positive")
    if cfg.patch_size is not None and min(cfg.patch_size) < 4:
        raise UserError("config key 'patch_size' must be at least 4 voxels per axis")
    positive = ("batch_size", "epochs", "iters_per_epoch", "num_folds", "base_features", "max_features",
                "sw_batch_size", "patch_budget_voxels")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {getattr(cfg, key)}")
    if cfg.micro_batch_size != "auto":
        size = _micro_batch_size(cfg.micro_batch_size)
        if size is None or size < 1 or cfg.batch_size % size:
            raise UserError(f"config key 'micro_batch_size' must be auto or a whole number dividing batch_size "
                            f"{cfg.batch_size}, got {cfg.micro_batch_size!r}")
        if cfg.micro_batch_size != str(size):
            cfg = dataclasses.replace(cfg, micro_batch_size=str(size))
    if cfg.image_budget_voxels is not None and cfg.image_budget_voxels < 1:
        raise UserError(f"config key 'image_budget_voxels' must be at least 1, got {cfg.image_budget_voxels}")
    if cfg.train_minutes is not None and not 0 < cfg.train_minutes < float("inf"):
        raise UserError(f"config key 'train_minutes' must be a positive number of minutes or null, "
                        f"got {cfg.train_minutes}")
    if cfg.num_workers < 0 or cfg.val_iters < 0:
        raise UserError("config keys 'num_workers' and 'val_iters' must not be negative")
    if not 0.0 <= cfg.oversample_foreground <= 1.0:
        raise UserError("config key 'oversample_foreground' must lie in [0, 1]")
    if not 0.0 < cfg.step_size <= 1.0:
        raise UserError("config key 'step_size' must lie in (0, 1]")
    if cfg.lr <= 0:
        raise UserError("config key 'lr' must be positive")
    if cfg.locate_margin_mm < 0 or cfg.locator_iters < 0 or cfg.locator_spacing_mm <= 0:
        raise UserError("config keys 'locate_margin_mm' and 'locator_iters' must not be negative, "
                        "'locator_spacing_mm' must be positive")
    if not 0.0 < cfg.locate_include <= cfg.locate_threshold <= 1.0 or not 0.0 <= cfg.locate_max_unsure <= 1.0 \
            or not 0.0 <= cfg.locate_min_coverage <= 1.0:
        raise UserError("config keys need 0 < locate_include <= locate_threshold <= 1, "
                        "0 <= locate_max_unsure <= 1 and 0 <= locate_min_coverage <= 1")
    if any(p % 8 for p in cfg.locator_patch_size):
        raise UserError("config key 'locator_patch_size' must be a multiple of 8 per axis (3 poolings)")
    return cfg


def _micro_batch_size(value: str):
    """The whole number a micro_batch_size string means (``2``, ``2.0``), or None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def config_from_dict(values: dict) -> Config:
    types_by_key = _field_types()
    unknown = sorted(set(values) - set(types_by_key))
    if unknown:
        raise UserError(f"unknown config key(s): {', '.join(unknown)}")
    coerced = {key: _coerce(key, value, types_by_key[key]) for key, value in values.items()}
    return _validated(Config(**coerced))


def load_config(path, overrides: Optional[dict] = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid yaml: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    values.update(overrides or {})
    return config_from_dict(values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--key value`` for every config key; unset flags stay None and leave the yaml value."""
    group = parser.add_argument_group("config overrides (any key of the yaml file)")
    for key, tp in _field_types().items():
        inner, _ = _unwrap_optional(tp)
        is_list = typing.get_origin(inner) in (list, List)
        group.add_argument(f"--{key}", dest=f"cfg_{key}", default=None, nargs="+" if is_list else None,
                           metavar="V", help=argparse.SUPPRESS if key == "name" else None)


def overrides_from_args(args: argparse.Namespace) -> dict:
    overrides = {}
    for key in _field_types():
        value = getattr(args, f"cfg_{key}", None)
        if value is None:
            continue
        if isinstance(value, list) and len(value) == 1 and value[0].lower() in ("null", "none"):
            value = None
        overrides[key] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides_from_args(args))


def save_config(cfg: Config, path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
