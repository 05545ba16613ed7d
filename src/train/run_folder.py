"""The fold folder of a training run: what it holds, the order it is written in, how a run starts in it.

Files: ``checkpoint_latest.ckpt`` (the commit point), ``checkpoint_latest.prev.ckpt`` (the one before it),
``checkpoint_best.ckpt``, ``training_log.txt``, ``progress.png``, ``config.yaml``, ``plans.json``,
``transfer_report.json`` and eval.py's ``postprocessing.json`` (bound to ``checkpoint_best.ckpt`` by its
sha256). Every file is replaced in one rename (``src.files``), except the log, which grows by appends.

Write order of a finished epoch E (main rank only), ``commit_epoch``:

1. ``checkpoint_latest.prev.ckpt`` becomes the current latest (epoch E-1);
2. ``checkpoint_latest.ckpt`` of epoch E: the commit point. Its meta holds the run state (history, EMA,
   best epoch B) and every log line up to and including epoch E's;
3. ``checkpoint_best.ckpt``, a byte copy of that latest, when E is a new best (B = E), or while validation
   has scored nothing (the best follows the latest);
4. the epoch's line appended to the log;
5. ``progress.png`` redrawn.

Invariant, at every instant (a kill between any two writes, or in the middle of one): each checkpoint is
complete and is exactly the epoch its meta names; ``checkpoint_best.ckpt`` is the best epoch the log
reports, or the log has not reported the epoch after it yet; the latest is the log's last epoch or one
ahead of it, and it is ahead of the best only when it is itself the new best whose copy (step 3) did not
land. A reader of ``checkpoint_best.ckpt`` (eval.py, export.py) therefore gets a checkpoint that is what it
says it is and that the log, as far as it goes, agrees with. ``open_resume_point`` (``--resume``) closes
every gap: it resumes from the latest (or, if that is unreadable, the newest readable of the previous and
the best, with a warning), copies it to the best when it records itself as best and the best is not it,
refuses a best that is neither (only a hand-edited folder gets there), and rewrites the log to the lines
the checkpoint records when the file says anything else (an uncommitted epoch, a torn last line).
"""
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import UserError
from src.data.plan import PLAN_FILE
from src.files import atomic_copy, atomic_link, atomic_write_text, remove_stale_temporaries
from src.runtime.checkpoint import read_training_checkpoint, save_training_checkpoint
from src.train.curves import plot_progress
from src.train.run_state import TrainingLog, is_epoch_line

LATEST = "checkpoint_latest.ckpt"
PREVIOUS = "checkpoint_latest.prev.ckpt"
BEST = "checkpoint_best.ckpt"
LOG = "training_log.txt"
PROGRESS = "progress.png"
TRANSFER_REPORT = "transfer_report.json"
CONFIG = "config.yaml"
PLANS = PLAN_FILE
POSTPROCESSING = "postprocessing.json"  # eval.py's decision (src.infer.postprocess.POSTPROCESSING_FILE)
# Everything a run leaves, in the order --overwrite deletes it: the checkpoints first, the latest before
# the best, so an --overwrite killed half-way leaves nothing --resume would continue.
RUN_FILES = (PREVIOUS, LATEST, BEST, POSTPROCESSING, LOG, PROGRESS, TRANSFER_REPORT, CONFIG, PLANS)


def existing_run_files(fold_dir) -> list:
    fold_dir = Path(fold_dir)
    return [name for name in RUN_FILES if (fold_dir / name).exists()]


