"""Learning-rate schedules as pure functions of (step, total_steps, spec).

The published recipe (REFERENCE.md section 3): no warmup, constant, then a linear cooldown to
a floor over the last 50% of steps ("WSD"). `step` is the 0-based index of the optimizer step
about to be taken; a schedule returns the multiplier of each parameter group's peak lr.

Rule (stated once, here): with S total steps, W = round(warmup_frac * S) warmup steps and
C = round(cooldown_frac * S) cooldown steps,
  - warmup,   s < W:        (s + 1) / W                      (never a zero-lr first step)
  - cooldown, s >= S - C:   floor + (1 - floor) * (S - s) / C (1 at the first cooldown step,
                            floor + (1 - floor) / C at the last, so no step is wasted at 0)
  - otherwise:              1  (wsd), a cosine to the floor (cosine), 1 (constant).
"""

from __future__ import annotations

import math
from typing import Callable

from parcae_scaling.model.run_spec import ScheduleSpec


def _phase_lengths(total_steps: int, spec: ScheduleSpec) -> tuple[int, int]:
    warmup = int(round(spec.warmup_frac * total_steps))
    cooldown = int(round(spec.cooldown_frac * total_steps)) if spec.name == "wsd" else 0
    return warmup, cooldown


def _wsd(step: int, total_steps: int, spec: ScheduleSpec) -> float:
    warmup, cooldown = _phase_lengths(total_steps, spec)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if cooldown > 0 and step >= total_steps - cooldown:
        return spec.floor_frac + (1.0 - spec.floor_frac) * (total_steps - step) / cooldown
    return 1.0


def _cosine(step: int, total_steps: int, spec: ScheduleSpec) -> float:
    warmup, _ = _phase_lengths(total_steps, spec)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = (step - warmup) / span
    return spec.floor_frac + (1.0 - spec.floor_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(step: int, total_steps: int, spec: ScheduleSpec) -> float:
    warmup, _ = _phase_lengths(total_steps, spec)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return 1.0


SCHEDULES: dict[str, Callable[[int, int, ScheduleSpec], float]] = {
    "wsd": _wsd,
    "cosine": _cosine,
    "constant": _constant,
}


def lr_multiplier_at_step(step: int, total_steps: int, spec: ScheduleSpec) -> float:
    """Multiplier of the peak learning rate at 0-based optimizer step `step`."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: a run needs at least one optimizer step")
    if not 0 <= step < total_steps:
        raise ValueError(f"step={step} is outside the run's steps 0..{total_steps - 1}")
    try:
        fn = SCHEDULES[spec.name]
    except KeyError:
        raise ValueError(f"unknown schedule {spec.name!r}: choose one of {sorted(SCHEDULES)}") from None
    return fn(step, total_steps, spec)


def lr_at_step(peak_lr: float, step: int, total_steps: int, spec: ScheduleSpec) -> float:
    """Learning rate at `step` for a group whose peak is `peak_lr`."""
    return peak_lr * lr_multiplier_at_step(step, total_steps, spec)
