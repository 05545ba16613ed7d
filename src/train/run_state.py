"""What a training run reads before it starts and carries between epochs (no MindSpore here).

- the topology check between a checkpoint's plan and the data's;
- the run state that goes into every checkpoint: finished epochs, EMA bookkeeping, history, RNG state;
- the human-readable log (stdout and ``training_log.txt``).
"""
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.preprocessed import TOPOLOGY_KEYS
from src.errors import UserError
from src.train.curves import empty_history


def check_same_topology(plan: dict, checkpoint_plan: dict, path) -> None:
    for key in TOPOLOGY_KEYS:
        if plan.get(key) != checkpoint_plan.get(key):
            raise UserError(f"checkpoint {path} was trained with {key}={checkpoint_plan.get(key)}, "
                            f"but the preprocessed data plans {key}={plan.get(key)}")


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

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "ema": self.ema, "best_ema": self.best_ema, "best_epoch": self.best_epoch,
                "history": self.history}

    @classmethod
    def from_json(cls, data: dict) -> "RunState":
        history = empty_history()
        history.update({key: list(values) for key, values in data.get("history", {}).items()})
        return cls(epoch=int(data["epoch"]), ema=data.get("ema"), best_ema=data.get("best_ema"),
                   best_epoch=data.get("best_epoch"), history=history)

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


class TrainingLog:
    """Lines to stdout and, on the main rank, appended to ``training_log.txt`` (flushed at once)."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}"
        print(line, file=sys.stdout, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _fmt(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def epoch_line(epoch: int, epochs: int, train_loss, val_loss, dice: list, ema, lr, seconds, is_best: bool) -> str:
    dice_text = "[" + ", ".join(_fmt(None if d != d else d) for d in dice) + "]"
    line = (f"epoch {epoch}/{epochs}  train_loss {_fmt(train_loss)}  val_loss {_fmt(val_loss)}  "
            f"pseudo_dice {dice_text}  ema {_fmt(ema)}  lr {lr:.6f}  time {seconds:.1f}s")
    return line + ("  (new best)" if is_best else "")
