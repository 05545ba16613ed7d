"""Training: train-step cells, schedules, the run folder and its state, online validation, the fold trainer."""
