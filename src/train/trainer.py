"""Train one fold: the epoch loop, online validation, checkpoints, resume, transfer, data parallelism.

Per epoch: the learning rate is set by the poly schedule, ``iters_per_epoch`` optimizer steps run on batches
whose sampling depends only on (seed, epoch, rank), the pseudo-Dice is measured on ``val_iters`` batches
of the validation cases, its EMA updated, and the epoch committed (``run_folder.commit_epoch``). Because a
checkpoint holds the weights, the optimizer state (momentum, LR, loss scale), the epoch count and the
RNG state, a run resumed from epoch k ends with the same weights as one that never stopped. A step may run
its batch as micro-batches (``micro_batches.build_step``); that changes neither batches nor results.

With ``train_minutes`` set, the run's length is a time budget: the first epoch times its steps (the first
training step and the first validation batch, which compile their graphs, are left out), the epochs that
fit the budget are chosen before the second epoch sets its learning rate (``schedule.epochs_within_budget``;
the first epoch's rate is the base rate whatever the count), logged, and recorded in every checkpoint, so
``--resume`` keeps the count and the run is the same as one configured with that many epochs.

Finished work is never destroyed: a new run refuses a fold folder that holds a run (finished or not)
unless ``resume`` continues it or ``overwrite`` deletes it (checkpoints, log, progress, postprocessing
decision, copies) first; leftovers of killed writers are removed at start.

Crash consistency (the invariant; ``run_folder`` enforces it): ``checkpoint_latest.ckpt`` is the commit
point of an epoch, and it records the best epoch and every log line up to that epoch. It is written
before the best checkpoint is copied from it and before the epoch's log line is appended, so after a kill
at any instant each checkpoint is complete and exactly the epoch its meta names, the best checkpoint is
the best the log reports (the log may not yet report the latest epoch), and the latest is ahead of the
best only when it is the new best whose copy did not land. ``resume`` repairs each such gap from the
latest (copy to best, log rewritten to the recorded lines), falls back to the previous latest (or the
best, whichever is newer) with a warning when the latest is unreadable, and refuses a best checkpoint
that matches nothing it records. A failed write (disk full) keeps the files before it and stops with
one line.
"""
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import mindspore as ms
from mindspore import nn

from src.config import save_config
from src.data.dataset import build_train_dataset, build_val_dataset, started_batches
from src.files import atomic_write_json
from src.data.plan import Plan
from src.data.planning import plan_for_config
from src.errors import UserError
from src.losses import build_loss
from src.models import build_network
from src.models.cpu_kernels import select_cpu_kernels
from src.models.transfer import transferable_parameters
from src.runtime.checkpoint import load_checkpoint_file, network_weights, restore_parameters, split_checkpoint
from src.train.curves import plot_progress
from src.runtime.device import setup_device
from src.train.distributed import ParallelInfo, all_gather_rows, init_data_parallel, weights_identical_across_ranks
from src.data.preprocessed import fold_cases, load_plan, parse_fold
from src.train.run_folder import (BEST, CONFIG, LATEST, LOG, PLANS, PROGRESS, TRANSFER_REPORT, check_run_folder,
                                  commit_epoch, log_lines, open_resume_point, prepare_fold_folder,
                                  write_or_stop)
from src.train.run_state import RunState, TrainingLog, capture_rng, check_same_topology, epoch_line, restore_rng
from src.train.schedule import epochs_within_budget, poly_lr
from src.runtime.amp import apply_amp, resolve_amp_level
from src.train.micro_batches import build_step, choose_step
from src.train.train_cell import build_train_cell, loss_scale_of, set_learning_rate
from src.train.validation import build_validation_step, run_validation, update_ema

__all__ = ["BEST", "LATEST", "LOG", "PROGRESS", "TRANSFER_REPORT", "build_optimizer", "train_fold"]

# The clock of the train_minutes budget (tests replace it; the epoch lines' times use time.time)
clock = time.monotonic


