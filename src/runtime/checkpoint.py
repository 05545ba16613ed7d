"""Training checkpoints: one MindSpore ``.ckpt`` holding everything needed to resume or to rebuild.

Besides the network weights a training checkpoint stores the optimizer state (momentum buffers, the
learning-rate parameter, the loss scale) and one JSON string entry, ``kitseg_meta``, with the epoch
count, the EMA bookkeeping, the per-epoch history, the RNG state, and copies of the plan and the config,
so evaluation, prediction and export can rebuild the network from the checkpoint alone.
"""
import json
from pathlib import Path

import mindspore as ms

from src.errors import UserError
from src.files import atomic_produce

META_KEY = "kitseg_meta"
FORMAT_VERSION = 1
# Optimizer and loss-scale entries; everything else in a training checkpoint is a network weight.
_TRAINING_STATE_PREFIXES = ("accum.", "stat.", "moments.", "adam_m.", "adam_v.")
_TRAINING_STATE_NAMES = {"global_step", "learning_rate", "momentum", "scale_sense", "current_iterator_step",
                         "last_overflow_iterator_step"}


def is_training_state(name: str) -> bool:
    """True for optimizer/loss-scale entries, False for network weights."""
    return name in _TRAINING_STATE_NAMES or name.startswith(_TRAINING_STATE_PREFIXES)


def save_training_checkpoint(path, cell, meta: dict) -> None:
    """Write every parameter of ``cell`` (the one-step cell: weights + optimizer) and ``meta`` atomically."""
    path = Path(path)
    payload = dict(meta, format_version=FORMAT_VERSION)
    # save_checkpoint appends ".ckpt" to names without it, so the temporary name must already end in it.
    atomic_produce(path, lambda tmp: ms.save_checkpoint(cell, str(tmp), append_dict={META_KEY: json.dumps(payload)}),
                   suffix=".ckpt")


def load_checkpoint_file(path) -> dict:
    """All entries of a ``.ckpt`` (parameters and appended values); UserError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(str(path))
    except Exception as err:  # MindSpore raises ValueError/RuntimeError/TypeError for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a MindSpore checkpoint ({reason})") from None


def split_checkpoint(entries: dict, path="checkpoint"):
    """``(parameters, meta)``: the parameter entries and the decoded ``kitseg_meta`` (None if absent)."""
    meta = None
    params = {}
    for name, value in entries.items():
        if name == META_KEY:
            try:
                meta = json.loads(value)
            except (TypeError, ValueError):
                raise UserError(f"checkpoint {path} has an unreadable '{META_KEY}' entry") from None
        elif isinstance(value, ms.Parameter):
            params[name] = value
    return params, meta


def read_training_checkpoint(path):
    """``(parameters, meta)`` of a checkpoint written by ``save_training_checkpoint``."""
    params, meta = split_checkpoint(load_checkpoint_file(path), path)
    if meta is None:
        raise UserError(f"checkpoint {path} is not a training checkpoint of this project (no '{META_KEY}' entry)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {meta.get('format_version')}, "
                        f"expected {FORMAT_VERSION}")
    return params, meta


def read_checkpoint_meta(path) -> dict:
    """The meta of a training checkpoint: ``plan``, ``config`` (a dict), ``epoch``, ``history``, ..."""
    return read_training_checkpoint(path)[1]


def network_weights(params: dict) -> dict:
    """Only the network weights of a checkpoint's parameter dict."""
    return {name: value for name, value in params.items() if not is_training_state(name)}


def restore_parameters(cell, params: dict, path="checkpoint", require_all=True) -> list:
    """Load ``params`` into ``cell``; every parameter of ``cell`` must be present with the same shape.

    Returns the names of checkpoint entries ``cell`` has no use for.
    """
    own = {param.name: param for param in cell.get_parameters()}
    missing = sorted(name for name in own if name not in params)
    if require_all and missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"checkpoint {path} does not fit this network/config: missing {len(missing)} "
                        f"parameter(s): {shown}")
    for name, param in own.items():
        if name in params and tuple(params[name].shape) != tuple(param.shape):
            raise UserError(f"checkpoint {path} does not fit this network/config: '{name}' has shape "
                            f"{tuple(params[name].shape)}, the network expects {tuple(param.shape)}")
    try:
        ms.load_param_into_net(cell, {name: params[name] for name in own if name in params}, strict_load=True)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"checkpoint {path} does not fit this network/config: {str(err).splitlines()[0]}") from None
    return sorted(name for name in params if name not in own)


def load_network_weights(network, path) -> dict:
    """Load the weights of a training checkpoint into ``network`` (for eval/predict/export); returns its meta."""
    params, meta = read_training_checkpoint(path)
    restore_parameters(network, network_weights(params), path)
    return meta
