"""Polynomial learning-rate decay, set once per epoch as in nnU-Net."""


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
