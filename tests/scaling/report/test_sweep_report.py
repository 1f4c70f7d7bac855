"""`parcae-fit report --store` (scaling/report/sweep_report.py) writes one self-contained HTML with
statuses, fits and every figure; uses the session's small real sweep (`sweep_store`, tests/conftest.py)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from parcae_scaling.fit_cli import fit_app
from parcae_scaling.db import Store


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


def test_report_saves_its_parametric_fit_in_the_store(sweep_store, tmp_path):
    from parcae_scaling.scaling.report.sweep_report import build_report
    from parcae_scaling.scaling.results import FitResult

    with Store.open(sweep_store["url"]) as store:
        before = len(store.fits())
    report = build_report(sweep_store["url"], sweep_store["sweep"], tmp_path / "fits", n_bootstrap=5)
    with Store.open(sweep_store["url"]) as store:
        fits = store.fits()
        assert len(fits) == before + 1
        newest = int(fits["fit_id"].iloc[0])
        saved = FitResult.from_dict(store.load_fit(newest))
    parametric = next(s for s in report.sections if s.title.startswith("Parametric law: "))
    assert f"saved in the store as fit {newest}" in parametric.summary
    assert saved.law == "parcae" and set(saved.params) >= {"E", "A", "B"}


def test_ablation_report_flags_each_injection(sweep_store, tmp_path):
    out = tmp_path / "stab"
    sweeps = ",".join(sweep_store["ablation"])
    res = CliRunner().invoke(fit_app, ["report", "--store", sweep_store["url"], "--sweep", sweeps,
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
    res = CliRunner().invoke(fit_app, ["report", "--store", sweep_store["url"], "--sweep", "nope",
                                       "--out", str(tmp_path)])
    assert res.exit_code == 1 and "nope" in res.output and "recorded sweeps" in res.output
