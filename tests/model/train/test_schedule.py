"""Learning-rate schedule values at chosen steps, and spec validation."""

from __future__ import annotations

import pytest

from parcae_scaling.model.run_spec import ScheduleSpec
from parcae_scaling.model.train.schedule import lr_at_step, lr_multiplier_at_step


def test_published_wsd_default_no_warmup_half_cooldown_to_zero() -> None:
    spec = ScheduleSpec()  # wsd, warmup 0, cooldown 0.5, floor 0
    m = [lr_multiplier_at_step(s, 10, spec) for s in range(10)]
    assert m[:6] == [1.0] * 6  # constant through the first half; step 5 starts the cooldown at 1
    assert m[6:] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert lr_at_step(8e-3, 9, 10, spec) == pytest.approx(8e-3 * 0.2)


def test_wsd_warmup_and_floor() -> None:
    spec = ScheduleSpec(warmup_frac=0.2, cooldown_frac=0.4, floor_frac=0.1)
    m = [lr_multiplier_at_step(s, 10, spec) for s in range(10)]
    assert m[:2] == pytest.approx([0.5, 1.0])
    assert m[2:6] == [1.0] * 4
    assert m[6:] == pytest.approx([0.1 + 0.9 * k / 4 for k in (4, 3, 2, 1)])
    assert min(m) > 0.1  # the floor is approached, never a wasted zero-lr step


def test_cosine_and_constant() -> None:
    cos = ScheduleSpec(name="cosine", cooldown_frac=0.0)
    assert lr_multiplier_at_step(0, 100, cos) == pytest.approx(1.0)
    assert lr_multiplier_at_step(50, 100, cos) == pytest.approx(0.5)
    assert lr_multiplier_at_step(99, 100, cos) < 0.01
    const = ScheduleSpec(name="constant", warmup_frac=0.5, cooldown_frac=0.0)
    assert [lr_multiplier_at_step(s, 4, const) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_one_step_run_trains_at_full_lr() -> None:
    assert lr_multiplier_at_step(0, 1, ScheduleSpec()) == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="outside"):
        lr_multiplier_at_step(10, 10, ScheduleSpec())
    with pytest.raises(ValueError, match="at least one"):
        lr_multiplier_at_step(0, 0, ScheduleSpec())
    with pytest.raises(ValueError, match="ScheduleSpec.name"):
        ScheduleSpec(name="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ScheduleSpec.cooldown_frac"):
        ScheduleSpec(warmup_frac=0.6, cooldown_frac=0.6)
    with pytest.raises(ValueError, match="ScheduleSpec.floor_frac"):
        ScheduleSpec(floor_frac=1.5)
