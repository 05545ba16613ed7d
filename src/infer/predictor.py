"""Predictors: checkpoints (one or an ensemble of folds) or a MindIR file behind one numpy interface.

A checkpoint carries the plan and the config it was trained with, so the network is rebuilt from the
checkpoint alone (architecture keys from the stored config; inference keys - step size, mirroring,
window batch, device - from the user's config). Several checkpoints are ensembled as nnU-Net ensembles
folds: each model's sliding-window logits are turned into softmax probabilities and those averaged.
A MindIR file needs its sidecar ``<name>.mindir.json`` (written by export.py, bound to the file by its sha256)
for the plan and batch size.
"""
from typing import Callable, Optional, Sequence

import numpy as np

from src.config import Config, config_from_dict
from src.data.plan import Plan
from src.errors import UserError
from src.infer.locate import region_logits
from src.infer.mindir import load_mindir_graph, mindir_sidecar, read_mindir_sidecar
from src.infer.stage_times import stage
from src.infer.sliding_window import NetFn, sliding_window_logits

# What must agree between models of an ensemble, and between a model and a preprocessed folder.
PLAN_KEYS_FOR_INFERENCE = ("target_spacing", "normalization", "intensity", "patch_size", "num_classes",
                           "num_channels", "labels")
# Config keys that define the network's weights; everything else may come from the user's config.
ARCHITECTURE_KEYS = ("network", "base_features", "max_features", "max_stages", "downsample")


class FixedBatchNetFn:
    """Calls a network that only accepts ``batch`` samples: splits larger batches and zero-fills the
    last chunk (a MindIR exported at batch 1 is called once per window)."""

    def __init__(self, net_fn: NetFn, batch: int):
        self.net_fn = net_fn
        self.batch = int(batch)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        outputs = []
        for first in range(0, windows.shape[0], self.batch):
            chunk = windows[first:first + self.batch]
            filled = chunk.shape[0]
            if filled < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - filled,) + chunk.shape[1:], chunk.dtype)])
            outputs.append(np.asarray(self.net_fn(np.ascontiguousarray(chunk)))[:filled])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


class CellNetFn:
    """numpy in, numpy out around a MindSpore Cell (or GraphCell) returning one logits tensor."""

    def __init__(self, cell):
        self.cell = cell

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        import mindspore as ms

        output = self.cell(ms.Tensor(np.ascontiguousarray(windows, dtype=np.float32)))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.asnumpy().astype(np.float32, copy=False)


class FirstCallTimed:
    """A network whose first call is its own stage: graph mode compiles there (tens of seconds for the
    BDCI network on CPU), which is not the cost of the windows."""

    STAGE = "first network call (graph compile)"

    def __init__(self, net_fn: NetFn):
        self.net_fn = net_fn
        self.called = False

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        if self.called:
            return self.net_fn(windows)
        self.called = True
        with stage(self.STAGE):
            return self.net_fn(windows)