def build_optimizer(cfg, network, lr: float):
    if cfg.optimizer == "adamw":
        # nnU-Net v2's Adam trainer variants: decoupled weight decay, the same poly schedule. Ungrouped, so
        # MindSpore's default filter leaves the norms' gamma/beta undecayed (torch's AdamW decays them by
        # lr * 3e-5 per step, a difference far below anything measurable here).
        return nn.AdamWeightDecay(network.trainable_params(), learning_rate=ms.Tensor(lr, ms.float32),
                                  weight_decay=float(cfg.weight_decay))
    if cfg.nesterov and cfg.momentum <= 0:
        raise UserError("nesterov: true needs momentum > 0")
    # One parameter group so that weight decay reaches every parameter, norms included (as torch.optim.SGD);
    # ungrouped, MindSpore would skip parameters named gamma/beta.
    group = [{"params": network.trainable_params(), "weight_decay": float(cfg.weight_decay)}]
    return nn.SGD(group, learning_rate=ms.Tensor(lr, ms.float32), momentum=float(cfg.momentum),
                  nesterov=bool(cfg.nesterov), weight_decay=float(cfg.weight_decay))


def load_pretrained(network, path, fold_dir: Path, write: bool) -> dict:
    """Copy every weight of ``path`` whose name and shape fit ``network``; report what was loaded/skipped."""
    params, _ = split_checkpoint(load_checkpoint_file(path), path)
    loaded, skipped = transferable_parameters(network_weights(params), network)
    if not loaded:
        raise UserError(f"no weight of the pretrained checkpoint {path} fits this network "
                        f"(names or shapes differ everywhere)")
    report = {"source": str(path), "loaded": loaded, "skipped": skipped}
    if write:
        write_or_stop(fold_dir / TRANSFER_REPORT, lambda: atomic_write_json(fold_dir / TRANSFER_REPORT, report))
    return report


def _checkpoint_meta(cfg, plan, fold, state: RunState, parallel: ParallelInfo, lr: float, log: TrainingLog) -> dict:
    return {"config": cfg.to_dict(), "plan": plan.to_json(), "fold": fold, "state": state.to_json(), "lr": lr,
            "world": parallel.world, "rng": capture_rng(), "seed": cfg.seed, "log": list(log.lines)}


def _resume(train_cell, fold_dir: Path, plan: Plan, parallel: ParallelInfo, log: TrainingLog):
    point = open_resume_point(fold_dir, repair=parallel.is_main)
    check_same_topology(plan, Plan.from_json(point.meta["plan"], f"checkpoint {point.path}"), point.path)
    restore_parameters(train_cell, point.params, point.path)
    restore_rng(point.meta["rng"])
    state = RunState.from_json(point.meta["state"])
    log.adopt(log_lines(fold_dir))
    for note in point.notes:
        log(note)
    log(f"resumed from {point.path} after epoch {state.epoch}")
    if point.meta.get("world", 1) != parallel.world:
        log(f"note: the checkpoint was trained by {point.meta.get('world')} rank(s), this run has {parallel.world}; "
            f"the batches differ from an uninterrupted run")
    if parallel.is_main and state.epoch:
        write_or_stop(fold_dir / PROGRESS, lambda: plot_progress(state.history, fold_dir / PROGRESS))
    return state


class _Batches:
    """The next ``count`` batches (tuples of Tensors) of a running dataset iterator.

    ``durations`` gets, per batch, the seconds from asking for it to asking for the next one: fetching
    the batch and everything its consumer did with it (a training step, a validation step).
    """

    def __init__(self, iterator, count: int):
        self.iterator = iterator
        self.count = count
        self.durations = []

    def __iter__(self):
        started = clock()
        for batch in itertools.islice(self.iterator, self.count):
            yield batch
            now = clock()
            self.durations.append(now - started)
            started = now


def steady_seconds(durations) -> float:
    """Mean seconds per batch once the graph is compiled: the first batch (compilation, the loader's
    start-up) is left out unless it is the only one."""
    later = list(durations[1:]) or list(durations)
    return float(np.mean(later)) if later else 0.0


def _choose_epochs(cfg, train_batches: _Batches, val_batches, spent_seconds: float, parallel: ParallelInfo):
    """The epochs of ``cfg.train_minutes``, chosen at the end of the first epoch from its measured steps."""
    epoch_seconds = steady_seconds(train_batches.durations) * cfg.iters_per_epoch
    if val_batches is not None:
        epoch_seconds += steady_seconds(val_batches.durations) * cfg.val_iters
    # every rank must stop after the same epoch: all of them choose from the slowest rank's figures
    epoch_seconds, spent_seconds = (float(v) for v in all_gather_rows([epoch_seconds, spent_seconds], parallel).max(0))
    # a clock too coarse to see an epoch must not divide by zero
    return epochs_within_budget(cfg.train_minutes, max(epoch_seconds, 1e-3), cfg.epochs, spent_seconds,
                                finished_epochs=1)


