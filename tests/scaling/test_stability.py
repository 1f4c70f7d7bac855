"""Stability analysis (scaling/stability.py): loss spikes against a running median, divergence and
per-run health."""

from __future__ import annotations

import numpy as np
import pandas as pd

from parcae_scaling.scaling.stability import SpikeRule, loss_spikes, run_health


def test_spikes_and_divergence_are_detected():
    loss = [5.0, 4.0, 3.5, 3.0, 2.9, 6.0, 2.8, float("nan")]
    ratio = loss_spikes(loss, SpikeRule(spike_ratio=1.5, window=10, warmup_points=3))
    assert abs(ratio[5] - 6.0 / 3.5) < 1e-12 and ratio[6] < 1  # 3.5: median of the five before
    runs = pd.DataFrame({"run_id": ["a", "b"], "status": ["failed", "succeeded"], "failure_kind": ["diverged", None],
                         "status_step": [8, 8]})
    hist = pd.concat([pd.DataFrame({"run_id": rid, "step": range(1, 9), "name": "loss", "value": values})
                      for rid, values in (("a", loss), ("b", [5, 4, 3.5, 3, 2.9, 2.8, 2.7, 2.6]))])
    health = run_health(runs, hist).set_index("run_id")
    assert health.loc["a", "diverged"] and health.loc["a", "diverged_step"] == 8 and health.loc["a", "n_spikes"] == 1
    assert not health.loc["b", "diverged"] and health.loc["b", "n_spikes"] == 0


def test_noisy_but_healthy_loss_is_not_a_spike():
    """Small-batch losses scatter +-15% around a falling trend: no spike; a 2x jump is one."""
    rng = np.random.default_rng(0)
    trend = np.linspace(3.0, 1.5, 200)
    noisy = trend * (1 + 0.15 * rng.uniform(-1, 1, size=200))
    assert np.nanmax(loss_spikes(noisy)) < SpikeRule().spike_ratio
    noisy[120] = 2 * trend[120]
    assert np.flatnonzero(np.nan_to_num(loss_spikes(noisy)) > SpikeRule().spike_ratio).tolist() == [120]
