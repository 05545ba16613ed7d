"""Training: device setup, train-step cells, schedules, checkpoints, the fold trainer."""