def _planned_epochs(cfg, state: RunState, log) -> tuple:
    """``(epochs the poly schedule runs over, whether this run's first epoch must choose them)``."""
    choice = state.budget
    if choice is not None:
        epochs = min(choice.epochs, cfg.epochs)
        if epochs < choice.epochs:
            log(f"note: epochs {cfg.epochs} caps the {choice.epochs} epochs train_minutes {choice.train_minutes:g} "
                f"chose; the LR schedule now differs from the uninterrupted run's")
        else:
            log(f"train_minutes: keeping the {epochs} epochs chosen in the first epoch (recorded in the checkpoint; "
                f"not measured again)")
        return epochs, False
    if cfg.train_minutes is None:
        return cfg.epochs, False
    if state.epoch > 0:
        log(f"note: train_minutes {cfg.train_minutes:g} ignored: the resumed run chose no epoch count in its first "
            f"epoch, so its LR schedule runs over the configured {cfg.epochs} epochs")
        return cfg.epochs, False
    return cfg.epochs, True


def _batch_iterator(dataset):
    # One pipeline for all remaining epochs: its workers prefetch across epoch boundaries, and batch i of
    # epoch e is a function of (seed, e, i) only, whichever epoch the pipeline started at.
    return None if dataset is None else started_batches(dataset)


