"""Figures that cannot mislead: each figure type drawn from synthetic data with known flags, and
its artists checked (markers, notes, axis limits, legend text), not only that a file appeared."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex
import numpy as np
import pandas as pd
import pytest

from parcae_scaling.scaling.effective_params import UnrolledParams
from parcae_scaling.scaling.fit import fit_law
from parcae_scaling.scaling.frontier import flops_per_token_from_runs, frontier
from parcae_scaling.scaling.isoflop import isoflop
from parcae_scaling.scaling.laws import get_law
from parcae_scaling.scaling.report.figures import (
    CLIPPED_LABEL, DIVERGED_LABEL, OPTIMUM_MARKERS, draw_frontier, draw_isoflop, draw_optima, isoflop_figure,
)
from parcae_scaling.scaling.report.figures import test_time_figure as write_test_time_figure
from parcae_scaling.scaling.synthetic import synthetic_parcae_sweep, synthetic_test_time
from parcae_scaling.scaling.testtime import fit_test_time


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def optimum_markers(ax) -> list[tuple[str, bool]]:
    """(marker, filled) of every single-point line (the optima)."""
    out = []
    for line in ax.get_lines():
        if len(line.get_xdata()) == 1 and line.get_marker() in {m for m, _ in OPTIMUM_MARKERS.values()}:
            out.append((line.get_marker(), to_hex(line.get_markerfacecolor()) != "#ffffff"))
    return out


def test_an_out_of_range_optimum_is_drawn_open_and_named_in_the_legend() -> None:
    # mu in {1, 2, 4, 8}: the optimum at 8e12 (true mu* ~ 10) lies above the grid, at 1e12 (4.2) inside
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 8e12), mu_values=(1, 2, 4, 8), replicates=2, additive_sd=0.002)
    res = isoflop(df, n_bootstrap=100)
    assert [o.in_range for o in res.optima] == [True, False]
    ax = draw_isoflop(res, df).axes[0]
    assert optimum_markers(ax) == [("*", True), ("*", False)]
    assert "outside the sampled range" in legend_texts(ax) and "optimum" in legend_texts(ax)
    errorbars = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(errorbars) == 2  # cell means +- SE, one set per budget


def test_one_seed_says_the_noise_is_unmeasured() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(2, 4, 8))
    ax = draw_isoflop(isoflop(df, n_bootstrap=50), df).axes[0]
    assert "noise unmeasured" in ax.get_title(loc="left")


def test_a_band_never_sets_the_axes() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(2, 4, 8), replicates=2, additive_sd=0.002)
    ax = draw_isoflop(isoflop(df, n_bootstrap=50), df).axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= df["loss"].min() and hi >= df["loss"].max() and hi - lo < 1.3 * np.ptp(df["loss"])


def test_a_power_law_through_two_budgets_is_not_drawn_and_the_figure_says_why() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(2, 4, 8, 16), replicates=2,
                                additive_sd=0.002)
    fig = draw_optima(isoflop(df, n_bootstrap=100))
    ax = fig.axes[0]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    notes = ax.get_title(loc="left")
    assert "not measurable from 2 budgets" in notes and "P(mu_rec* grows" in notes


def test_a_measured_power_law_is_drawn_with_its_interval() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12, 4e12, 8e12), mu_values=(2, 4, 8, 16, 32), replicates=2,
                                additive_sd=0.002)
    ax = draw_optima(isoflop(df, n_bootstrap=100)).axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and any("95% [" in t for t in legend_texts(ax))


def test_an_unidentified_fit_is_a_note_not_a_curve() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12,))  # 6 points, 5 parameters
    law = get_law("parcae", effective_params=UnrolledParams(non_core=2e5, core=1e5))
    from parcae_scaling.scaling.replicates import cells, noise_model

    fit = fit_law(law, df, n_bootstrap=20, noise=noise_model(cells(df)))
    assert fit.unidentified
    front = frontier(fit, law, flops_per_token_from_runs(df), np.geomspace(1e12, 4e12, 5),
                     reference={"non_core_params": 2e5, "core_params": 1e5})
    fig = draw_frontier(front, fit)
    assert all(not ax.get_lines() for ax in fig.axes)
    assert "not identified: 6 points for 5 parameters" in fig.axes[0].texts[0].get_text()
    identified = draw_frontier(front, dataclasses.replace(fit, unidentified=()))
    assert identified.axes[0].get_lines()  # the same result drawn when identified: the note is the flag


def test_test_time_curves_are_named_by_depth_and_budget(tmp_path) -> None:
    tt = synthetic_test_time()
    tt["budget_flops"] = 2e12
    res = fit_test_time(tt)
    write_test_time_figure(res, tmp_path)
    assert [c.budget_flops for c in res.curves] == [2e12] * 3
    from parcae_scaling.scaling.report.figures import _curve_label

    assert _curve_label(res.curves[0]) == r"$\mu_{rec}$ = 2, C = 2e+12"
    assert "mu" not in res.curves[0].run_id or _curve_label(res.curves[0]) != res.curves[0].run_id


def test_a_figure_file_is_written_at_one_paper_column(tmp_path) -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(2, 4, 8), replicates=2, additive_sd=0.002)
    paths = isoflop_figure(isoflop(df, n_bootstrap=20), df, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    from PIL import Image

    with Image.open(paths[0]) as im:  # 3.35 in at 200 dpi, tight bounding box
        assert 500 < im.width < 800


def test_the_test_breaks_when_a_flag_is_no_longer_drawn(monkeypatch) -> None:
    """Guard against a test that cannot fail: draw the out-of-range optimum as a plain result."""
    from parcae_scaling.scaling.report import figures

    df = synthetic_parcae_sweep(budgets_flops=(1e12, 8e12), mu_values=(1, 2, 4, 8), replicates=2, additive_sd=0.002)
    res = isoflop(df, n_bootstrap=50)
    monkeypatch.setattr(figures, "_optimum_kind", lambda opt: "optimum")
    ax = figures.draw_isoflop(res, df).axes[0]
    assert optimum_markers(ax) == [("*", True), ("*", True)]  # the flag is gone ...
    assert "outside the sampled range" not in legend_texts(ax)  # ... and the first test would now fail
    assert pd.Series([o.in_range for o in res.optima]).tolist() == [True, False]


def test_an_optimum_whose_interval_leaves_the_grid_is_flagged_and_the_axes_show_the_grid() -> None:
    rows = []
    for budget, curve in ((1e12, (1.80, 1.82, 1.88)), (2e12, (1.61, 1.615, 1.68))):  # minima at the grid's edge
        for mu, loss in zip((1, 2, 4), curve):
            rows += [{"run_id": f"{budget:g}-{mu}-{s}", "budget_flops": budget, "mu_rec": mu, "tokens": 1e6,
                      "params": 1e5, "loss": loss + d} for s, d in enumerate((-0.01, 0.01))]
    res = isoflop(pd.DataFrame(rows), n_bootstrap=400)
    assert all(not o.interval_in_range for o in res.optima if o.x_star_interval is not None)
    ax = draw_optima(res).axes[0]
    assert ("s", False) in optimum_markers(ax) and "interval leaves the sampled range" in legend_texts(ax)
    lo, hi = ax.get_ylim()
    assert lo > 0.5 and hi < 6  # the sampled range [1, 4] sets the axes, not the intervals reaching below it


def test_a_diverged_run_is_marked_at_its_cell_and_left_out_of_the_fit() -> None:
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(1, 2, 4, 8), replicates=2, additive_sd=0.002)
    lost = df.iloc[[0]].assign(loss=float("nan"), run_id="lost-run")  # a third seed of the first cell diverged
    with_lost = pd.concat([df, lost], ignore_index=True)
    res = isoflop(with_lost, n_bootstrap=50)
    assert res.optima[0].x_star == isoflop(df, n_bootstrap=50).optima[0].x_star  # fits leave it out
    ax = draw_isoflop(res, with_lost).axes[0]
    assert DIVERGED_LABEL in legend_texts(ax)
    marks = [c for c in ax.collections if c.get_label() == DIVERGED_LABEL]
    assert len(marks) == 1 and marks[0].get_offsets()[:, 0].tolist() == [df.iloc[0]["mu_rec"]]
    lo, hi = ax.get_ylim()
    assert lo <= df["loss"].min() and hi >= df["loss"].max()  # NaN does not break the data-fitted axes
    assert DIVERGED_LABEL not in legend_texts(draw_isoflop(isoflop(df, n_bootstrap=50), df).axes[0])


def test_an_interval_cut_by_the_axes_is_marked_at_the_edge() -> None:
    # one seed, large noise: the optima's intervals reach far below the sampled range
    df = synthetic_parcae_sweep(budgets_flops=(1e12, 2e12), mu_values=(1, 2, 4, 8), replicates=2, additive_sd=0.02,
                                seed=3)
    res = isoflop(df, n_bootstrap=200)
    ax = draw_optima(res).axes[0]
    lo, hi = ax.get_ylim()
    cut = [o for o in res.optima if o.x_star_interval and (o.x_star_interval.low < lo or o.x_star_interval.high > hi)]
    arrows = [line for line in ax.get_lines() if line.get_marker() in ("v", "^")]
    assert cut and len(arrows) == sum((o.x_star_interval.low < lo) + (o.x_star_interval.high > hi) for o in cut)
    assert CLIPPED_LABEL in legend_texts(ax)
