"""Replicates (scaling/replicates.py) and the intervals built on their noise (scaling/isoflop.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from parcae_scaling.scaling.isoflop import isoflop
from parcae_scaling.scaling.replicates import (
    DEFAULT_ASSUMED_SD, baseline_differences, cells, noise_model,
)
from parcae_scaling.scaling.synthetic import synthetic_parcae_sweep

GRID = dict(budgets_flops=(1e12, 2e12, 4e12, 8e12), mu_values=(2, 4, 8, 16))


def test_cells_average_replicates_and_the_pooled_sd_recovers_the_noise() -> None:
    df = synthetic_parcae_sweep(**GRID, replicates=4, additive_sd=0.01, seed=3)
    table = cells(df)
    assert len(table) == 16 and set(table["n"]) == {4}
    first = df[(df["budget_flops"] == 1e12) & (df["mu_rec"] == 2)]["loss"]
    row = table.iloc[0]
    assert row["loss"] == pytest.approx(first.mean()) and row["se"] == pytest.approx(first.std() / 2)
    noise = noise_model(table)
    assert noise.measured and noise.dof == 16 * 3
    lo, hi = noise.floors[0].interval.low, noise.floors[0].interval.high
    assert 0.005 < noise.sd < 0.015 and lo < noise.sd < hi
    assert "pooled replicate SD, 48 dof" in noise.describe()


def test_without_replicates_the_noise_is_assumed_and_said_to_be() -> None:
    table = cells(synthetic_parcae_sweep(**GRID))
    assert not noise_model(table).measured and noise_model(table).sd == DEFAULT_ASSUMED_SD
    declared = noise_model(table, assumed_sd=0.004)
    assert declared.sd == 0.004 and "declared by the spec" in declared.describe()
    assert np.all(declared.draw_sd(np.random.default_rng(0), 5) == 0.004)
    with pytest.raises(ValueError, match="positive number of nats/token"):
        noise_model(table, assumed_sd=-1.0)
    res = isoflop(synthetic_parcae_sweep(**GRID), n_bootstrap=50)
    assert not res.noise_measured and any("noise unmeasured" in w and "add seeds" in w for w in res.warnings)


def test_a_measured_floor_widens_intervals_by_its_own_uncertainty() -> None:
    table = cells(synthetic_parcae_sweep(**GRID, replicates=2, additive_sd=0.01))
    few = noise_model(table[table["budget_flops"] == 1e12].head(1))  # 1 dof
    draws = few.draw_sd(np.random.default_rng(0), 4000)
    assert np.median(draws) > few.sd and np.quantile(draws, 0.9) > 3 * few.sd  # heavy right tail at 1 dof


def test_differences_from_a_baseline_carry_intervals_and_say_when_they_resolve() -> None:
    table = pd.DataFrame({"budget_flops": [1e12] * 3, "mu_rec": [1, 2, 4], "n": [3, 3, 3],
                          "loss": [2.00, 1.98, 2.0005], "sd": [0.002] * 3})
    noise = noise_model(table)
    d = baseline_differences(table, noise, baseline=table["mu_rec"] == 1, label="mu_rec=1")
    assert list(d["mu_rec"]) == [2, 4] and d["difference"].round(4).tolist() == [-0.02, 0.0005]
    assert d["resolved"].tolist() == [True, False] and (d["low"] < d["difference"]).all()


def test_exponents_need_three_budgets_and_report_the_probability_that_mu_grows() -> None:
    two = isoflop(synthetic_parcae_sweep(budgets_flops=(1e12, 4e12), mu_values=(2, 4, 8, 16), replicates=3,
                                         additive_sd=0.005), n_bootstrap=200)
    law = two.power_laws["mu_rec"]
    assert law.gamma_interval is None and "not measurable from 2 budgets" in two.exponent_text("mu_rec")
    assert 0.9 < two.growth_probability["mu_rec"] <= 1.0  # mu* grows from 1e12 to 4e12 in the true law
    assert any("not measurable from 2 budgets" in w for w in two.warnings)
    four = isoflop(synthetic_parcae_sweep(**GRID, replicates=3, additive_sd=0.005), n_bootstrap=200)
    ci = four.power_laws["mu_rec"].gamma_interval
    assert ci is not None and ci.low < four.power_laws["mu_rec"].gamma < ci.high
    assert "hierarchical parametric bootstrap" in ci.method and "P(grows with C)" in four.summary()


def test_second_estimators_fit_around_the_best_cell_or_a_cubic() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(2e12,), mu_values=(1, 2, 4, 8, 16, 32), noise=0.0)
    local = isoflop(df, n_bootstrap=0, estimator="local").optima[0]
    wide = isoflop(df, n_bootstrap=0, estimator="parabola").optima[0]
    cubic = isoflop(df, n_bootstrap=0, estimator="cubic").optima[0]
    assert local.n_points == 3 and wide.n_points == 6 and len(cubic.coefficients) == 4
    # the true optimum is 5.74: the cells around it place it better than the x32-wide parabola
    assert abs(local.x_star - 5.74) < abs(wide.x_star - 5.74)
    with pytest.raises(ValueError, match="estimator"):
        isoflop(df, estimator="spline")


def test_a_budget_whose_optimum_the_noise_hides_is_flagged_not_given_an_interval() -> None:
    rows = []
    for budget, curve in ((1e12, (2.10, 2.00, 2.10)), (2e12, (2.0, 1.999, 2.0))):  # clear; flat within noise
        for mu, loss in zip((2, 4, 8), curve):
            rows += [{"run_id": f"{budget:g}-{mu}-{s}", "budget_flops": budget, "mu_rec": mu, "tokens": 1e6,
                      "params": 1e5, "loss": loss + d} for s, d in enumerate((-0.03, 0.03))]
    res = isoflop(pd.DataFrame(rows), n_bootstrap=400)
    clear, flat = res.optima
    assert clear.identified and clear.x_star_interval is not None
    assert not flat.identified and flat.x_star_interval is None and flat.minimum_fraction < 0.9
    assert any("not identified at this noise" in w for w in res.warnings)


def test_two_sweeps_of_the_same_cells_are_compared_against_the_noise() -> None:
    from parcae_scaling.scaling.replicates import compare_cells

    a = synthetic_parcae_sweep(**GRID, replicates=3, additive_sd=0.01, seed=1)
    same = synthetic_parcae_sweep(**GRID, replicates=1, additive_sd=0.01, seed=2)
    shifted = same.assign(loss=same["loss"] + 0.1)
    table, noise = compare_cells(a, same)
    assert len(table) == 16 and noise.measured and table["resolved"].sum() <= 4  # ~5% false alarms expected
    moved, _ = compare_cells(a, shifted)
    assert moved["resolved"].all() and (moved["difference"] > 0.05).all()
    with pytest.raises(ValueError, match="share no cell"):
        compare_cells(a, synthetic_parcae_sweep(budgets_flops=(3e12,), mu_values=(2, 4, 8)))