def softmax_inplace(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of (K, ...) float32, overwriting ``logits``; two extra volumes of memory."""
    logits -= logits.max(axis=0)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0)
    return logits


class Predictor:
    """Sliding-window prediction with one or several models sharing a plan."""

    def __init__(self, net_fns: Sequence[NetFn], plan: Plan, sources: Sequence[str], step_size: float = 0.5,
                 batch_size: int = 2, mirror: bool = True, progress: bool = True,
                 exported_postprocessing: Optional[dict] = None):
        if not net_fns:
            raise ValueError("a predictor needs at least one model")
        self.net_fns = list(net_fns)
        self.plan = plan
        self.sources = [str(s) for s in sources]
        self.step_size = float(step_size)
        self.batch_size = int(batch_size)
        self.mirror = bool(mirror)
        self.progress = progress
        # the fold's postprocessing decision export.py stored with a MindIR (None for checkpoints)
        self.exported_postprocessing = exported_postprocessing
        self.locator = None  # the first pass of src.infer.locate, set by locate_model.attach_locator

    def predict_logits(self, net_fn: NetFn, data: np.ndarray, description: str = "windows") -> np.ndarray:
        return sliding_window_logits(data, net_fn, self.plan.patch_size, self.plan.num_classes,
                                     step_size=self.step_size, batch_size=self.batch_size, mirror=self.mirror, progress=self.progress,
                                     description=description)

    def predict_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """Class probabilities (K, ...) float32 for a preprocessed volume (C, ...): the average over
        models of the softmax of their mirrored, Gaussian-weighted sliding-window logits."""
        expected_channels = self.plan.num_channels
        if data.ndim != 4 or data.shape[0] != expected_channels:
            raise UserError(f"expected preprocessed data ({expected_channels}, d0, d1, d2), got {data.shape}")
        region = None
        if self.locator is not None:
            with stage("locate"):
                region = self.locator.region(data, self.plan.target_spacing)
        total = None
        for i, net_fn in enumerate(self.net_fns):
            description = f"model {i + 1}/{len(self.net_fns)}" if len(self.net_fns) > 1 else "windows"
            net_fn = FirstCallTimed(net_fn)
            with stage("windows"):
                if region is None:
                    logits = self.predict_logits(net_fn, data, description)
                else:
                    logits = region_logits(data, net_fn, region, self.locator.settings, self.plan.patch_size,
                                           self.plan.num_classes, self.step_size, self.batch_size, self.mirror,
                                           self.progress, description)
            with stage("softmax"):
                probs = softmax_inplace(logits)
            del logits
            if total is None:
                total = probs
            else:
                total += probs
                del probs
        if len(self.net_fns) > 1:
            total /= np.float32(len(self.net_fns))
        return total


def check_plans_agree(reference: Plan, other: Plan, reference_name: str, other_name: str) -> None:
    """UserError naming the first inference-relevant plan key on which two plans differ."""
    ours, theirs = reference.to_json(), other.to_json()
    for key in PLAN_KEYS_FOR_INFERENCE:
        if key in ours and key in theirs and ours[key] != theirs[key]:
            raise UserError(f"{other_name} does not match {reference_name}: plan key '{key}' is "
                            f"{theirs[key]!r} vs {ours[key]!r}")


def inference_config(model_config: dict, user_cfg: Config) -> Config:
    """The user's config with the model's architecture keys (so the weights fit)."""
    stored = config_from_dict(model_config)
    return user_cfg.replace(**{key: getattr(stored, key) for key in ARCHITECTURE_KEYS})


def build_inference_network(model_cfg: Config, plan: Plan, ckpt_path, device: str, cpu_kernels: bool = True):
    """The trained network with the checkpoint's weights, deep supervision off, in eval mode, wrapped
    for float16 on Ascend when the (resolved) amp level asks for it. ``cpu_kernels``: the compiled CPU
    kernels where they apply (never in a graph meant for export)."""
    from src.models import build_network
    from src.models.cpu_kernels import select_cpu_kernels
    from src.runtime.checkpoint import load_network_weights
    from src.runtime.amp import apply_amp, resolve_amp_level

    if not model_cfg.variant.predicts:
        raise UserError(model_cfg.variant.cannot_predict)
    network = build_network(model_cfg, plan)
    load_network_weights(network, ckpt_path)
    network.set_deep_supervision(False)
    network.set_train(False)
    amp_level = resolve_amp_level(model_cfg.amp_level, device)
    if cpu_kernels:
        select_cpu_kernels(network, amp_level, release_isa_cap=True)
    forward = apply_amp(network, amp_level)
    forward.set_train(False)
    return forward


def load_checkpoint_network(path, cfg: Config, device: str, cpu_kernels: bool = True):
    """(network ready for inference, the checkpoint's plan, the config it was built with)."""
    from src.runtime.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    if "plan" not in meta or "config" not in meta:
        raise UserError(f"checkpoint {path} carries no plan/config; it was not written by train.py")
    model_cfg = inference_config(meta["config"], cfg)
    plan = Plan.from_json(meta["plan"], f"the plan of checkpoint {path}")
    network = build_inference_network(model_cfg, plan, path, device, cpu_kernels)
    return network, plan, model_cfg


def load_predictor(cfg: Config, ckpts: Optional[Sequence] = None, mindir=None, plan: Optional[Plan] = None,
                   progress: bool = True) -> Predictor:
    """A Predictor over one or several checkpoints, or over a MindIR file.

    ``plan`` (e.g. a preprocessed folder's plans.json) is checked against the models' plans.
    """
    from src.runtime.device import setup_device

    if bool(ckpts) == (mindir is not None):
        raise UserError("give either checkpoint(s) or a MindIR file")
    device = setup_device(cfg.device_target, mode="graph")
    if device == "CPU":  # bf16 convolutions only where the CPU has them (before the first oneDNN primitive)
        from src.cpu_precision import apply_precision

        apply_precision(cfg.inference_precision)
    exported_postprocessing = None
    if mindir is not None:
        net_fns, model_plan, sources, exported_postprocessing = _mindir_models(mindir)
    else:
        net_fns, model_plan, sources = _checkpoint_models(ckpts, cfg, device)
    if plan is not None:
        check_plans_agree(plan, model_plan, "the preprocessed data's plans.json", sources[0])
    predictor = Predictor(net_fns, model_plan, sources, step_size=cfg.step_size, batch_size=cfg.sw_batch_size,
                          mirror=cfg.tta_mirror, progress=progress, exported_postprocessing=exported_postprocessing)
    from src.infer.locate_model import attach_locator

    attach_locator(predictor, cfg, ckpts=ckpts, mindir=mindir,
                   sidecar=read_mindir_sidecar(mindir) if mindir is not None else None)
    return predictor


def _checkpoint_models(ckpts: Sequence, cfg: Config, device: str):
    net_fns, plans = [], []
    for path in ckpts:
        network, model_plan, _ = load_checkpoint_network(path, cfg, device)
        if plans:
            check_plans_agree(plans[0], model_plan, str(ckpts[0]), str(path))
        net_fns.append(CellNetFn(network))
        plans.append(model_plan)
    return net_fns, plans[0], [str(p) for p in ckpts]


def _mindir_models(mindir):
    sidecar = read_mindir_sidecar(mindir)
    graph = load_mindir_graph(mindir)
    model_plan = Plan.from_json(sidecar["plan"], f"the plan in {mindir_sidecar(mindir)}")
    input_shape = [int(s) for s in sidecar["input_shape"]]
    if input_shape[2:] != model_plan.patch_size:
        raise UserError(f"{mindir_sidecar(mindir)}: input shape {input_shape} does not match the plan's patch size")
    net_fn: Callable = FixedBatchNetFn(CellNetFn(graph), int(sidecar["batch_size"]))
    return [net_fn], model_plan, [str(mindir)], sidecar.get("postprocessing")