def _train_epoch(train_cell, batches, epoch: int, epochs: int, show: bool):
    losses = []
    # disable=None: a bar on terminals only, so redirected logs stay readable
    bar = tqdm(batches, total=batches.count, desc=f"epoch {epoch + 1}/{epochs}", disable=None if show else True,
               file=sys.stderr, leave=False, dynamic_ncols=True)
    for batch in bar:
        losses.append(float(train_cell(*batch).asnumpy()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    if len(losses) < batches.count:
        raise UserError(f"the training data ran out after {len(losses)} of {batches.count} batches")
    return float(np.mean(losses))


@dataclass
class FoldRun:
    """What the steps of one fold's training share: built by ``prepare``, advanced epoch by epoch."""
    cfg: object
    pre_dir: Path
    fold: object
    fold_dir: Path
    plan: Plan
    train_ids: list
    val_ids: list
    device: str
    parallel: ParallelInfo
    log: TrainingLog
    amp_level: str
    network: object
    train_cell: object  # what checkpoints hold (weights, optimizer and loss-scale state)
    step: object  # what a training batch is given to: the train cell, or micro-batches sharing its parameters
    optimizer: object
    val_step: object
    kernels: str
    started: float
    notes: list
    state: RunState = field(default_factory=RunState)
    epochs: int = 0  # the epochs the poly schedule runs over
    choose_epochs: bool = False  # whether this session's first epoch chooses them (train_minutes)
    last_dice: float = None

    def last_epoch(self, stop_after_epoch) -> int:
        return self.epochs if stop_after_epoch is None else min(self.epochs, int(stop_after_epoch))


def prepare(cfg, pre_dir, fold, out_dir, resume: bool, overwrite: bool) -> FoldRun:
    """The plan, the fold's cases, the device, the data-parallel group, the network, loss, optimizer and steps."""
    started = clock()
    pre_dir = Path(pre_dir)
    fold = parse_fold(fold)
    plan = plan_for_config(load_plan(pre_dir), cfg.target_spacing, cfg.patch_size, cfg.base_features,
                           cfg.max_features, cfg.max_stages)
    train_ids, val_ids = fold_cases(pre_dir, plan, fold)
    fold_dir = Path(out_dir) / f"fold_{fold}"
    # every rank checks before init_data_parallel, whose rendezvous no rank passes before all arrive, and
    # rank 0 writes only after it: no rank can mistake rank 0's new files for an old run
    check_run_folder(fold_dir, resume, overwrite)

    device = setup_device(cfg.device_target, mode="graph")
    parallel = init_data_parallel()
    # before the fold folder is touched: a run that cannot fit stops here and destroys nothing
    step_choice = choose_step(cfg, plan, device, parallel.world)
    notes = prepare_fold_folder(fold_dir, overwrite) if parallel.is_main else []
    log = TrainingLog(fold_dir / LOG, enabled=parallel.is_main)
    amp_level = resolve_amp_level(cfg.amp_level, device)
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)

    network = build_network(cfg, plan)
    kernels = select_cpu_kernels(network, amp_level, release_isa_cap=True).line
    forward = apply_amp(network, amp_level)
    loss_fn = build_loss(cfg, plan)
    optimizer = build_optimizer(cfg, network, poly_lr(cfg.lr, 0, cfg.epochs, cfg.poly_exponent))
    train_cell = build_train_cell(forward, loss_fn, optimizer, cfg.grad_clip, amp_level, cfg.variant.task_conditioned)
    step, step_line = build_step(cfg, plan, device, train_cell, forward, loss_fn, cfg.variant.task_conditioned,
                                 choice=step_choice)
    notes.append(step_line)  # logged after a resume has restored the log
    # Validation runs the network in training mode, as nnU-Net v2 does (deep supervision on, the loss over
    # all heads): instance norm has no running statistics, so only the extra heads differ, and never
    # flipping the mode means neither compiled graph is ever rebuilt with the other mode's flags.
    train_cell.set_train(True)
    val_step = build_validation_step(cfg.variant, forward, loss_fn, network)
    return FoldRun(cfg, pre_dir, fold, fold_dir, plan, train_ids, val_ids, device, parallel, log, amp_level,
                   network, train_cell, step, optimizer, val_step, kernels, started, notes)


def restore(run: FoldRun, resume: bool, pretrained) -> None:
    """The resumed state or the pretrained weights, the run's config and plan written, the epochs planned."""
    cfg, fold_dir, log = run.cfg, run.fold_dir, run.log
    # the resume rewrites the log to the checkpoint's record before this session appends to it
    if resume:
        run.state = _resume(run.train_cell, fold_dir, run.plan, run.parallel, log)
    for note in run.notes:
        log(note)
    if resume and pretrained:
        log(f"note: --pretrained {pretrained} ignored; the resumed weights already started from it")
    elif pretrained:
        report = load_pretrained(run.network, pretrained, fold_dir, write=run.parallel.is_main)
        log(f"pretrained weights from {pretrained}: {len(report['loaded'])} loaded, "
            f"{len(report['skipped'])} skipped (see {fold_dir / TRANSFER_REPORT})")
    if run.parallel.is_main:
        write_or_stop(fold_dir / CONFIG, lambda: save_config(cfg, fold_dir / CONFIG))
        write_or_stop(fold_dir / PLANS, lambda: run.plan.write(fold_dir / PLANS))
    num_params = sum(int(p.size) for p in run.network.trainable_params())
    log(f"fold {run.fold}: {len(run.train_ids)} training / {len(run.val_ids)} validation cases, network "
        f"{cfg.network} with {num_params} parameters, patch {run.plan.patch_size}, batch {cfg.batch_size} per rank")
    run.epochs, run.choose_epochs = _planned_epochs(cfg, run.state, log)
    length = (f"at most {run.epochs} epochs (train_minutes {cfg.train_minutes:g} chooses after epoch 1)"
              if run.choose_epochs else f"{run.epochs} epochs")
    log(f"device {run.device}, amp {run.amp_level}, world size {run.parallel.world}, {length} x "
        f"{cfg.iters_per_epoch} iterations, val {cfg.val_iters} batches, {run.kernels}")


def open_batches(run: FoldRun, remaining: int) -> tuple:
    """``(training, validation)`` batch iterators over the remaining epochs (validation None without it)."""
    if not remaining:
        return None, None
    cfg, state = run.cfg, run.state
    shard = {"epoch": state.epoch, "rank": run.parallel.rank, "world": run.parallel.world, "num_epochs": remaining}
    train_batches = _batch_iterator(build_train_dataset(cfg, run.plan, run.pre_dir, run.train_ids, **shard))
    val_batches = None
    if cfg.val_iters > 0 and run.val_ids:
        val_batches = _batch_iterator(build_val_dataset(cfg, run.plan, run.pre_dir, run.val_ids, **shard))
    return train_batches, val_batches


def run_epoch(run: FoldRun, train_batches, val_batches) -> tuple:
    """One epoch: the poly rate, the training steps, validation, the EMA, the epoch's log line (staged, so
    the checkpoint records it). Returns ``(learning rate, whether it is the best epoch)``."""
    cfg, state, log = run.cfg, run.state, run.log
    epoch = state.epoch
    started = time.time()
    # with a choice still to make (epoch 0) this is the base rate whatever the choice will be
    lr = poly_lr(cfg.lr, epoch, run.epochs, cfg.poly_exponent)
    set_learning_rate(run.optimizer, lr)
    epoch_train = _Batches(train_batches, cfg.iters_per_epoch)
    train_loss = _train_epoch(run.step, epoch_train, epoch, run.epochs, run.parallel.is_main)
    val = {"loss": None, "dice": [], "pseudo_dice": None}
    epoch_val = None
    if val_batches is not None:
        epoch_val = _Batches(val_batches, cfg.val_iters)
        val = run_validation(run.val_step, epoch_val, run.val_step.num_counts, run.parallel)
    if run.choose_epochs:
        state.budget = _choose_epochs(cfg, epoch_train, epoch_val, clock() - run.started, run.parallel)
        run.epochs, run.choose_epochs = state.budget.epochs, False
        for line in state.budget.lines():
            log.stage(line)  # recorded in this epoch's checkpoint, like the epoch line
    state.ema = update_ema(state.ema, val["pseudo_dice"], cfg.ema_alpha)
    seconds = time.time() - started
    is_best = state.record_epoch(train_loss, val["loss"], val["pseudo_dice"], lr, seconds)
    run.last_dice = val["pseudo_dice"]
    line = epoch_line(state.epoch, run.epochs, train_loss, val["loss"], val["dice"], state.ema, lr, seconds, is_best)
    if run.amp_level == "O2":
        line += f"  loss_scale {loss_scale_of(run.train_cell):g}"
    log.stage(line)  # recorded in the checkpoint below, written to the file after it
    return lr, is_best


def save(run: FoldRun, lr: float, is_best: bool) -> None:
    """Commit the epoch (rank 0): the latest checkpoint, then the best, then the log line."""
    if run.parallel.is_main:
        # until validation has scored anything, the best checkpoint follows the latest one
        meta = _checkpoint_meta(run.cfg, run.plan, run.fold, run.state, run.parallel, lr, run.log)
        commit_epoch(run.fold_dir, run.train_cell, meta, write_best=is_best or run.state.best_ema is None,
                     log=run.log)


def summarise(run: FoldRun) -> dict:
    """Whether the ranks agree, the closing log line, and the run summary ``train_fold`` returns."""
    state, log = run.state, run.log
    if run.cfg.locator_iters > 0 and run.parallel.is_main and state.epoch >= run.epochs:
        from src.train.locator_training import train_and_attach  # the first pass of src/infer/locate.py

        train_and_attach(run.cfg, run.plan, run.pre_dir, run.train_ids, run.fold_dir, log,
                         val_ids=run.val_ids)
    identical = weights_identical_across_ranks(run.network, run.parallel)
    if run.parallel.distributed:
        log(f"world size {run.parallel.world}: all ranks hold identical weights: {'yes' if identical else 'NO'}")
    best = "n/a" if state.best_ema is None else f"{state.best_ema:.4f}"
    log(f"finished {state.epoch}/{run.epochs} epochs (this session {(clock() - run.started) / 60:.1f} min); "
        f"best EMA pseudo-Dice {best} at epoch {state.best_epoch}")
    return {"fold_dir": str(run.fold_dir), "epochs_completed": state.epoch, "epochs": run.epochs,
            "budget": None if state.budget is None else state.budget.to_json(), "best_ema": state.best_ema,
            "best_epoch": state.best_epoch, "last_pseudo_dice": run.last_dice, "history": state.history,
            "world": run.parallel.world, "weights_identical": identical}


def train_fold(cfg, pre_dir, fold, out_dir, pretrained=None, resume=False, stop_after_epoch=None,
               overwrite=False) -> dict:
    """Train fold ``fold`` (0..N-1 or ``"all"``) on the preprocessed folder ``pre_dir`` into ``out_dir/fold_F``.

    A fold folder holding a run needs ``resume`` (continue it) or ``overwrite`` (delete it, start over).
    ``stop_after_epoch`` ends this run after that many finished epochs (a later ``resume`` continues).
    Returns the run summary: fold folder, finished epochs, best EMA and its epoch, last pseudo-Dice,
    and whether all ranks ended with identical weights.
    """
    run = prepare(cfg, pre_dir, fold, out_dir, resume, overwrite)
    restore(run, resume, pretrained)
    # the pipelines cover the epochs known now; a train_minutes choice can only shorten them
    train_batches, val_batches = open_batches(run, max(run.last_epoch(stop_after_epoch) - run.state.epoch, 0))
    while run.state.epoch < run.last_epoch(stop_after_epoch):
        save(run, *run_epoch(run, train_batches, val_batches))
    return summarise(run)
