"""What a training run reads before it starts and carries between epochs (no MindSpore here).

- the topology check between a checkpoint's plan and the data's;
- the run state that goes into every checkpoint: finished epochs, EMA bookkeeping, history, RNG state,
  and the epoch count a ``train_minutes`` budget chose (kept by ``--resume``);
- the human-readable log (stdout and ``training_log.txt``), whose lines every checkpoint also records so
  that a resumed run can make the file agree with the checkpoint it continues from.
"""
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.plan import Plan
from src.errors import UserError
from src.train.curves import empty_history
from src.train.schedule import BudgetChoice


def check_same_topology(plan: Plan, checkpoint_plan: Plan, path) -> None:
    ours, theirs = plan.topology(), checkpoint_plan.topology()
    for key in ours:
        if ours[key] != theirs[key]:
            raise UserError(f"checkpoint {path} was trained with {key}={theirs[key]}, "
                            f"but the preprocessed data plans {key}={ours[key]}")


def capture_rng() -> dict:
    """The global Python and numpy generator states as JSON-able lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def restore_rng(state: dict) -> None:
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


@dataclass
class RunState:
    """Bookkeeping saved in every checkpoint; ``epoch`` counts finished epochs."""
    epoch: int = 0
    ema: float | None = None
    best_ema: float | None = None
    best_epoch: int | None = None
    history: dict = field(default_factory=empty_history)
    budget: BudgetChoice | None = None  # None: no train_minutes, or not chosen yet

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "ema": self.ema, "best_ema": self.best_ema, "best_epoch": self.best_epoch,
                "history": self.history, "budget": None if self.budget is None else self.budget.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "RunState":
        history = empty_history()
        history.update({key: list(values) for key, values in data.get("history", {}).items()})
        budget = data.get("budget")  # absent from checkpoints written before train_minutes existed
        return cls(epoch=int(data["epoch"]), ema=data.get("ema"), best_ema=data.get("best_ema"),
                   best_epoch=data.get("best_epoch"), history=history,
                   budget=None if budget is None else BudgetChoice.from_json(budget))

    def record_epoch(self, train_loss, val_loss, pseudo_dice, lr, seconds) -> bool:
        """Append one finished epoch; True when it set a new best EMA (recorded in ``history['ema_dice']``)."""
        self.epoch += 1
        for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("pseudo_dice", pseudo_dice),
                           ("ema_dice", self.ema), ("lr", lr), ("epoch_time", seconds)):
            self.history[key].append(value)
        if self.ema is not None and (self.best_ema is None or self.ema > self.best_ema):
            self.best_ema, self.best_epoch = self.ema, self.epoch
            return True
        return False


# "<date> <time>  epoch 3/100  train_loss ...": the line ``epoch_line`` writes for one finished epoch
_EPOCH_LINE = re.compile(r"^\S+ \S+  epoch \d+/\d+  train_loss ")


def is_epoch_line(line: str) -> bool:
    return bool(_EPOCH_LINE.match(line))


def append_line(path, text: str) -> None:
    """The only write of the log file besides a whole rewrite; tests replace it to inject a kill."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


class TrainingLog:
    """Lines to stdout and, on the main rank, appended to ``training_log.txt``.

    ``lines`` is the run's whole record so far (carried by every checkpoint as ``meta["log"]``). A line
    can be ``stage``d (recorded, so the next checkpoint holds it) and written by ``flush`` once that
    checkpoint is on disk: the file then never reports an epoch no checkpoint holds.
    """

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.lines: list[str] = []
        self._unwritten: list[str] = []

    def adopt(self, lines) -> None:
        """Continue the record ``lines`` (a resumed checkpoint's); the file must already hold them."""
        self.lines = list(lines)

    def stage(self, message: str) -> None:
        if self.enabled:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}"
            self.lines.append(line)
            self._unwritten.append(line)

    def flush(self) -> None:
        while self._unwritten:
            line = self._unwritten[0]
            print(line, file=sys.stdout, flush=True)
            append_line(self.path, line + "\n")
            self._unwritten.pop(0)

    def __call__(self, message: str) -> None:
        self.stage(message)
        try:
            self.flush()
        except OSError as err:
            raise UserError(f"cannot write {self.path} ({err.strerror or err}); training stopped") from None


def _fmt(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def epoch_line(epoch: int, epochs: int, train_loss, val_loss, dice: list, ema, lr, seconds, is_best: bool) -> str:
    dice_text = "[" + ", ".join(_fmt(None if d != d else d) for d in dice) + "]"
    line = (f"epoch {epoch}/{epochs}  train_loss {_fmt(train_loss)}  val_loss {_fmt(val_loss)}  "
            f"pseudo_dice {dice_text}  ema {_fmt(ema)}  lr {lr:.6f}  time {seconds:.1f}s")
    return line + ("  (new best)" if is_best else "")
