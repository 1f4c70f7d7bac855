"""Training: the step loop, optimizers, schedules, checkpoints, data and distributed setup."""
