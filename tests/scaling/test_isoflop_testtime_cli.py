"""isoFLOP recovery and warnings, test-time comparison, frontier/holdout, CLI end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from parcae_scaling.fit_cli import fit_app
from parcae_scaling.scaling.isoflop import IsoFlopResult, isoflop
from parcae_scaling.scaling.powerlaw import fit_power_law
from parcae_scaling.scaling.synthetic import synthetic_parcae_sweep, synthetic_test_time
from parcae_scaling.scaling.testtime import fit_test_time


def _parabola_sweep(gamma=0.4, k=2e-5, curvature=0.05, noise=0.0, mu=(1, 2, 4, 8, 16, 32), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in (1e12, 4e12, 16e12, 64e12):
        mu_star = k * c**gamma
        for m in mu:
            loss = 10 * c**-0.05 + curvature * np.log(m / mu_star) ** 2 + noise * rng.standard_normal()
            rows.append({"run_id": f"{c}-{m}", "budget_flops": c, "mu_rec": float(m), "tokens": c / (1e6 * (1 + m)),
                         "loss": loss})
    return pd.DataFrame(rows), k, gamma


def test_isoflop_recovers_optima_and_exponent():
    df, k, gamma = _parabola_sweep()
    r = isoflop(df, n_bootstrap=50)
    for o in r.optima:
        assert o.x_star == pytest.approx(k * o.budget_flops**gamma, rel=1e-6)
        assert o.in_range and o.positive_curvature
    assert r.power_laws["mu_rec"].gamma == pytest.approx(gamma, abs=1e-6)
    assert r.power_laws["loss"].gamma == pytest.approx(-0.05, abs=0.01)
    assert IsoFlopResult.from_json(r.to_json()).power_laws["mu_rec"].gamma == pytest.approx(gamma)


def test_isoflop_warns_out_of_range_and_negative_curvature():
    df, _, _ = _parabola_sweep(mu=(1, 1.5, 2, 3))  # optimum above the grid at large budgets
    r = isoflop(df, n_bootstrap=0)
    assert any(not o.in_range for o in r.optima)
    assert any("outside the sampled range" in w for w in r.warnings)
    strict = isoflop(df, n_bootstrap=0, exclude_out_of_range=True)
    assert len(strict.budgets_used) < len(r.budgets_used)
    df2, _, _ = _parabola_sweep(curvature=-0.05)
    r2 = isoflop(df2, n_bootstrap=0)
    assert not any(o.positive_curvature for o in r2.optima)
    assert any("has no minimum" in w for w in r2.warnings)


def test_isoflop_bad_input():
    df, _, _ = _parabola_sweep()
    with pytest.raises(ValueError, match="budget_flops"):
        isoflop(df.drop(columns="budget_flops"))
    with pytest.raises(ValueError, match="x='depth'"):
        isoflop(df, x="depth")
    with pytest.raises(ValueError, match="distinct x"):
        fit_power_law(np.array([1.0, 1.0]), np.array([2.0, 3.0]))


def test_test_time_prefers_exponential_and_extrapolates():
    r = fit_test_time(synthetic_test_time())
    assert min(r.mean_huber_by_form, key=r.mean_huber_by_form.get) == "tt_exp"
    assert r.heldout_by_form["tt_exp"] < r.heldout_by_form["tt_pure_power"]
    for c in r.curves:
        assert c.fits["tt_exp"].params["z"] == pytest.approx(3.0 / c.mu_rec, rel=0.1)
    with pytest.raises(ValueError, match="recurrence"):
        fit_test_time(synthetic_test_time().drop(columns="recurrence"))


def test_cli_report_writes_json_and_figures(tmp_path):
    sweep = tmp_path / "sweep.csv"
    synthetic_parcae_sweep(budgets_flops=(1e12, 2e12, 4e12), mu_values=(1, 2, 4, 8, 16)).to_csv(sweep, index=False)
    tt = tmp_path / "tt.csv"
    synthetic_test_time().to_csv(tt, index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(fit_app, ["report", str(sweep), "--out", str(out), "--bootstrap", "30",
                                       "--test-time-csv", str(tt)])
    assert res.exit_code == 0, res.output
    assert "held-out" not in res.output or "%" in res.output
    for name in ("isoflop_curves", "isoflop_optima", "frontier", "test_time", "residuals_parcae"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").exists()
    fit = json.loads((out / "fit_parcae.json").read_text())
    assert fit["holdout"]["mean_abs_pct_error"] < 2.0
    assert json.loads((out / "frontier.json").read_text())["points"]


def test_cli_bad_input_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PARCAE_STORE", raising=False)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"run_id": ["a"], "budget_flops": [1e12], "loss": [3.0]}).to_csv(bad, index=False)
    res = CliRunner().invoke(fit_app, ["isoflop", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "has no column(s) ['mu_rec', 'tokens', 'params']" in res.output
    res = CliRunner().invoke(fit_app, ["isoflop", "--out", str(tmp_path / "o")])  # no CSV, no store anywhere
    assert res.exit_code == 1 and "no store at parcae.sqlite" in res.output


def test_frontier_leaves_out_bootstrap_refits_beyond_float_range():
    import dataclasses

    from parcae_scaling.scaling.fit import fit_law
    from parcae_scaling.scaling.frontier import flops_per_token_from_runs, frontier
    from parcae_scaling.scaling.laws import get_law

    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12, 4e12), mu_values=(1, 2, 4, 8))
    law = get_law("parcae")
    fit = fit_law(law, df, n_bootstrap=8)
    names = list(fit.params)
    underflow = tuple(0.0 if n == "E" else fit.params[n] for n in names)  # log E refit to ~ -1000
    overflow = tuple(float("inf") if n == "A" else fit.params[n] for n in names)
    bad = dataclasses.replace(fit, bootstrap_params=fit.bootstrap_params + (underflow, overflow))
    reference = {c: float(df[c].iloc[0]) for c in law.columns if c not in ("mu_rec", "tokens")}
    fpt = flops_per_token_from_runs(df)
    budgets = np.array([1e12, 4e12])
    good, front = (frontier(f, law, fpt, budgets, reference=reference) for f in (fit, bad))
    assert (good.bootstrap_dropped, front.bootstrap_dropped) == (0, 2)
    assert [p.mu_star_interval for p in front.points] == [p.mu_star_interval for p in good.points]
