"""The training-progress figure (like nnU-Net's progress.png): losses and pseudo-Dice, epoch time, LR."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from src.files import atomic_write  # noqa: E402

HISTORY_KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_time")


def empty_history() -> dict:
    return {key: [] for key in HISTORY_KEYS}


def plot_progress(history: dict, path) -> None:
    """Draw the history (one value per finished epoch for every key) into a PNG, written atomically."""
    epochs = list(range(1, len(history["train_loss"]) + 1))
    fig, (ax_loss, ax_time, ax_lr) = plt.subplots(3, 1, figsize=(10, 12), sharex=True)
    ax_loss.plot(epochs, history["train_loss"], color="tab:blue", label="train loss")
    ax_loss.plot(epochs, history["val_loss"], color="tab:red", label="val loss")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    dice = [float("nan") if d is None else d for d in history["pseudo_dice"]]
    ema = [float("nan") if d is None else d for d in history["ema_dice"]]
    ax_dice.plot(epochs, dice, color="tab:green", linestyle="dotted", label="pseudo Dice")
    ax_dice.plot(epochs, ema, color="tab:green", label="pseudo Dice (EMA)")
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    handles = ax_loss.get_legend_handles_labels()[0] + ax_dice.get_legend_handles_labels()[0]
    ax_loss.legend(handles=handles, loc="upper right")
    ax_time.plot(epochs, history["epoch_time"], color="tab:purple")
    ax_time.set_ylabel("epoch time (s)")
    ax_lr.plot(epochs, history["lr"], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_time, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=80))
    finally:
        plt.close(fig)
