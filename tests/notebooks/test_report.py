"""`parcae-fit report --store` writes one self-contained HTML with statuses, fits and every figure."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from parcae_scaling.cli import fit_app
from parcae_scaling.db import Store
from parcae_scaling.scaling.stability import SpikeRule, loss_spikes, run_health


def test_report_html_is_self_contained_and_complete(sweep_store, tmp_path):
    out = tmp_path / "fits"
    res = CliRunner().invoke(fit_app, ["report", "--store", sweep_store["url"], "--sweep", sweep_store["sweep"],
                                       "--out", str(out), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    pngs = sorted(out.rglob("*.png"))
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(imgs) == len(pngs) >= 6  # isoFLOP x2, residuals, frontier x2, test-time, stability
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r'(src|href)="(https?:|file:|//)', html), "the report must not load external resources"
    with Store.open(sweep_store["url"]) as store:
        runs = store.runs(sweep_store["sweep"])
    assert all(rid in html for rid in runs["run_id"])  # every run's status row
    for title in ("Plan: ", "Run status: ", "isoFLOP: ", "Parametric law: ", "Compute-optimal frontier",
                  "Test-time scaling: ", "Training stability"):
        assert title in html
    assert "95%" in html and "warnings (" in html


def test_ablation_report_flags_each_injection(sweep_store, tmp_path):
    out = tmp_path / "stab"
    res = CliRunner().invoke(fit_app, ["report", "--store", sweep_store["url"], "--sweep", ",".join(sweep_store["ablation"]),
                                       "--out", str(out), "--no-fits"])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    for inj in ("diagonal", "addition", "concatenation"):
        assert f"parcae-tiny-48[injection={inj}" in html
    verdicts = re.findall(r"class=\"text verdict-(\w+)\"", html)
    assert len(verdicts) == 3 and set(verdicts) <= {"stable", "marginal", "unstable", "spiked", "diverged"}
    assert "marginal" in verdicts or "spiked" in verdicts or "diverged" in verdicts  # addition: rho(A) = 1
    assert html.count("<img") == 1 and "isoFLOP" not in html


def test_report_unknown_sweep_is_a_clear_error(sweep_store, tmp_path):
    res = CliRunner().invoke(fit_app, ["report", "--store", sweep_store["url"], "--sweep", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "nope" in res.output and "recorded sweeps" in res.output


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