def check_run_folder(fold_dir, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is read or written, to start a new run over a finished or partial one.

    A new run may start in an absent or empty fold folder; ``resume`` continues the run there,
    ``overwrite`` deletes it first (``clear_run``).
    """
    fold_dir = Path(fold_dir)
    if resume and overwrite:
        raise UserError("--resume continues the run in the fold folder and --overwrite deletes it: pass one")
    if fold_dir.exists() and not fold_dir.is_dir():
        raise UserError(f"fold folder {fold_dir} is a file")
    existing = existing_run_files(fold_dir)
    if resume:
        if not (fold_dir / LATEST).is_file():
            hint = "; it holds a run that finished no epoch: start over with --overwrite" if existing else ""
            raise UserError(f"--resume: no checkpoint to resume from at {fold_dir / LATEST}{hint}")
    elif existing and not overwrite:
        raise UserError(f"{fold_dir} already holds a training run ({', '.join(existing)}); pass --resume to "
                        f"continue it or --overwrite to delete it and start over")


def prepare_fold_folder(fold_dir, overwrite: bool) -> list:
    """Create the folder, delete leftovers of killed writers and, with ``overwrite``, the old run.
    Returns notes for the log."""
    fold_dir = Path(fold_dir)
    try:
        fold_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create fold folder {fold_dir}: {err.strerror or err}") from None
    notes = []
    stale = remove_stale_temporaries(fold_dir)
    if stale:
        notes.append(f"removed {len(stale)} leftover temporary file(s) of a killed run: "
                     f"{', '.join(p.name for p in stale)}")
    if overwrite:
        removed = []
        for name in RUN_FILES:
            try:
                (fold_dir / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise UserError(f"--overwrite: cannot delete {fold_dir / name}: {err.strerror or err}") from None
        if removed:
            notes.append(f"--overwrite: deleted the previous run's {', '.join(removed)}")
    return notes


def write_or_stop(path, write) -> None:
    """``write()``; a failure to write ``path`` (disk full, permissions) stops the run with one line."""
    try:
        write()
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err}); training stopped") from None


# ---------------------------------------------------------------- one finished epoch

def commit_epoch(fold_dir, train_cell, meta: dict, write_best: bool, log: TrainingLog) -> None:
    """Write epoch ``meta['state']['epoch']`` in the order the module docstring gives (main rank only).

    ``meta['log']`` must already hold the epoch's (staged) log line. A failed write (disk full) stops the
    run with one line; the files written before it keep the folder consistent (``--resume`` continues).
    """
    fold_dir = Path(fold_dir)
    latest, epoch = fold_dir / LATEST, int(meta["state"]["epoch"])
    steps = []
    if latest.is_file():
        steps.append((PREVIOUS, lambda: atomic_link(latest, fold_dir / PREVIOUS)))
    steps.append((LATEST, lambda: save_training_checkpoint(latest, train_cell, meta)))
    if write_best:
        steps.append((BEST, lambda: atomic_copy(latest, fold_dir / BEST)))
    steps.append((LOG, log.flush))
    steps.append((PROGRESS, lambda: plot_progress(meta["state"]["history"], fold_dir / PROGRESS)))
    committed = False
    for name, write in steps:
        try:
            write()
        except OSError as err:
            reason = err.strerror or str(err)
            if committed:
                state = (f"epoch {epoch} is saved in {LATEST}; continue with --resume, which repairs {name}")
            elif epoch > 1:
                state = f"{LATEST} still holds epoch {epoch - 1}; continue with --resume"
            else:
                state = "no epoch was saved; start again with --overwrite"
            raise UserError(f"cannot write {fold_dir / name} ({reason}); training stopped in epoch {epoch}: "
                            f"{state}") from None
        committed = committed or name == LATEST


# ---------------------------------------------------------------- resuming

@dataclass
class ResumePoint:
    path: Path
    params: dict
    meta: dict
    notes: list = field(default_factory=list)  # warnings and repairs, for the log


def _read(path: Path):
    """``(params, meta, None)`` of a readable training checkpoint, else ``(None, None, reason)``."""
    if not path.is_file():
        return None, None, f"{path} is missing"
    try:
        params, meta = read_training_checkpoint(path)
    except UserError as err:
        return None, None, str(err)
    return params, meta, None


def recorded_best_epoch(state: dict) -> int:
    """The epoch ``checkpoint_best.ckpt`` must hold for a checkpoint with run state ``state``."""
    return int(state["best_epoch"]) if state.get("best_ema") is not None else int(state["epoch"])


def _history_until(state: dict, epoch: int) -> dict:
    return {key: list(values)[:epoch] for key, values in state["history"].items()}


def _reconcile_best(fold_dir: Path, point: ResumePoint, repair: bool) -> None:
    state = point.meta["state"]
    expected = recorded_best_epoch(state)
    _, best_meta, reason = _read(fold_dir / BEST)
    if best_meta is not None:
        best_state = best_meta["state"]
        if best_state["epoch"] == expected and \
                _history_until(best_state, expected) == _history_until(state, expected):
            return
        reason = f"it holds epoch {best_state['epoch']}" + \
            (" of another history" if best_state["epoch"] == expected else "")
    if expected != state["epoch"]:
        raise UserError(f"{fold_dir / BEST} does not match {point.path.name}, which records epoch {expected} as "
                        f"the best ({reason}); that checkpoint is lost: start over with --overwrite")
    if repair:
        atomic_copy(point.path, fold_dir / BEST)
    point.notes.append(f"repaired {BEST} ({reason}): it is now the epoch-{expected} checkpoint "
                       f"{point.path.name} records as the best")


def reconcile_log(path, committed) -> str:
    """Make the log file hold the ``committed`` lines, followed at most by lines of no epoch (a session's
    opening or closing lines), and no torn last line; returns a note, empty when nothing changed.
    ``committed`` None (a checkpoint of an older version, which records no log) only drops a torn line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    lines = text.splitlines()
    torn = bool(text) and not text.endswith("\n")
    if committed is None:
        if not torn:
            return ""
        committed = lines[:-1]
    count = len(committed)
    if not torn and lines[:count] == list(committed) and not any(map(is_epoch_line, lines[count:])):
        return ""
    atomic_write_text(path, "".join(line + "\n" for line in committed))
    surplus = sum(map(is_epoch_line, lines)) - sum(map(is_epoch_line, committed))
    what = (f"{surplus} epoch line(s) no checkpoint holds" if surplus > 0 else
            f"{-surplus} epoch line(s) too few" if surplus < 0 else "lines that differ")
    return (f"rewrote {path.name} to the {count} line(s) the checkpoint records (it held {what}"
            f"{', and a torn last line' if torn else ''})")


def open_resume_point(fold_dir, repair: bool) -> ResumePoint:
    """The checkpoint ``--resume`` continues from, with the folder made consistent with it.

    ``repair`` (the main rank): replace an unreadable latest by the checkpoint chosen instead, copy the
    latest to the best when it is the recorded best, rewrite the log. Other ranks only read.
    """
    fold_dir = Path(fold_dir)
    latest = fold_dir / LATEST
    params, meta, reason = _read(latest)
    point = ResumePoint(latest, params, meta)
    if meta is None:
        fallbacks = [(path, *_read(path)) for path in (fold_dir / PREVIOUS, fold_dir / BEST)]
        readable = [entry for entry in fallbacks if entry[2] is not None]
        if not readable:
            raise UserError(f"cannot resume: {reason} and neither {PREVIOUS} nor {BEST} is a readable checkpoint; "
                            f"start over with --overwrite")
        path, params, meta, _ = max(readable, key=lambda entry: entry[2]["state"]["epoch"])
        point = ResumePoint(path, params, meta, [
            f"warning: {reason}; resuming from {path.name} (epoch {meta['state']['epoch']}) instead"])
        if repair:
            atomic_copy(path, latest)
    _reconcile_best(fold_dir, point, repair)
    if repair:
        note = reconcile_log(fold_dir / LOG, meta.get("log"))
        if note:
            point.notes.append(note)
    return point


def log_lines(fold_dir) -> list:
    """The lines of the fold's log file: after ``open_resume_point``, the record a resumed run continues."""
    path = Path(fold_dir) / LOG
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
