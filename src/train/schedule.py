"""Polynomial learning-rate decay, set once per epoch as in nnU-Net, and the epoch count a time budget allows.

``train_minutes`` turns the length of a run from epochs into minutes: the trainer measures its first
epoch and ``epochs_within_budget`` says how many epochs fit. The poly schedule then runs over that count
from epoch 0 on, which is exact because ``poly_lr(base, 0, total) == base`` for every total: the first
epoch trains with the same learning rate whatever the choice turns out to be, so a run that chose N epochs
is the same run as one configured with N epochs.
"""
import math
from dataclasses import asdict, dataclass


def poly_lr(base_lr: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """Learning rate for 0-based ``epoch``: ``base_lr * (1 - epoch / epochs) ** exponent``.

    Epochs at or past the end give 0 rather than a complex number from a negative base.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must not be negative, got {epoch}")
    remaining = max(0.0, 1.0 - epoch / epochs)
    return float(base_lr * remaining ** exponent)


def poly_schedule(base_lr: float, epochs: int, exponent: float = 0.9) -> list:
    """The learning rate of every epoch, for plots and logs."""
    return [poly_lr(base_lr, epoch, epochs, exponent) for epoch in range(epochs)]


@dataclass(frozen=True)
class BudgetChoice:
    """The epoch count chosen for a ``train_minutes`` budget, and what it was chosen from.

    Recorded in every checkpoint (``RunState.budget``) so that ``--resume`` keeps the count instead of
    measuring again on a machine that may be busier or quieter by then.
    """
    train_minutes: float
    epoch_seconds: float     # one epoch after compilation: training steps, validation batches
    spent_seconds: float     # the run's wall time when the choice was made (set-up and compilation included)
    finished_epochs: int     # epochs already trained at that moment
    cap: int                 # the configured ``epochs`` (or ``--epochs``): never more than this
    epochs: int              # the choice

    @property
    def budget_too_small(self) -> bool:
        """True when not even the epochs already trained (at least one) fit the budget."""
        return self.finished_epochs + self._epochs_after() < max(1, self.finished_epochs)

    def _epochs_after(self) -> int:
        return math.floor((self.train_minutes * 60.0 - self.spent_seconds) / self.epoch_seconds)

    def lines(self) -> list:
        """The log line of the choice, preceded by a warning when the budget holds less than one epoch."""
        line = (f"train_minutes {self.train_minutes:g}: epoch {self.epoch_seconds:.1f} s measured after "
                f"compilation ({self.spent_seconds:.0f} s spent by the end of epoch {self.finished_epochs}), "
                f"{self.epochs} of {self.cap} epochs fit; the poly LR schedule runs over {self.epochs}")
        if not self.budget_too_small:
            return [line]
        return [f"warning: train_minutes {self.train_minutes:g} is too small for this machine: "
                f"{self.spent_seconds:.0f} s went by before the end of epoch {self.finished_epochs} "
                f"and one more epoch takes {self.epoch_seconds:.1f} s; training stops after "
                f"{self.epochs} epoch(s)", line]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BudgetChoice":
        return cls(train_minutes=float(data["train_minutes"]), epoch_seconds=float(data["epoch_seconds"]),
                   spent_seconds=float(data["spent_seconds"]), finished_epochs=int(data["finished_epochs"]),
                   cap=int(data["cap"]), epochs=int(data["epochs"]))


def epochs_within_budget(train_minutes: float, epoch_seconds: float, cap: int, spent_seconds: float = 0.0,
                         finished_epochs: int = 0) -> BudgetChoice:
    """How many epochs a run of ``train_minutes`` holds, at most ``cap``.

    ``finished_epochs`` epochs are already trained after ``spent_seconds`` of the budget; each further
    epoch costs ``epoch_seconds``. The result never drops below the epochs already trained, nor below 1
    (``budget_too_small`` then says so), and never exceeds ``cap``.
    """
    if not train_minutes > 0:
        raise ValueError(f"train_minutes must be positive, got {train_minutes}")
    if not epoch_seconds > 0:
        raise ValueError(f"epoch_seconds must be positive, got {epoch_seconds}")
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if spent_seconds < 0 or finished_epochs < 0:
        raise ValueError("spent_seconds and finished_epochs must not be negative")
    further = math.floor((train_minutes * 60.0 - spent_seconds) / epoch_seconds)
    epochs = min(cap, max(1, finished_epochs, finished_epochs + further))
    return BudgetChoice(float(train_minutes), float(epoch_seconds), float(spent_seconds), int(finished_epochs),
                        int(cap), int(epochs))
